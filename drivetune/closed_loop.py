"""Closed-loop group rollouts: S scenes × G rollouts, every sim agent rolled forward jointly for 16 tokens (8 s).

The map of each scene is encoded once and shared by its G rollouts; every step feeds one new token per agent to the
model's incremental decoder (`BehaviorModel.start` / `.step`), so each agent conditions on the others' *simulated*
states. Agents not valid at the current step are not simulated (they never appear in the future context). The SDC is
driven by the policy (`sdc="policy"`), replayed from the log (`"log"`) or driven by the caller (`"external"`, with
10 Hz poses). The random numbers of rollout r of scene s come from `rollout_seed(scenario id, r, base seed, policy
version)`, so a rollout does not depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from drivetune.model import BehaviorModel, agent_batch, map_batch
from drivetune.realism.batch import Rollouts
from drivetune.samplers import SamplerConfig, StepInputs, rollout_seed, rollout_uniforms, sample
from drivetune.scene import HEADING, NUM_FUTURE_STEPS, VX, VY, X, Y, Z, Scene
from drivetune.tokenizer import TOKEN_STEPS, TorchVocab, nearest_tokens, token_step_poses, tokenize_map, tokenize_scene
from drivetune.tokenizer.layout import CURRENT_BOUNDARY, NUM_BOUNDARIES, type_index
from drivetune.tokenizer.matching import boundary_poses

NUM_FUTURE_TOKENS = NUM_BOUNDARIES - 1 - CURRENT_BOUNDARY  # 16
SDC_MODES = ("policy", "log", "external")


@dataclass
class SceneRollouts:
    """G rollouts of one scene over its A sim agents (tracks valid at the current step, in track order)."""

    scenario_id: str
    object_ids: np.ndarray  # int64 [A]
    track_index: np.ndarray  # int64 [A] indices into the scene's tracks
    rollout_indices: np.ndarray  # int64 [G]
    seeds: np.ndarray  # int64 [G]
    tokens: np.ndarray  # int64 [G, A, 16]
    logp: np.ndarray  # float32 [G, A, 16]
    sampler_logp: np.ndarray  # float32 [G, A, 16]
    token_mask: np.ndarray  # bool [G, A, 16]: chosen by the policy
    boundary_poses: np.ndarray  # float32 [G, A, 17, 3]
    x: np.ndarray  # float32 [G, A, 80]
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    topk: np.ndarray | None = None  # int64 [G, A, 16, K]
    sft_target: np.ndarray | None = None  # int64 [G, A, 16]

    def realism_rollouts(self) -> Rollouts:
        """The trajectories as the realism metric's (and the submission's) rollout set."""
        return Rollouts(self.object_ids, self.x, self.y, self.z, self.heading)


def sim_agents(scene: Scene) -> np.ndarray:
    """Track indices of the scene's sim agents (valid at the current step), in track order."""
    return np.flatnonzero(scene.sim_agent_mask())


