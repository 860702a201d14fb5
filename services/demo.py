"""An example closed loop against the simulation service (the library of `drivetune serve-demo`): the caller plays the
AV simulator, drives the SDC by replaying its log and asks the service every 0.5 s where all other agents go, once per
rollout (each its own session, stepped in lockstep)."""

from __future__ import annotations

import numpy as np

from drivetune.client import SimAgentsClient
from drivetune.scene import HEADING, NUM_FUTURE_STEPS, X, Y, Z, Scene


def logged_sdc_track(scene: Scene) -> np.ndarray:
    """The SDC's logged future [80, 3] (x, y, heading), holding the last valid pose over gaps."""
    cur, i = scene.current_time_index, scene.sdc_index
    st, ok = scene.states[i], scene.valid[i]
    last, out = st[cur, [X, Y, HEADING]], np.zeros((NUM_FUTURE_STEPS, 3))
    for t in range(NUM_FUTURE_STEPS):
        last = st[cur + 1 + t, [X, Y, HEADING]] if ok[cur + 1 + t] else last
        out[t] = last
    return out


def closed_loop(client: SimAgentsClient, scene: Scene, payload: bytes, rollouts: int, sampler: dict,
                seed: int) -> "Rollouts":
    """Run `rollouts` sessions for 8 s with the SDC replayed from the log; the realism rollout set."""
    from drivetune.engine import NUM_FUTURE_TOKENS
    from drivetune.realism import Rollouts
    from drivetune.tokenizer import TOKEN_STEPS

    track, sdc = logged_sdc_track(scene), int(scene.sdc_id)
    sessions = [client.create_session(scenario_bytes=payload, sampler=sampler, seed=seed + r) for r in range(rollouts)]
    ids = np.asarray(sessions[0].info["object_ids"], np.int64)
    out = np.zeros((4, rollouts, len(ids), NUM_FUTURE_STEPS), np.float32)
    z_now = scene.states[scene.track_index(ids), scene.current_time_index, Z].astype(np.float32)
    out[2] = z_now[None, :, None]
    col = {int(o): a for a, o in enumerate(ids)}
    try:
        for k in range(NUM_FUTURE_TOKENS):
            seg = track[(k - 1) * TOKEN_STEPS: k * TOKEN_STEPS] if k else None
            states = None if seg is None else {sdc: {"x": seg[:, 0], "y": seg[:, 1], "heading": seg[:, 2]}}
            for r, session in enumerate(sessions):
                body = session.step(states)
                rows = [col[o] for o in body["object_ids"]]
                steps = slice(k * TOKEN_STEPS, (k + 1) * TOKEN_STEPS)
                for f, name in ((0, "x"), (1, "y"), (3, "heading")):
                    out[f, r, rows, steps] = np.asarray(body[name], np.float32)
    finally:
        for session in sessions:
            session.close()
    a = col[sdc]
    out[0, :, a], out[1, :, a], out[3, :, a] = track[:, 0], track[:, 1], track[:, 2]
    return Rollouts(ids, out[0], out[1], out[2], out[3])
