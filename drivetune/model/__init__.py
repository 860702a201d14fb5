"""SMART's tokenized behaviour model (definition v2, docs/model.md) with incremental (cached) decoding.

Layout follows `drivetune.tokenizer`: type index 0 veh / 1 ped / 2 cyc; token interval i moves boundary pose i -> i+1.
Model step i consumes token i and its *end* pose (boundary i+1) and predicts token i+1. History = intervals 0..1
(ends at the current step), so the first future token (interval 2) is predicted after history step 1.

**Inputs** (`drivetune.model.batch`; dataclasses of torch tensors, padded, with masks):
  - `MapBatch`: `pos` [S, M, 2], `heading` [S, M], `feat` [S, M, F] (segment shape in its own frame), `category`
    [S, M] long, `signal` [S, M] long, `valid` [S, M]. `map_batch([MapTokens, ...])` builds it.
  - `AgentBatch`: `tokens` [B, A, T] long, `poses` [B, A, T, 3] (end pose x, y, heading of each token), `valid`
    [B, A, T], `type_idx` [B, A] long, `size` [B, A, 3] (length, width, height). `agent_batch([AgentTokens, ...])`
    builds it (T = 18 intervals); `.slice_time(a, b)` takes steps a..b-1 (e.g. the history `[:, :, :2]`).
  - `collate(scenes, vocab)` tokenizes `Scene`s into `(MapBatch, AgentBatch, track indices)` of the agents
    `select_agents(scene)` picks (every sim agent: the agents the model simulates).

**Model** `BehaviorModel(cfg: ModelConfig, vocab: MotionVocab)` (`ModelConfig.named("micro"|"nano"|"tiny")`):
  - `model(map_batch, agents) -> logits [B, A, T, V]` full-context teacher forcing (training); logits[:, :, i]
    predicts `agents.tokens[:, :, i + 1]`. Padding ids >= the type's vocabulary size are -inf.
  - `model.encode_map(map_batch) -> MapContext`: run once per scene ([S] scenes); shared by all rollouts.
  - `model.start(map_ctx, history: AgentBatch [S, A, Th], num_rollouts=R) -> (DecodeState, logits [S*R, A, V])`:
    rows are scene-major (row b = s * R + r, `state.scene_index[b] == s`); logits predict the next token.
  - `model.step(state, tokens [B, A], poses [B, A, 3], valid [B, A]) -> logits [B, A, V]`: append one token per
    agent (its end pose, e.g. from `tokenizer.token_end_poses`) and get the next-token logits. Cost: one new token per
    agent; per-layer key/value caches (ring buffers over the temporal window `cfg.time_span`) live in `state`
    and are written in place (inference: use `forward` for gradients). No host synchronisation inside `step`.
  - `DecodeState`: `num_rows`, `num_steps` (tokens consumed), `type_idx` [B, A], `last_pose` [B, A, 3],
    `last_valid` [B, A], `scene_index` [B], `select(rows)` -> a new state with those rows (e.g. resampling).
  - `model.token_mask` [3, V] bool buffer (valid ids per type), `model.vocab` (the `MotionVocab` it was built with;
    `model.vocab.to_torch(device)` for `token_end_poses`), `model.vocab_hash` (str), `model.num_parameters()`.

Checkpoints: `drivetune.checkpoint` (`save_checkpoint`, `load_checkpoint`, `state_dict_to_numpy`,
`load_numpy_state_dict`).

Decoding full context and decoding step by step give the same logits (tests/test_model.py); all relative-pose
encodings (distance, direction, relative heading, and Δt in time) are computed in the query's frame, so logits are
invariant to a global rotation + translation of the scene.
"""

from drivetune.model.batch import AgentBatch, MapBatch, agent_batch, collate, map_batch
from drivetune.model.behavior import BehaviorModel, DecodeState, MapContext
from drivetune.model.model_config import MODEL_SIZES, ModelConfig

__all__ = [
    "MODEL_SIZES",
    "AgentBatch",
    "BehaviorModel",
    "DecodeState",
    "MapBatch",
    "MapContext",
    "ModelConfig",
    "agent_batch",
    "collate",
    "map_batch",
]