def _scene_tensors(scene: Scene, a_pad: int, sdc: str, sdc_track: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-sim-agent start state, warm-start history and log targets of one scene, padded to a_pad agents."""
    agents, cur = sim_agents(scene), scene.current_time_index
    A, st = len(agents), scene.states[agents]
    poses, avail = boundary_poses(scene)
    poses, avail = poses[agents], avail[agents]
    pose = np.stack([st[:, cur, X], st[:, cur, Y], st[:, cur, HEADING]], -1)
    # Pose one token earlier: the logged boundary if known, else constant velocity backwards.
    back = pose - np.stack([st[:, cur, VX], st[:, cur, VY], np.zeros(A)], -1) * (TOKEN_STEPS * 0.1)
    prev = np.where(avail[:, CURRENT_BOUNDARY - 1, None], poses[:, CURRENT_BOUNDARY - 1], back)

    def pad(x: np.ndarray, fill=0) -> np.ndarray:
        full = np.full((a_pad, *x.shape[1:]), fill, dtype=x.dtype)
        full[:A] = x
        return full

    out = {
        "sim": pad(np.ones(A, bool)),  # real (not padding) agents: every one is simulated
        "ctrl": pad(np.ones(A, bool)),  # agents whose tokens the policy chooses
        "type": pad(type_index(scene.track_types[agents])),
        "pose": pad(pose),
        "prev": pad(prev),
        "log": pad(poses[:, CURRENT_BOUNDARY + 1 :]),
        "log_valid": pad(avail[:, CURRENT_BOUNDARY + 1 :]),
        "ext": np.zeros((a_pad, NUM_FUTURE_STEPS, 3)),
        "ext_valid": np.zeros((a_pad, NUM_FUTURE_STEPS), bool),
        "ext_on": np.zeros(a_pad, bool),
    }
    if sdc != "policy" and scene.valid[scene.sdc_index, cur]:
        i = int(np.searchsorted(agents, scene.sdc_index))
        out["ctrl"][i], out["ext_on"][i] = False, True
        if sdc == "log":
            fut = slice(cur + 1, cur + 1 + NUM_FUTURE_STEPS)
            track, ok = np.stack([st[i, fut, X], st[i, fut, Y], st[i, fut, HEADING]], -1), scene.valid[agents[i], fut]
            last = pose[i]
            for t in range(NUM_FUTURE_STEPS):  # hold the last logged pose over gaps
                last = track[t] if ok[t] else last
                out["ext"][i, t] = last
            out["ext_valid"][i] = ok
        else:
            out["ext"][i], out["ext_valid"][i] = sdc_track, True
    return out


def simulate(
    model: BehaviorModel,
    vocab: TorchVocab,
    scenes: Sequence[Scene],
    group_size: int,
    sampler: SamplerConfig,
    *,
    base_seed: int = 0,
    policy_version: int = 0,
    rollout_offset: int = 0,
    sdc: str = "policy",
    sdc_poses: Sequence[np.ndarray] | None = None,
    return_topk: bool = False,
) -> list[SceneRollouts]:
    """Roll `group_size` closed-loop rollouts of every scene; one `SceneRollouts` per scene.

    Rollout indices are `rollout_offset + r`; `sdc_poses` (with sdc="external") holds one [80, 3] (x, y, heading)
    10 Hz SDC trajectory per scene.
    """
    sampler.validate()
    if sdc not in SDC_MODES:
        raise ValueError(f"sdc mode {sdc!r} unknown (choose from {', '.join(SDC_MODES)})")
    if sdc == "external":
        if sdc_poses is None or len(sdc_poses) != len(scenes):
            raise ValueError("sdc='external' needs sdc_poses: one [80, 3] array per scene")
        for s, p in zip(scenes, sdc_poses):
            if np.shape(p) != (NUM_FUTURE_STEPS, 3) or not np.isfinite(p).all():
                raise ValueError(f"scenario {s.scenario_id}: sdc_poses must be finite [80, 3], got {np.shape(p)}")
    if group_size < 1 or not scenes:
        raise ValueError(f"need at least one scene and group_size >= 1 (got {len(scenes)}, {group_size})")
    device = vocab.device
    G, S = group_size, len(scenes)
    picks = [sim_agents(s) for s in scenes]
    if any(len(p) == 0 for p in picks):
        raise ValueError(f"scenes without sim agents: {[s.scenario_id for s, p in zip(scenes, picks) if not len(p)]}")
    a_pad = max(len(p) for p in picks)
    per = [_scene_tensors(s, a_pad, sdc, None if sdc_poses is None else sdc_poses[i]) for i, s in enumerate(scenes)]
    rows = {k: torch.as_tensor(np.stack([p[k] for p in per]), device=device).repeat_interleave(G, 0) for k in per[0]}
    for k in ("pose", "prev", "log", "ext"):
        rows[k] = rows[k].to(vocab.poses.dtype)
    ridx = np.arange(rollout_offset, rollout_offset + G)
    seeds = np.array([[rollout_seed(s.scenario_id, r, base_seed, policy_version) for r in ridx] for s in scenes])
    uni = torch.zeros(S * G, NUM_FUTURE_TOKENS, a_pad, dtype=torch.float64)
    for b, seed in enumerate(seeds.reshape(-1)):
        A = len(picks[b // G])
        uni[b, :, :A] = rollout_uniforms(int(seed), NUM_FUTURE_TOKENS, A)
    uni = uni.to(device)

    was_training = model.training
    model.eval()
    try:
        out = _decode(model, vocab, scenes, picks, rows, uni, sampler, return_topk)
    finally:
        model.train(was_training)
    return [_scene_output(scenes[s], picks[s], out, s, G, ridx, seeds[s], rows) for s in range(S)]


@torch.no_grad()
def _decode(model, vocab, scenes, picks, rows, uni, sampler, return_topk) -> dict[str, torch.Tensor]:
    """Encode maps and histories once per scene, fan out to G rollouts per scene, run the closed loop."""
    device, G = vocab.device, rows["sim"].shape[0] // len(scenes)
    maps = map_batch([tokenize_map(s) for s in scenes]).to(device)
    agents = agent_batch([tokenize_scene(s, vocab) for s in scenes], picks).to(device)
    map_ctx = model.encode_map(maps)
    state, logits = model.start(map_ctx, agents.slice_time(0, CURRENT_BOUNDARY), num_rollouts=G)
    return _rollout_loop(model, vocab, state, logits, rows, uni, sampler, return_topk)


def _rollout_loop(model, vocab, state, logits, rows, uni, sampler, return_topk) -> dict[str, torch.Tensor]:
    B, A = rows["sim"].shape
    T, dev = NUM_FUTURE_TOKENS, vocab.device
    ctrl, sim, ext_on, types = rows["ctrl"], rows["sim"], rows["ext_on"], rows["type"]
    any_external = bool(ext_on.any())  # fixed for the whole rollout: one device sync, not one per step
    flat = ctrl.reshape(-1).nonzero().squeeze(-1)
    pose, prev = rows["pose"].clone(), rows["prev"].clone()
    tokens = torch.zeros(B, A, T, dtype=torch.long, device=dev)
    logp = torch.zeros(B, A, T, device=dev)
    slogp = torch.zeros(B, A, T, device=dev)
    bposes = torch.zeros(B, A, T + 1, 3, dtype=pose.dtype, device=dev)
    steps = torch.zeros(B, A, NUM_FUTURE_STEPS, 3, dtype=pose.dtype, device=dev)
    topk = sft = None
    if return_topk:
        topk = torch.zeros(B, A, T, min(sampler.k, logits.shape[-1]), dtype=torch.long, device=dev)
    if sampler.kind == "catk":
        sft = torch.full((B, A, T), -1, dtype=torch.long, device=dev)
    bposes[:, :, 0] = pose
    for t in range(T):
        pick = lambda x: x.reshape(B * A, *x.shape[2:])[flat]  # noqa: E731 (rows of controlled agents)
        inp = StepInputs(
            logits=pick(logits), uniforms=pick(uni[:, t]), pose=pick(pose),
            type_idx=pick(types), vocab=vocab, prev_pose=pick(prev),
            log_next=pick(rows["log"][:, :, t]), log_next_valid=pick(rows["log_valid"][:, :, t]),
        )
        res = sample(sampler, inp)
        tok = torch.zeros(B * A, dtype=torch.long, device=dev)
        tok[flat] = res.token
        tok = tok.reshape(B, A)
        sub = token_step_poses(vocab, types, pose, tok)  # [B, A, 5, 3]
        new_pose = sub[:, :, -1]
        valid = sim.clone()
        if any_external:  # log-replayed or caller-driven SDC: its poses are given, its token is the nearest
            given = rows["ext"][:, :, t * TOKEN_STEPS : (t + 1) * TOKEN_STEPS]
            ext_tok = nearest_tokens(vocab, types, pose, given[:, :, -1], k=1)[0][..., 0]
            tok = torch.where(ext_on, ext_tok, tok)
            sub = torch.where(ext_on[:, :, None, None], given, sub)
            new_pose = torch.where(ext_on[:, :, None], given[:, :, -1], new_pose)
            valid = torch.where(ext_on, rows["ext_valid"][:, :, (t + 1) * TOKEN_STEPS - 1], valid)
        tokens[:, :, t] = tok
        for dst, src in ((logp, res.logp), (slogp, res.sampler_logp), (topk, res.topk), (sft, res.sft_target)):
            if dst is not None:
                full = dst[:, :, t].reshape(B * A, *dst.shape[3:]).clone()
                full[flat] = src.to(dst.dtype)
                dst[:, :, t] = full.reshape(B, A, *dst.shape[3:])
        steps[:, :, t * TOKEN_STEPS : (t + 1) * TOKEN_STEPS] = sub
        bposes[:, :, t + 1] = new_pose
        prev, pose = pose, torch.where(sim[:, :, None], new_pose, pose)
        if t + 1 < T:
            logits = model.step(state, tok, new_pose.to(torch.float32), valid)
    return {"tokens": tokens, "logp": logp, "slogp": slogp, "bposes": bposes, "steps": steps, "topk": topk,
            "sft": sft}


def _scene_output(scene: Scene, agents: np.ndarray, out: dict, s: int, G: int, ridx: np.ndarray, seeds: np.ndarray,
                  rows: dict) -> SceneRollouts:
    sl, A = slice(s * G, (s + 1) * G), len(agents)

    def take(x: torch.Tensor | None, dtype) -> np.ndarray | None:
        return None if x is None else x[sl][:, :A].cpu().numpy().astype(dtype)

    steps = take(out["steps"], np.float32)
    ctrl = rows["ctrl"][sl][:, :A].cpu().numpy()
    z = np.broadcast_to(scene.states[agents, scene.current_time_index, Z].astype(np.float32)[None, :, None],
                        steps.shape[:3]).copy()
    return SceneRollouts(
        scenario_id=scene.scenario_id, object_ids=scene.track_ids[agents].astype(np.int64), track_index=agents,
        rollout_indices=ridx.astype(np.int64), seeds=seeds.astype(np.int64),
        tokens=take(out["tokens"], np.int64), logp=take(out["logp"], np.float32),
        sampler_logp=take(out["slogp"], np.float32),
        token_mask=np.repeat(ctrl[:, :, None], NUM_FUTURE_TOKENS, axis=2),
        boundary_poses=take(out["bposes"], np.float32), x=steps[..., 0].copy(), y=steps[..., 1].copy(), z=z,
        heading=steps[..., 2].copy(), topk=take(out["topk"], np.int64), sft_target=take(out["sft"], np.int64),
    )
