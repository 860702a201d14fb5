"""The closed-loop session engine: every closed-loop rollout (offline `simulate`, RL, evaluation, serving) runs here.

A `Session` is one scene rolled out R times (R rows) from its logged history: every sim agent (track valid at the
current step) is either policy-driven or *external* (its poses come from the caller, e.g. an AV stack or the log).
Each 0.5 s interval runs in two phases over any set of sessions at once:

- `act(sessions)`: sample the next token of every policy-driven agent (its 5 poses at 10 Hz are the proposal);
- `observe(sessions, external)`: the external agents' poses of that interval arrive, their tokens are the nearest
  vocabulary tokens, the interval is committed (`StepRecord`) and, with `forward=True`, one batched
  `BehaviorModel.step` computes the next logits.

Sessions of different scenes, agent counts and samplers step together in one batched forward: rows are padded to the
largest agent count and the encoded maps of all live scenes sit in one padded pool (`_MapPool`), so a batch only
gathers per-session caches. A set of sessions that stepped together last time reuses its batch as is (offline
`simulate` never copies caches). Random numbers of rollout row r come from its own generator seeded by
`samplers.rollout_seed`, so a rollout does not depend on the rest of its batch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from drivetune.model import BehaviorModel, DecodeState, MapContext, agent_batch, map_batch
from drivetune.model.batch import select_agents
from drivetune.model.map_grid import build_map_grid
from drivetune.samplers import SamplerConfig, StepInputs, sample
from drivetune.scene import VX, VY, X, Y, Z, Scene
from drivetune.tokenizer import TOKEN_STEPS, TorchVocab, nearest_tokens, token_step_poses, tokenize_map, tokenize_scene
from drivetune.tokenizer.layout import CURRENT_BOUNDARY, NUM_BOUNDARIES, type_index
from drivetune.tokenizer.matching import boundary_poses

NUM_FUTURE_TOKENS = NUM_BOUNDARIES - 1 - CURRENT_BOUNDARY  # 16 logged future intervals (8 s)
_UNIFORM_CHUNK = NUM_FUTURE_TOKENS  # random numbers are drawn 16 steps at a time (the same stream as rollout_uniforms)
_FILL = {"sft": -1}  # padding value of per-row tensors (default 0)


@dataclass
class SessionSpec:
    """What a session is started from: the scene, the object ids the caller drives, the sampler, one seed per row."""

    scene: Scene
    seeds: Sequence[int]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    external_ids: Sequence[int] = ()
    keep_topk: bool = False  # record each interval's top-K candidate ids


@dataclass
class StepRecord:
    """One committed interval of a session: tokens [R, A] (external agents: nearest token), behaviour `logp`,
    `sampler_logp` [R, A] (0 for external agents), `poses` [R, A, 5, 3] (10 Hz x, y, heading), `end_pose`
    [R, A, 3], `topk` [R, A, K] if kept, `sft_target` [R, A] for CAT-K."""

    tokens: torch.Tensor
    logp: torch.Tensor
    sampler_logp: torch.Tensor
    poses: torch.Tensor
    end_pose: torch.Tensor
    topk: torch.Tensor | None
    sft_target: torch.Tensor | None


class Session:
    """One scene × R rollout rows. Created by `Engine.start`; state lives in the engine's batches."""

    def __init__(self, spec: SessionSpec, agents: np.ndarray, external: np.ndarray, policy_version: int) -> None:
        scene = spec.scene
        self.scene, self.sampler, self.keep_topk = scene, spec.sampler, spec.keep_topk
        self.agents = agents  # track indices of the sim agents
        self.object_ids = scene.track_ids[agents].astype(np.int64)
        self.external = external  # bool [A]: driven by the caller
        self.z = scene.states[agents, scene.current_time_index, Z].astype(np.float32)
        self.seeds = np.asarray(spec.seeds, dtype=np.int64)
        self.policy_version = policy_version
        self.steps = 0  # committed intervals
        self.pending = False  # an interval was sampled (act) and awaits its external poses (observe)
        self.closed = False
        self._gens = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self._uni = torch.zeros(len(self.seeds), 0, len(agents), dtype=torch.float64)
        self._block: _Block | None = None
        self._offset = 0
        self._slot = -1
        self.start_pose = torch.zeros(len(agents), 3)  # [A, 3] logged current pose (set by Engine.start)

    @property
    def num_rows(self) -> int:
        return len(self.seeds)

    @property
    def num_agents(self) -> int:
        return len(self.agents)

    def uniforms(self, t: int) -> torch.Tensor:
        """[R, A] float64 uniforms of interval t (row r's own counter-based stream)."""
        while self._uni.shape[1] <= t:
            more = [torch.rand((_UNIFORM_CHUNK, self.num_agents), generator=g, dtype=torch.float64)
                    for g in self._gens]
            self._uni = torch.cat([self._uni, torch.stack(more)], dim=1)
        return self._uni[:, t]

    def rows(self) -> slice:
        return slice(self._offset, self._offset + self.num_rows)


