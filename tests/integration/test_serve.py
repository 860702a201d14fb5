"""The simulation service over real HTTP (serve.run on 127.0.0.1, a private port): a 16-step session that matches
simulate(sdc="external"), every bad input's 4xx, 16 concurrent sessions, a hot swap mid-run, the API key, the client
and the serve-demo example. One Serve application for the module (each start costs seconds)."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from drivetune.checkpoint import save_checkpoint
from drivetune.client import ServiceCallError, SimAgentsClient
from drivetune.closed_loop import simulate
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig
from drivetune.scene import HEADING, X, Y
from drivetune.tfrecord import read_records
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene

KEY_ENV, KEY = "DT_SERVE_TEST_KEY", "test-key-5f1c"
SAMPLER = {"kind": "warmk", "k": 8, "temperature": 1.0, "warm_lambda": 2.0}


def _deploy(checkpoint: Path, version: int) -> None:
    """(Re)deploy the service from its Serve config; a new {checkpoint, version} only reconfigures the replica."""
    from services.launch import app_config, apply_config
    from services.serve_config import ServeConfig

    cfg = ServeConfig(replica_cpus=0.5, max_sessions=18, max_body_bytes=4 * 1024 * 1024, api_key_env=KEY_ENV)
    actor = {"num_cpus": 0.5, "runtime_env": {"env_vars": {KEY_ENV: KEY}}}  # the replica's secret
    apply_config(app_config(cfg, str(checkpoint), version, name="sim", actor_options=actor))


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory, womd_637, womd_ee5):
    from ray import serve

    from services.launch import free_port

    tmp = tmp_path_factory.mktemp("serve")
    scenes = [load_scene(womd_637), load_scene(womd_ee5)]
    vocab = build_vocab(scenes, sizes=(128, 32, 32))
    models = []
    for seed in (0, 1):  # two random-weight micro models: the checkpoint and its hot-swap replacement
        torch.manual_seed(seed)
        models.append(BehaviorModel(ModelConfig.named("micro"), vocab).eval())
    ckpts = [save_checkpoint(tmp / f"ck{i}", m, {"step": i + 1}) for i, m in enumerate(models)]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _deploy(ckpts[0], 1)
    url = f"http://127.0.0.1:{port}"
    client = SimAgentsClient(url, api_key=KEY)
    yield {"url": url, "client": client, "scenes": scenes, "models": models, "ckpts": ckpts, "tv": vocab.to_torch(),
           "bytes": next(read_records(womd_637))[1]}
    client.close()
    serve.shutdown()


def logged_sdc(scene) -> np.ndarray:
    cur = scene.current_time_index
    st = scene.states[scene.sdc_index, cur + 1: cur + 81]
    return np.stack([st[:, X], st[:, Y], st[:, HEADING]], -1).astype(np.float64)


def _drive(session, scene, steps: int, offset: int = 0) -> list[dict]:
    """Step a session whose SDC is external with the logged SDC poses; returns the step bodies."""
    track, sdc = logged_sdc(scene), int(scene.sdc_id)
    out = []
    for k in range(offset, offset + steps):
        states = None
        if k > 0:
            seg = track[(k - 1) * 5: k * 5]
            states = {sdc: {"x": seg[:, 0], "y": seg[:, 1], "heading": seg[:, 2]}}
        out.append(session.step(states))
    return out


@pytest.mark.slow
def test_session_of_16_steps_matches_simulate(service):
    scene, client = service["scenes"][0], service["client"]
    session = client.create_session(scenario_bytes=service["bytes"], sampler=SAMPLER, seed=3)
    info = session.info
    assert info["external_ids"] == [int(scene.sdc_id)] and info["policy_version"] == 1
    assert info["step_seconds"] == 0.5 and info["steps_per_token"] == 5 and len(info["object_ids"]) == 50
    steps = _drive(session, scene, 16)
    assert [s["token_index"] for s in steps] == list(range(16))
    ref = simulate(service["models"][0], service["tv"], [scene], 1, SamplerConfig(**SAMPLER), base_seed=3,
                   policy_version=1, sdc="external", sdc_poses=[logged_sdc(scene)])[0]
    policy = ref.object_ids != scene.sdc_id
    assert steps[0]["object_ids"] == ref.object_ids[policy].tolist()
    for name in ("x", "y", "heading"):
        got = np.concatenate([np.asarray(s[name], np.float32) for s in steps], axis=1)  # [P, 80]
        assert np.array_equal(got, getattr(ref, name)[0, policy]), name
    assert session.get()["steps"] == 16
    session.close()
    with pytest.raises(ServiceCallError) as e:
        session.get()
    assert e.value.status == 404 and "closed" in e.value.detail


def _raw(service, method: str, path: str, sid: str | None = None, key: str | None = KEY, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if sid:
        headers["x-session-id"] = sid
    return httpx.request(method, service["url"] + path, headers=headers, timeout=60, **kw)


@pytest.mark.slow
def test_bad_inputs_get_their_4xx_and_the_server_keeps_serving(service):
    scene = service["scenes"][0]
    good = base64.b64encode(service["bytes"]).decode()
    create = lambda body, **kw: _raw(service, "POST", "/v1/sessions", **kw, json=body)  # noqa: E731
    cases = [
        (create({"scenario": "%%%"}), 422, "base64"),
        (create({"scenario": base64.b64encode(b"\x08\x96\x01junk").decode()}), 422, "Scenario"),
        (create({"scenario": good, "scenario_id": "x"}), 422, "exactly one"),
        (create({"scenario_id": "abc"}), 422, "scenario store"),
        (create({"scenario": good, "external_ids": [999999]}), 422, "999999"),
        (create({"scenario": good, "sampler": {"kind": "nucleus"}}), 422, "kind"),
        (create({"scenario": good, "sampler": {"k": 0}}), 422, "k"),
        (create({"scenario": good, "surprise": 1}), 422, "surprise"),
        (create({"scenario": good}, sid="bad id!"), 422, "x-session-id"),
        (create({"scenario": good}, key=None), 401, "API key"),
        (create({"scenario": good}, key="wrong"), 401, "API key"),
        (_raw(service, "POST", "/v1/sessions", content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
              headers={"content-type": "application/json"}), 413, "exceeds"),
        (_raw(service, "POST", "/v1/sessions/nosuchsession1/step", json={}), 404, "unknown session"),
        (_raw(service, "GET", "/v1/sessions/nosuchsession1"), 404, "unknown session"),
    ]
    sid = "badinputs-session"
    assert create({"scenario": good, "sampler": SAMPLER}, sid=sid).status_code == 201
    assert create({"scenario": good}, sid=sid).status_code == 409  # id in use
    step = lambda **kw: _raw(service, "POST", f"/v1/sessions/{sid}/step", sid=sid, **kw)  # noqa: E731
    assert step(json={}).status_code == 200  # first step: no external states needed
    sdc, other = str(scene.sdc_id), str(int(scene.track_ids[np.flatnonzero(scene.sim_agent_mask())[0]]))
    five = {"x": [1.0] * 5, "y": [2.0] * 5, "heading": [0.0] * 5}
    cases += [
        (step(content=json.dumps({"external_states": {sdc: {**five, "x": [float("nan")] * 5}}}),
              headers={"content-type": "application/json"}), 422, "finite"),
        (step(json={"external_states": {sdc: {**five, "x": [1.0] * 4}}}), 422, "poses"),
        (step(json={"external_states": {sdc: {**five, "x": [1.0] * 7}}}), 422, "at most 5"),
        (step(json={"external_states": {}}), 422, "missing the poses"),
        (step(json={"external_states": {sdc: five, "424242": five}}), 422, "424242"),
        (step(json={"external_states": {sdc: five, other: five}}), 422, "driven by the service"),
        (step(json={"external_states": {"abc": five}}), 422, "integer object ids"),
        (_raw(service, "POST", f"/v1/sessions/{sid}/step", sid="someoneelse1", json={}), 422, "differs"),
    ]
    for resp, status, words in cases:
        assert resp.status_code == status, (words, resp.status_code, resp.text)
        assert words in resp.text, (words, resp.text)
    assert _raw(service, "GET", "/healthz", key=None).json()["status"] == "ok"  # no key needed, still serving
    ok = step(json={"external_states": {sdc: five}})
    assert ok.status_code == 200 and ok.json()["token_index"] == 1
    assert _raw(service, "DELETE", f"/v1/sessions/{sid}", sid=sid).status_code == 204
    # The session cap: 429 with Retry-After once max_sessions (18) are open; the client gives up after its retries.
    client = SimAgentsClient(service["url"], api_key=KEY, retries=0)
    held = [client.create_session(scenario_bytes=service["bytes"]) for _ in range(18)]
    with pytest.raises(ServiceCallError) as e:
        client.create_session(scenario_bytes=service["bytes"])
    assert e.value.status == 429 and "max_sessions" in e.value.detail
    full = create({"scenario": good})
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    for s in held:
        s.close()


@pytest.mark.slow
def test_sixteen_concurrent_sessions_batch_without_errors(service):
    scene = service["scenes"][0]
    sessions = [service["client"].create_session(scenario_bytes=service["bytes"], seed=i) for i in range(16)]
    results, errors = {}, []

    def run(i: int) -> None:
        try:
            with SimAgentsClient(service["url"], api_key=KEY) as own:
                from drivetune.client import ClientSession

                results[i] = _drive(ClientSession(own, sessions[i].info), scene, 16)
        except Exception as e:  # noqa: BLE001 (collected and asserted below)
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 16
    assert all([s["token_index"] for s in r] == list(range(16)) for r in results.values())
    assert max(s["batch_size"] for r in results.values() for s in r) > 1  # steps of different sessions batched
    for s in sessions:
        s.close()


@pytest.mark.slow
def test_hot_swap_mid_run_and_rollouts(service):
    scene, client = service["scenes"][0], service["client"]
    old = client.create_session(scenario_bytes=service["bytes"], sampler=SAMPLER, seed=5)
    first = _drive(old, scene, 4)
    _deploy(service["ckpts"][1], 2)  # only the user_config changes: reconfigure in place
    for _ in range(240):
        if client.model()["policy_version"] == 2:
            break
        time.sleep(0.25)
    assert client.model()["policy_version"] == 2
    rest = _drive(old, scene, 12, offset=4)  # the open session lives on, on its own version
    assert all(s["policy_version"] == 1 for s in first + rest) and rest[-1]["token_index"] == 15
    new = client.create_session(scenario_bytes=service["bytes"], sampler=SAMPLER, seed=5)
    assert new.info["policy_version"] == 2
    out = client.rollouts(scenario_bytes=service["bytes"], num_rollouts=2, sampler=SAMPLER, seed=5, sdc="log")
    assert out["policy_version"] == 2 and np.asarray(out["x"]).shape == (2, 50, 80)
    ref = simulate(service["models"][1], service["tv"], [scene], 2, SamplerConfig(**SAMPLER), base_seed=5,
                   policy_version=2, sdc="log")[0]
    assert np.array_equal(np.asarray(out["x"], np.float32), ref.x)
    from drivetune.realism.submission import from_scenario_rollouts
    from waymo_open_dataset.protos import sim_agents_submission_pb2 as sub_pb2

    proto = sub_pb2.ScenarioRollouts.FromString(client.rollouts(scenario_bytes=service["bytes"], num_rollouts=2,
                                                                sampler=SAMPLER, seed=5, sdc="log", proto=True))
    assert np.array_equal(from_scenario_rollouts(proto).x, ref.x)
    old.close()
    new.close()


@pytest.mark.slow
def test_serve_demo_drives_the_sdc_and_scores(service, womd_637, tmp_path, monkeypatch, capsys):
    from drivetune.cli import main
    from drivetune.realism import Rollouts

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "demo"
    assert main(["serve-demo", "--url", service["url"], "--api-key-env", KEY_ENV, "--scenario", str(womd_637),
                 "--out", str(out), "--rollouts", "2"]) == 0
    scene = service["scenes"][0]
    ro = Rollouts.load(out / f"{scene.scenario_id}.npz")
    ro.validate(scene)
    sdc = int(np.flatnonzero(ro.object_id == scene.sdc_id)[0])
    assert np.allclose(ro.x[:, sdc], logged_sdc(scene)[None, :, 0], atol=1e-3)  # the caller drove the SDC
    report = json.loads((out / "realism.json").read_text())
    assert 0 < report["metametric"] < 1
    assert "metametric" in capsys.readouterr().out


REPO = Path(__file__).resolve().parents[2]


def test_serve_yaml_holds_the_app_args_with_the_code_defaults():
    from ray.serve.schema import ServeDeploySchema

    from drivetune.config import ConfigError, from_dict
    from services.app import build_app
    from services.launch import app_config
    from services.serve_config import ServeConfig

    args = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    settings = {k: v for k, v in args.items() if k not in ("checkpoint", "version")}
    assert asdict(from_dict(ServeConfig, settings)) == asdict(ServeConfig())  # documented = code defaults
    build_app(args)  # builds (nothing runs until deployed)
    ServeDeploySchema(**app_config(ServeConfig(), args["checkpoint"], args["version"]))  # what `drivetune serve` applies
    with pytest.raises(ConfigError, match="max_sesions"):
        build_app({**args, "max_sesions": 3})
    with pytest.raises(ValueError, match="max_sessions=0"):
        build_app({**args, "max_sessions": 0})


def test_store_ttl_session_cap_and_replica_miss(tmp_path, womd_637):
    """Without HTTP: sessions expire after the TTL (then 404), the cap answers 429 with a Retry-After within the
    TTL, and with several replicas an unknown session is a 409 (it lives on another replica)."""
    from services.serve_config import ServeConfig
    from services.store import ServiceError, SessionStore

    scene = load_scene(womd_637)
    vocab = build_vocab([scene], sizes=(64, 16, 16))
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", BehaviorModel(ModelConfig.named("micro"), vocab), {"step": 7})
    store = SessionStore(ServeConfig(max_sessions=2, session_ttl_s=10.0))
    assert store.set_policy(str(ck), None).version == 7  # default version: the checkpoint's step
    greedy = SamplerConfig(kind="greedy")
    for sid in ("session-a1", "session-b1"):
        assert store.create(scene, None, greedy, 0, sid)["policy_version"] == 7
    with pytest.raises(ServiceError) as e:
        store.create(scene, None, greedy, 0, "session-c1")
    assert e.value.status == 429 and 1 <= e.value.retry_after <= 10
    assert store.expire(now=time.monotonic() + 5) == 0
    assert store.expire(now=time.monotonic() + 11) == 2
    with pytest.raises(ServiceError) as e:
        store.get("session-a1")
    assert e.value.status == 404 and "expired" in e.value.message
    assert store.create(scene, None, greedy, 0, "session-c1")["steps"] == 0
    with pytest.raises(ServiceError) as e:
        SessionStore(ServeConfig(replicas=2)).get("session-zz")
    assert e.value.status == 409 and "x-session-id" in e.value.message
