"""Motion and map tokenizers (SMART-style). The token layout every consumer codes against:

**Agent types** (`TYPE_VEHICLE=0, TYPE_PEDESTRIAN=1, TYPE_CYCLIST=2`; `type_index(track_types)` maps WOMD
`AgentType`; UNSET/OTHER -> vehicle). `NUM_AGENT_TYPES = 3`.

**Time**: one token = `TOKEN_STEPS = 5` steps (0.5 s). Boundaries at steps 0, 5, ..., 90 (`NUM_BOUNDARIES = 19`);
token interval i spans steps 5i..5i+5 (`NUM_TOKENS = 18`). Intervals 0-1 are history (interval 1 ends at step 10 =
current = boundary `CURRENT_BOUNDARY = 2`); intervals 2..17 are the 16 future tokens (`FIRST_FUTURE_TOKEN = 2`).

**MotionVocab** (motion.py; one object holds all three types, padded to a common size `V = vocab.num_tokens`):
  - `poses` float32 [3, V, 6, 3]: per type/token the 6 local poses (x, y, heading) at steps 0..5 of the token, in the
    frame of its start pose (pose 0 is (0, 0, 0)). Token 0 of every type is "no motion" (all zeros).
  - `sizes` int [3]: real vocabulary size per type; `token_mask` bool [3, V] is False for padding ids >= sizes[t]
    (mask those logits to -inf). `boxes` float32 [3, 2] (length, width): veh 4.8x2.0, ped 1.0x1.0, cyc 2.0x1.0.
  - `hash` (sha256 hex of the arrays), `save(path)` / `MotionVocab.load(path)` (safetensors, no pickle),
    `to_torch(device) -> TorchVocab` (same tensors as torch + end-contour corners, for batched ops on any device).
  - `build_vocab(scenes, sizes=(2048, 1024, 1024), ...)` (kdisks.py) builds it: greedy k-disks per type over local
    6-pose segments (every window of 6 valid steps) plus jittered "corrective" copies (start pose offset, fading to
    the logged end pose), with the k-disks radius grown from `tolerances` (0.05 m) until 98 % of segments are covered.
    `MICRO_SIZES = (256, 128, 128)` suits the CPU demo model.

**AgentTokens** = `tokenize_scene(scene, vocab)`, all scene tracks in scene order (A = scene.num_tracks):
  - `token_ids` int64 [A, 18]; `token_valid` bool [A, 18] (both boundary poses known).
  - `poses` float64 [A, 19, 3]: *matched* boundary poses (x, y, heading) from rolling matching (each token is chosen
    from the previous matched pose; after an invalid gap the chain restarts at the logged pose). `pose_valid` [A, 19].
  - `logged_poses` float64 [A, 19, 3]: logged boundary poses (heading-flip cleaned, short gaps interpolated, one
    boundary extrapolated backwards for tracks starting mid-token). `type_idx` int64 [A].
  - Token i moves poses[:, i] -> poses[:, i+1] (when token_valid[:, i]). `matching.reconstruction_errors` compares.

**Batched torch helpers** (motion.py; `tv` = TorchVocab; any leading shape `...`, broadcastable):
  - `token_end_poses(tv, type_idx[...], start_pose[..., 3], token_ids[...]) -> [..., 3]` global pose after the token.
  - `token_step_poses(tv, type_idx, start_pose, token_ids) -> [..., 5, 3]` the 10 Hz poses at steps 1..5.
  - `nearest_tokens(tv, type_idx[...], start_pose[..., 3], target_pose[..., 3], k=1) -> (ids [..., k], dist [..., k])`:
    tokens whose end box (type's fixed shape) placed at start_pose is closest to the box at target_pose, by mean
    corner distance, ascending. Used for rolling matching, noise augmentation (sample among k) and CAT-K/SFT targets.

**MapTokens** = `tokenize_map(scene)` (map_tokens.py): polylines resampled every 0.5 m and cut into <= 5 m segments.
Fields: points [S, 11, 2] + point_mask, position (halfway point), z, heading (first -> last point), length,
feature_index, map_type, category (type + subtype, `NUM_MAP_CATEGORIES` = 20), signal_lane, signal_state (SignalState
at the current step, ABSENT = -1 where none; `NUM_SIGNAL_CLASSES` embedding ids = state + 1); `signal_state_at(step)`.
"""

from drivetune.tokenizer.layout import (
    CURRENT_BOUNDARY,
    FIRST_FUTURE_TOKEN,
    NUM_AGENT_TYPES,
    NUM_BOUNDARIES,
    NUM_TOKENS,
    TOKEN_STEPS,
    TYPE_CYCLIST,
    TYPE_PEDESTRIAN,
    TYPE_VEHICLE,
    type_index,
)
from drivetune.tokenizer.map_tokens import MapTokens, tokenize_map
from drivetune.tokenizer.matching import AgentTokens, tokenize_scene
from drivetune.tokenizer.kdisks import DEFAULT_SIZES, MICRO_SIZES, build_vocab
from drivetune.tokenizer.motion import (
    MotionVocab,
    TorchVocab,
    VocabError,
    nearest_tokens,
    token_end_poses,
    token_step_poses,
)

__all__ = [
    "CURRENT_BOUNDARY",
    "DEFAULT_SIZES",
    "MICRO_SIZES",
    "FIRST_FUTURE_TOKEN",
    "NUM_AGENT_TYPES",
    "NUM_BOUNDARIES",
    "NUM_TOKENS",
    "TOKEN_STEPS",
    "TYPE_CYCLIST",
    "TYPE_PEDESTRIAN",
    "TYPE_VEHICLE",
    "AgentTokens",
    "MapTokens",
    "MotionVocab",
    "TorchVocab",
    "VocabError",
    "build_vocab",
    "nearest_tokens",
    "tokenize_map",
    "tokenize_scene",
    "token_end_poses",
    "token_step_poses",
    "type_index",
]