@dataclass(eq=False)  # identity: batches live in a WeakSet
class _Block:
    """Sessions stepping together: one DecodeState and per-row tensors [B, A_pad, ...]."""

    sessions: list[Session]
    state: DecodeState
    data: dict[str, torch.Tensor]
    any_external: bool
    index: dict = field(default_factory=dict)  # host-built row indices (by sampler group / external), built once

    def host_index(self, key: object, sessions: Sequence["Session"], pick) -> torch.Tensor | None:
        """Flat indices into [B * A] of the entries `pick(session)` (bool [A]) marks, for `sessions` of this block;
        None when that is every entry. Built on the host from session facts, so stepping needs no device read."""
        if key not in self.index:
            b, a = self.data["sim"].shape
            on = np.zeros((b, a), bool)
            for s in sessions:
                on[s.rows(), :s.num_agents] = pick(s)
            flat = np.flatnonzero(on)
            self.index[key] = None if len(flat) == b * a else torch.as_tensor(flat, device=self.data["sim"].device)
        return self.index[key]


class _MapPool:
    """Encoded maps of all live scenes in one padded MapContext (slot = scene index); freed slots are reused. The
    map->agent neighbour grid is rebuilt over the pooled maps when scenes join (it is exact for any padding)."""

    def __init__(self, radius: float) -> None:
        self.radius = radius
        self.ctx: MapContext | None = None
        self.refs: list[int] = []

    def add(self, new: MapContext) -> list[int]:
        if self.ctx is None:
            self.ctx, self.refs = new, [1] * new.num_scenes
            return list(range(new.num_scenes))
        m = max(self.ctx.poses.shape[1], new.poses.shape[1])
        old_poses, old_valid, old_kv = _pad_maps(self.ctx, m)
        new_poses, new_valid, new_kv = _pad_maps(new, m)
        free = [i for i, r in enumerate(self.refs) if r == 0][: new.num_scenes]
        extra = new.num_scenes - len(free)
        slots = free + list(range(len(self.refs), len(self.refs) + extra))
        self.refs += [0] * extra
        poses = torch.cat([old_poses, old_poses.new_zeros(extra, m, 3)])
        valid = torch.cat([old_valid, old_valid.new_zeros(extra, m)])
        kv = [torch.cat([k, k.new_zeros(extra, m, k.shape[-1])]) for k in old_kv]
        idx = torch.as_tensor(slots, device=poses.device)
        poses[idx], valid[idx] = new_poses, new_valid
        for dst, src in zip(kv, new_kv):
            dst[idx] = src
        self.ctx = MapContext(poses=poses, valid=valid, kv=[k.flatten(0, 1) for k in kv],
                              grid=build_map_grid(poses[..., :2], valid, self.radius))
        for s in slots:
            self.refs[s] = 1
        return slots

    def release(self, slot: int) -> None:
        self.refs[slot] -= 1


