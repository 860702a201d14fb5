"""The defaults of a k-disks motion-vocabulary build (`drivetune.tokenizer.kdisks`), torch-free so that
`drivetune vocab build --help` shows them without loading the tokenizer."""

DEFAULT_SIZES = (2048, 1024, 1024)  # vehicle, pedestrian, cyclist
DEFAULT_TOLERANCES = (0.05, 0.05, 0.05)  # metres of mean corner distance per type
DEFAULT_MAX_SEGMENTS = 100_000  # per type, after dedup; half are jittered copies
DEFAULT_COVERAGE = 0.98  # share of segments the disks must cover; the k-disks radius grows until they do
