"""Session affinity across two replicas, over HTTP and gRPC at once: every step of a session is answered by the
replica that created it (the replica id comes back as the `x-drivetune-replica` header / trailing metadata), no step
meets an unknown session; then one replica is killed: only its sessions fail, with a clear status, both before and
after Serve replaces it (the survivor's sessions keep their replica: `services.routing.SlotHashRouter`)."""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import pytest
import torch

from drivetune.checkpoint import save_checkpoint
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene
from services.alpasim_replay import PB, ego_track, ego_update, logged, t_us

KEY_ENV, KEY = "DT_AFFINITY_KEY", "affinity-key-3c9e"
AUTH = (("authorization", f"Bearer {KEY}"),)
APP = "affinity"


@pytest.fixture(scope="module")
def two(ray_local, tmp_path_factory, womd_637):
    from ray import serve

    from services.launch import app_config, apply_config, free_port
    from services.serve_config import ServeConfig
    from services.grpc_front import start_grpc

    scene = load_scene(womd_637)
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro"), build_vocab([scene], sizes=(64, 16, 16))).eval()
    ckpt = save_checkpoint(tmp_path_factory.mktemp("aff") / "ck", model, {"step": 1})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(replicas=2, replica_cpus=0.25, max_sessions=32, api_key_env=KEY_ENV,
                      scenario_store=str(womd_637))
    actor = {"num_cpus": 0.25, "runtime_env": {"env_vars": {KEY_ENV: KEY}}}
    apply_config(app_config(cfg, str(ckpt), 1, name=APP, actor_options=actor))
    gport = free_port()
    front = start_grpc(serve.get_deployment_handle("SimAgents", APP), gport, api_key=KEY)
    channel = grpc.insecure_channel(f"127.0.0.1:{gport}")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    yield {"stub": PB.grpc.TrafficServiceStub(channel), "http": http, "scene": scene}
    http.close()
    channel.close()
    front.stop(grace=None)
    serve.shutdown()  # the next module starts Serve on its own port


class Driver:
    """Opens and steps sessions of both protocols; each call returns (ok, replica id, status, message)."""

    def __init__(self, two: dict) -> None:
        self.stub, self.http, self.scene = two["stub"], two["http"], two["scene"]
        self.t0 = t_us(self.scene, self.scene.current_time_index)
        self.times, self.ego = ego_track(self.scene)
        self.sdc = str(int(self.scene.sdc_id))

    def open(self, sid: str, proto: str) -> tuple:
        if proto == "http":
            r = self.http.post("/v1/sessions", json={"scenario_id": self.scene.scenario_id},
                               headers={"x-session-id": sid})
            if r.status_code == 201:
                r2 = self.http.post(f"/v1/sessions/{sid}/step", json={}, headers={"x-session-id": sid})
                assert r2.headers["x-drivetune-replica"] == r.headers["x-drivetune-replica"]
            return r.status_code == 201, r.headers.get("x-drivetune-replica"), r.status_code, r.text
        agents = [int(i) for i in np.flatnonzero(self.scene.sim_agent_mask())]
        req = PB.traffic.TrafficSessionRequest(session_uuid=sid, scene_id=self.scene.scenario_id, random_seed=1,
                                               logged_object_trajectories=logged(self.scene, agents),
                                               handover_time_us=self.t0)
        return self._grpc(self.stub.start_session, req)

    def step(self, sid: str, proto: str, k: int) -> tuple:
        """Interval k (k >= 1) of the session: the ego's poses of (t0 + 0.5 (k-1), t0 + 0.5 k]."""
        if proto == "http":
            seg = self.ego[5 * (k - 1): 5 * k]
            body = {"external_states": {self.sdc: {"x": seg[:, 0].tolist(), "y": seg[:, 1].tolist(),
                                                   "heading": seg[:, 3].tolist()}}}
            r = self.http.post(f"/v1/sessions/{sid}/step", json=body, headers={"x-session-id": sid})
            return r.status_code == 200, r.headers.get("x-drivetune-replica"), r.status_code, r.text
        lo, hi = self.t0 + 500_000 * (k - 1), self.t0 + 500_000 * k
        req = PB.traffic.TrafficRequest(session_uuid=sid, time_query_us=hi,
                                        object_trajectory_updates=[ego_update(self.times, self.ego, lo, hi)])
        return self._grpc(self.stub.simulate, req)

    @staticmethod
    def _grpc(method, req) -> tuple:
        try:
            _, call = method.with_call(req, metadata=AUTH)
            return True, dict(call.trailing_metadata())["x-drivetune-replica"], grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return False, dict(e.trailing_metadata() or ()).get("x-drivetune-replica"), e.code(), e.details()


def _wait_running(replicas: int, timeout_s: float = 120.0) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dep = serve.status().applications[APP].deployments["SimAgents"]
        if dep.replica_states.get("RUNNING", 0) == replicas and sum(dep.replica_states.values()) == replicas:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{APP}: not back to {replicas} running replicas")


@pytest.mark.slow
def test_sessions_stick_to_their_replica_and_a_killed_replica_fails_only_its_own(two):
    import ray

    d = Driver(two)
    held: dict[str, tuple[str, str]] = {}  # sid -> (protocol, replica)
    for n in range(32):  # open HTTP / gRPC pairs until both replicas hold sessions of both protocols (>= 8 in all)
        for proto in ("http", "grpc"):
            sid = f"aff-{proto}-{n:03d}"
            ok, replica, status, msg = d.open(sid, proto)
            assert ok, (sid, status, msg)
            held[sid] = (proto, replica)
        mix = {(p, r) for p, r in held.values()}
        if len(held) >= 8 and len({r for _, r in mix}) == 2 and len(mix) == 4:
            break
    replicas = sorted({r for _, r in held.values()})
    assert len(replicas) == 2 and len(held) >= 8
    order = sorted(held, key=lambda s: (s[-3:], s))  # interleaved: HTTP and gRPC sessions alternate
    for k in (1, 2, 3):
        for sid in order:
            ok, replica, status, msg = d.step(sid, held[sid][0], k)
            assert ok, (sid, k, status, msg)  # no "unknown session" answer
            assert replica == held[sid][1], (sid, k)  # served by the replica holding the session

    victim = replicas[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    lost = {s for s, (_, r) in held.items() if r == victim}
    assert lost and lost != set(held)

    def check(k: int) -> None:
        for sid in order:
            ok, replica, status, msg = d.step(sid, held[sid][0], k)
            if sid in lost:
                assert not ok, (sid, k)
                assert status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, 409, 500, 503), (sid, status)
                if status in (grpc.StatusCode.NOT_FOUND, 409):  # answered by another replica: names the loss
                    assert sid in msg and ("restart" in msg or "not held" in msg), msg
                if status == grpc.StatusCode.UNAVAILABLE:
                    assert "lost" in msg, msg
            else:
                assert ok, (sid, k, status, msg)
                assert replica == held[sid][1]

    check(4)  # right after the kill
    _wait_running(2)  # Serve replaced the replica
    check(5)
    check(6)