def _pad_maps(ctx: MapContext, m: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A map context's poses [S, m, 3], valid [S, m] and per-layer keys/values [S, m, 2H], padded to m tokens."""
    s, m0 = ctx.valid.shape
    pad = m - m0
    kv = [torch.cat([k.view(s, m0, -1), k.new_zeros(s, pad, k.shape[-1])], 1) for k in ctx.kv]
    return (torch.cat([ctx.poses, ctx.poses.new_zeros(s, pad, 3)], 1),
            torch.cat([ctx.valid, ctx.valid.new_zeros(s, pad)], 1), kv)


def _pad(x: torch.Tensor, a_pad: int, dim: int, fill=0) -> torch.Tensor:
    if x.shape[dim] == a_pad:
        return x
    shape = list(x.shape)
    shape[dim] = a_pad - x.shape[dim]
    return torch.cat([x, x.new_full(shape, fill)], dim)


def _session_rows(scene: Scene, agents: np.ndarray, external: np.ndarray, dtype: torch.dtype) -> dict:
    """Per-agent start state of one session (one row): start pose (logged position, heading cleaned of sensor flips
    as in tokenization), the pose 0.5 s earlier, log targets."""
    cur, A, st = scene.current_time_index, len(agents), scene.states[agents]
    poses, avail = boundary_poses(scene)
    poses, avail = poses[agents], avail[agents]
    pose = np.stack([st[:, cur, X], st[:, cur, Y], poses[:, CURRENT_BOUNDARY, 2]], -1)
    # Pose one token earlier: the logged boundary if known, else constant velocity backwards.
    back = pose - np.stack([st[:, cur, VX], st[:, cur, VY], np.zeros(A)], -1) * (TOKEN_STEPS * 0.1)
    prev = np.where(avail[:, CURRENT_BOUNDARY - 1, None], poses[:, CURRENT_BOUNDARY - 1], back)
    f = lambda x: torch.as_tensor(x).to(dtype)  # noqa: E731
    return {
        "sim": torch.ones(A, dtype=torch.bool),  # real (not padding) agents: every one is simulated
        "ctrl": torch.as_tensor(~external),  # agents whose tokens the policy chooses
        "ext_on": torch.as_tensor(external),
        "type": torch.as_tensor(type_index(scene.track_types[agents])),
        "pose": f(pose), "prev": f(prev),
        "log": f(poses[:, CURRENT_BOUNDARY + 1:]), "log_valid": torch.as_tensor(avail[:, CURRENT_BOUNDARY + 1:]),
    }


class Engine:
    """Closed-loop sessions of one model (one policy version) on one device."""

    def __init__(self, model: BehaviorModel, vocab: TorchVocab, policy_version: int = 0) -> None:
        self.model, self.vocab, self.policy_version = model, vocab, policy_version
        self._maps = _MapPool(model.cfg.map_radius)
        self._blocks: weakref.WeakSet[_Block] = weakref.WeakSet()  # live batches (they share the pooled maps)

    # ----------------------------------------------------------------------------------------------- start
    @torch.no_grad()
    def start(self, specs: Sequence[SessionSpec]) -> list[Session]:
        """Start sessions (maps encoded and histories decoded in one batch); their next call is `act`."""
        sessions = []
        for spec in specs:
            spec.sampler.validate()
            agents = select_agents(spec.scene)
            if len(agents) == 0:
                raise ValueError(f"scenario {spec.scene.scenario_id} has no sim agents")
            if len(spec.seeds) < 1:
                raise ValueError("a session needs at least one rollout row (one seed)")
            ids = spec.scene.track_ids[agents]
            unknown = sorted(set(int(i) for i in spec.external_ids) - set(ids.tolist()))
            if unknown:
                raise ValueError(f"external ids {unknown} are not sim agents of scenario {spec.scene.scenario_id}")
            external = np.isin(ids, np.asarray(spec.external_ids, dtype=np.int64))
            sessions.append(Session(spec, agents, external, self.policy_version))
        dev, dtype = self.vocab.device, self.vocab.poses.dtype
        scenes = [s.scene for s in sessions]
        maps = map_batch([tokenize_map(s) for s in scenes]).to(dev)
        history = agent_batch([tokenize_scene(s, self.vocab) for s in scenes], [s.agents for s in sessions]).to(dev)
        ctx = self.model.encode_map(maps)
        state, logits = self.model.start(ctx, history.slice_time(0, CURRENT_BOUNDARY))
        fan = torch.arange(len(sessions), device=dev).repeat_interleave(
            torch.as_tensor([s.num_rows for s in sessions], device=dev))
        state, logits = state.select(fan), logits[fan]
        slots = self._maps.add(ctx)
        for old in self._blocks:  # the grown pool holds every slot: drop references to older pool tensors
            old.state.map_ctx = self._maps.ctx
        state.map_ctx, state.scene_index = self._maps.ctx, torch.as_tensor(slots, device=dev)[fan]
        a_pad = history.tokens.shape[1]
        per = [_session_rows(s.scene, s.agents, s.external, dtype) for s in sessions]
        data = {k: torch.cat([_pad(p[k], a_pad, 0)[None].expand(s.num_rows, *_pad(p[k], a_pad, 0).shape)
                              for p, s in zip(per, sessions)]).to(dev) for k in per[0]}
        data["logits"] = logits
        offset = 0
        for s, slot, p in zip(sessions, slots, per):
            s._slot, s._offset, s.start_pose = slot, offset, p["pose"].to(dev)
            offset += s.num_rows
        block = _Block(sessions, state, data, any(bool(s.external.any()) for s in sessions))
        self._blocks.add(block)
        for s in sessions:
            s._block = block
        return sessions

    def maps_held(self) -> int:
        """Scene maps held for open sessions (each session holds one until it is closed)."""
        return sum(r > 0 for r in self._maps.refs)

    def close(self, session: Session) -> None:
        """Forget a session (its map slot is reused by later sessions)."""
        if not session.closed:
            session.closed = True
            self._maps.release(session._slot)
            session._block = None

    # ------------------------------------------------------------------------------------------- batching
    def _gather(self, sessions: Sequence[Session]) -> _Block:
        """The batch of these sessions, in this order: reused if they stepped together last, else assembled."""
        if not sessions:
            raise ValueError("no sessions to step")
        if any(s.closed for s in sessions):
            raise ValueError("a closed session cannot step")
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session appears twice in one step")
        first = sessions[0]._block
        if first is not None and first.sessions == list(sessions) and all(s._block is first for s in sessions):
            return first
        a_pad = max(s.num_agents for s in sessions)
        steps = max(s._block.state.num_steps for s in sessions)
        kv, poses, valid, types, sizes, scene_index, data = [], [], [], [], [], [], {}
        for s in sessions:
            st, rows, A = s._block.state, s.rows(), s.num_agents
            # Ring caches: token i sits in slot i % W. Sessions that stepped fewer times are rotated so that every
            # entry keeps its age under the merged step count.
            shift = (steps - st.num_steps) % st.valid.shape[2]
            kv.append(_pad(st.kv[:, rows, :A].roll(shift, 3), a_pad, 2))
            poses.append(_pad(st.poses[rows, :A].roll(shift, 2), a_pad, 1))
            valid.append(_pad(st.valid[rows, :A].roll(shift, 2), a_pad, 1))
            types.append(_pad(st.type_idx[rows, :A], a_pad, 1))
            sizes.append(_pad(st.size[rows, :A], a_pad, 1))
            scene_index.append(st.scene_index[rows])
        keys = set().union(*(s._block.data for s in sessions))
        for k in keys:  # a key some batches lack (e.g. topk) is zero for their sessions; topk widths are padded
            like = next(s._block.data[k] for s in sessions if k in s._block.data)
            width = max(s._block.data[k].shape[2:] for s in sessions if k in s._block.data)
            for s in sessions:
                v = s._block.data.get(k)
                v = like.new_zeros(s._block.data["sim"].shape + tuple(width)) if v is None else v
                if k == "topk":
                    v = _pad(v, width[0], 2)
                data.setdefault(k, []).append(_pad(v[s.rows(), :s.num_agents], a_pad, 1, _FILL.get(k, 0)))
        state = DecodeState(map_ctx=self._maps.ctx, scene_index=torch.cat(scene_index), type_idx=torch.cat(types),
                            size=torch.cat(sizes), kv=torch.cat(kv, 1), poses=torch.cat(poses), valid=torch.cat(valid),
                            num_steps=steps)
        merged = {k: torch.cat(v) for k, v in data.items()}
        block = _Block(list(sessions), state, merged, any(bool(s.external.any()) for s in sessions))
        self._blocks.add(block)
        offset = 0
        for s in sessions:
            s._block, s._offset = block, offset
            offset += s.num_rows
        return block

    # ----------------------------------------------------------------------------------------------- act
    @torch.no_grad()
    def act(self, sessions: Sequence[Session]) -> list[torch.Tensor]:
        """Sample the next interval of every policy-driven agent; returns per session its proposed 10 Hz poses
        [R, A, 5, 3] (rows of external agents are placeholders until `observe`)."""
        if any(s.pending for s in sessions):
            raise ValueError("act called twice without observe")
        blk = self._gather(sessions)
        d, dev, vocab = blk.data, self.vocab.device, self.vocab
        B, A = d["sim"].shape
        uni = torch.zeros(B, A, dtype=torch.float64)
        for s in sessions:
            uni[s.rows(), :s.num_agents] = s.uniforms(s.steps)
        uni = _upload(uni, dev)
        t_row = _upload(torch.cat([torch.full((s.num_rows,), s.steps) for s in sessions]), dev)
        in_log = t_row < d["log"].shape[2]
        t_log = t_row.clamp(max=d["log"].shape[2] - 1)
        rows = torch.arange(B, device=dev)
        log_next = d["log"][rows, :, t_log]
        log_valid = d["log_valid"][rows, :, t_log] & in_log[:, None]
        tok = torch.zeros(B * A, dtype=torch.long, device=dev)
        logp, slogp = torch.zeros(B * A, device=dev), torch.zeros(B * A, device=dev)
        keep_topk = any(s.keep_topk for s in sessions)
        k_max = max(min(s.sampler.k, d["logits"].shape[-1]) for s in sessions)
        topk = torch.zeros(B * A, k_max, dtype=torch.long, device=dev) if keep_topk else None
        sft = torch.full((B * A,), -1, dtype=torch.long, device=dev)
        for cfg, group in _by_sampler(sessions):
            flat = blk.host_index(("ctrl", tuple(id(s) for s in group)), group, lambda s: ~s.external)
            flat = slice(None) if flat is None else flat
            pick = lambda x: x.reshape(B * A, *x.shape[2:])[flat]  # noqa: E731 (rows of controlled agents)
            res = sample(cfg, StepInputs(
                logits=pick(d["logits"]), uniforms=pick(uni), pose=pick(d["pose"]), type_idx=pick(d["type"]),
                vocab=vocab, prev_pose=pick(d["prev"]), log_next=pick(log_next), log_next_valid=pick(log_valid)))
            tok[flat], logp[flat], slogp[flat] = res.token, res.logp.float(), res.sampler_logp.float()
            if topk is not None:
                topk[flat, :res.topk.shape[1]] = res.topk
            if res.sft_target is not None:
                sft[flat] = res.sft_target
        d["tok"], d["logp"], d["slogp"], d["sft"] = tok.view(B, A), logp.view(B, A), slogp.view(B, A), sft.view(B, A)
        if topk is not None:
            d["topk"] = topk.view(B, A, k_max)
        d["sub"] = token_step_poses(vocab, d["type"], d["pose"], d["tok"])  # [B, A, 5, 3]
        for s in sessions:
            s.pending = True
        return [d["sub"][s.rows(), :s.num_agents] for s in sessions]

    # ------------------------------------------------------------------------------------------- observe
    @torch.no_grad()
    def observe(self, sessions: Sequence[Session], external: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
                forward: bool = True) -> list[StepRecord]:
        """Commit the sampled interval with the external agents' poses: per session None (no external agent) or
        (poses [R, A, 5, 3] x/y/heading at 10 Hz, valid [R, A] at the interval's end); only external agents' entries
        are read. `forward` runs the model step that yields the next interval's logits."""
        if len(external) != len(sessions):
            raise ValueError(f"{len(sessions)} sessions but {len(external)} external inputs")
        if not all(s.pending for s in sessions):
            raise ValueError("observe needs a sampled interval (call act first)")
        blk = self._gather(sessions)
        d, dev = blk.data, self.vocab.device
        tok, sub, sim = d["tok"], d["sub"], d["sim"]
        B, A = sim.shape
        new_pose, valid = sub[:, :, -1], sim.clone()
        if blk.any_external:  # log-replayed or caller-driven agents: their poses are given, their token the nearest
            ext_on = d["ext_on"]
            given = torch.zeros_like(sub)
            ext_valid = torch.zeros_like(sim)
            for s, ext in zip(sessions, external):
                if ext is not None:
                    given[s.rows(), :s.num_agents] = _upload(torch.as_tensor(ext[0], dtype=sub.dtype), dev)
                    ext_valid[s.rows(), :s.num_agents] = _upload(torch.as_tensor(ext[1], dtype=torch.bool), dev)
                elif bool(s.external.any()):
                    raise ValueError(f"scenario {s.scene.scenario_id}: the external agents' poses are missing")
            on = blk.host_index("external", sessions, lambda s: s.external)  # only the external entries
            on = slice(None) if on is None else on
            flat = lambda x: x.reshape(-1, *x.shape[2:])[on]  # noqa: E731
            tok = tok.clone().view(-1)
            tok[on] = nearest_tokens(self.vocab, flat(d["type"]), flat(d["pose"]), flat(given[:, :, -1]), k=1)[0][:, 0]
            tok = tok.view(B, A)
            sub = torch.where(ext_on[:, :, None, None], given, sub)
            new_pose = torch.where(ext_on[:, :, None], given[:, :, -1], new_pose)
            valid = torch.where(ext_on, ext_valid, valid)
        records = []
        for s in sessions:
            r, A = s.rows(), s.num_agents
            k = min(s.sampler.k, d["logits"].shape[-1])
            records.append(StepRecord(
                tokens=tok[r, :A], logp=d["logp"][r, :A], sampler_logp=d["slogp"][r, :A], poses=sub[r, :A],
                end_pose=new_pose[r, :A], topk=d["topk"][r, :A, :k] if s.keep_topk else None,
                sft_target=d["sft"][r, :A] if s.sampler.kind == "catk" else None))
            s.steps, s.pending = s.steps + 1, False
        d["prev"], d["pose"] = d["pose"], torch.where(sim[:, :, None], new_pose, d["pose"])
        if forward:
            d["logits"] = self.model.step(blk.state, tok, new_pose.to(torch.float32), valid)
        return records

    def advance(self, sessions: Sequence[Session],
                external: Sequence[tuple[torch.Tensor, torch.Tensor] | None]) -> list[torch.Tensor]:
        """One serving step: commit the pending interval with the external poses, then sample the next one."""
        self.observe(sessions, external, forward=True)
        return self.act(sessions)


def _upload(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A host tensor on `dev`; to CUDA through pinned memory, asynchronously (the host never waits for the device)."""
    if dev.type != "cuda":
        return x.to(dev)
    return x.pin_memory().to(dev, non_blocking=True)


def _by_sampler(sessions: Sequence[Session]) -> list[tuple[SamplerConfig, list[Session]]]:
    groups: dict[tuple, tuple[SamplerConfig, list[Session]]] = {}
    for s in sessions:
        key = tuple(sorted(s.sampler.to_dict().items()))
        groups.setdefault(key, (s.sampler, []))[1].append(s)
    return list(groups.values())
