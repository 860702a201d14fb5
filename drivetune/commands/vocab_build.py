"""`drivetune vocab build SCENES... --out vocab.safetensors`: arguments only (torch is imported once they parse);
the work is `drivetune.tokenizer.vocab_build.build`."""

from __future__ import annotations

import argparse
import json
import logging

from drivetune.commands.common import add_scenes_argument
from drivetune.errors import InputError
from drivetune.vocab_defaults import DEFAULT_COVERAGE, DEFAULT_MAX_SEGMENTS, DEFAULT_SIZES, DEFAULT_TOLERANCES


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_scenes_argument(p)
    p.add_argument("--out", required=True, help="output vocabulary file (.safetensors)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="tokens per type: one value for all, or VEHICLE PEDESTRIAN CYCLIST")
    p.add_argument("--tolerances", type=float, nargs="+", default=list(DEFAULT_TOLERANCES),
                   help="k-disks radius in metres of mean corner distance: one value or three")
    p.add_argument("--max-scenes", type=int, default=None, help="use at most this many scenes to build (default: all)")
    p.add_argument("--max-segments", type=int, default=DEFAULT_MAX_SEGMENTS,
                   help="segments per type after dedup, half of them jittered copies")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE,
                   help="share of segments the disks must cover; radii grow from --tolerances until they do "
                        "(0 keeps --tolerances)")
    p.add_argument("--no-jitter", action="store_true", help="cluster logged segments only (no corrective copies)")
    p.add_argument("--eval-scenes", type=int, default=50,
                   help="scenes for the reconstruction report: the ones after the build scenes when --max-scenes "
                        "leaves some (held-out), else the first build scenes (in-sample); 0 skips")
    p.add_argument("--seed", type=int, default=0, help="seed of the segment subsampling and jitter")


def _three(values: list, name: str) -> tuple:
    if len(values) == 1:
        return tuple(values) * 3
    if len(values) != 3:
        raise InputError(f"--{name} takes 1 or 3 values (vehicle pedestrian cyclist), got {len(values)}")
    return tuple(values)


def run(args: argparse.Namespace) -> int:
    sizes, tols = _three(args.sizes, "sizes"), _three(args.tolerances, "tolerances")
    if not 0.0 <= args.coverage < 1.0:
        raise InputError(f"--coverage must be in [0, 1), got {args.coverage}")
    if args.max_scenes is not None and args.max_scenes < 1:
        raise InputError(f"--max-scenes must be >= 1, got {args.max_scenes}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from drivetune.tokenizer.vocab_build import build

    vocab = build(args, sizes, tols)  # unreadable sources, corrupt records, bad sizes: ValueError -> exit 2
    path = vocab.save(args.out)
    print(json.dumps({"out": str(path), "hash": vocab.hash, "sizes": vocab.sizes.tolist()}))
    return 0
