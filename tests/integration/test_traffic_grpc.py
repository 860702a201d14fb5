"""AlpaSim's TrafficService over real gRPC on 127.0.0.1, talking through stubs generated from ../shared/alpasim-protos
only: a 16-step session on the real WOMD scene is bit-identical to the HTTP session and to offline `simulate` (same
seed, log-replayed ego); off-grid query times interpolate; every bad input gets its status code and the server
keeps serving. One Serve application (one replica) and one gRPC front for the module."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from drivetune.checkpoint import save_checkpoint
from drivetune.closed_loop import simulate
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig
from drivetune.scene import Z
from drivetune.tfrecord import read_records
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene
from services.alpasim_replay import PB, decode, ego_track, ego_update, encoded, logged, t_us

KEY_ENV, KEY = "DT_GRPC_TEST_KEY", "grpc-key-81d2"
AUTH = (("authorization", f"Bearer {KEY}"),)
SEED = 3


@pytest.fixture(scope="module")
def svc(ray_local, tmp_path_factory, womd_637):
    from ray import serve

    from services.launch import app_config, apply_config, free_port
    from services.serve_config import ServeConfig
    from services.grpc_front import start_grpc

    tmp = tmp_path_factory.mktemp("grpc")
    scene = load_scene(womd_637)
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro"), build_vocab([scene], sizes=(128, 32, 32))).eval()
    ckpt = save_checkpoint(tmp / "ck", model, {"step": 1})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(replica_cpus=0.5, max_sessions=6, max_body_bytes=2 << 20, api_key_env=KEY_ENV,
                      scenario_store=str(womd_637))
    actor = {"num_cpus": 0.5, "runtime_env": {"env_vars": {KEY_ENV: KEY}}}
    apply_config(app_config(cfg, str(ckpt), 1, name="traffic", actor_options=actor))
    gport = free_port()
    front = start_grpc(serve.get_deployment_handle("SimAgents", "traffic"), gport, api_key=KEY, max_bytes=2 << 20)
    channel = grpc.insecure_channel(f"127.0.0.1:{gport}")
    yield {"stub": PB.grpc.TrafficServiceStub(channel), "scene": scene, "model": model, "url": f"http://127.0.0.1:{port}",
           "bytes": next(read_records(womd_637))[1]}
    channel.close()
    front.stop(grace=None)
    serve.shutdown()  # the next module starts Serve on its own port


def _order(scene) -> list[int]:
    """Every sim agent (the SDC included), in a shuffled order the answers must keep."""
    agents = np.flatnonzero(scene.sim_agent_mask())
    return [int(i) for i in np.random.default_rng(1).permutation(agents)]


def _start(svc, sid: str, **over):
    scene = svc["scene"]
    req = dict(session_uuid=sid, scene_id=scene.scenario_id, random_seed=SEED,
               logged_object_trajectories=logged(scene, _order(scene)),
               handover_time_us=t_us(scene, scene.current_time_index))
    req.update(over)
    return svc["stub"].start_session(PB.traffic.TrafficSessionRequest(**req), metadata=AUTH)


def _simulate(svc, sid: str, t: int, lo: int | None = None, **kw):
    times, poses = ego_track(svc["scene"])
    ups = [] if lo is None else [ego_update(times, poses, lo, t)]
    req = PB.traffic.TrafficRequest(session_uuid=sid, time_query_us=t, object_trajectory_updates=ups)
    return svc["stub"].simulate(req, metadata=kw.pop("metadata", AUTH), **kw)


@pytest.mark.slow
def test_sixteen_steps_match_http_and_offline_simulate_bit_for_bit(svc):
    from drivetune.client import SimAgentsClient

    scene, stub = svc["scene"], svc["stub"]
    assert list(stub.get_available_scenes(PB.common.Empty(), metadata=AUTH).scene_ids) == [scene.scenario_id]
    meta = stub.get_metadata(PB.common.Empty(), metadata=AUTH)
    assert meta.minimum_history_length_us == 1_000_000 and meta.version_id.version_id.endswith("1")
    t0 = t_us(scene, scene.current_time_index)
    _start(svc, "grpc-session-16")
    want = [("EGO" if i == scene.sdc_index else str(int(scene.track_ids[i]))) for i in _order(scene)]
    want.remove("EGO")
    got: dict[int, np.ndarray] = {}  # time -> [O, 5] pose fields
    queries = [t0 + 100_000] + [t0 + 500_000 * k for k in range(1, 17)]  # the first 0.1 s in, then every 0.5 s
    for lo, tq in zip([t0] + queries, queries):
        ids, times, vals = decode(_simulate(svc, "grpc-session-16", tq, lo=lo))
        assert ids == want  # request order, EGO left out
        ahead = 5 - (tq - t0) // 100_000 % 5  # the forecast reaches the end of the pending 0.5 s interval
        assert all(ts == [tq + 100_000 * j for j in range(ahead + 1)] for ts in times), (tq, times[0])
        for j, t in enumerate(times[0]):
            assert t not in got or np.array_equal(got[t], vals[:, j])  # a pose once answered never changes
            got[t] = vals[:, j]
    stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid="grpc-session-16"), metadata=AUTH)
    grpc_poses = np.stack([got[t0 + 100_000 * (s + 1)] for s in range(80)], 1)  # [O, 80, 5]

    # The same session over HTTP, the ego driven with the same (float32-exact) poses.
    _, ego = ego_track(scene)
    with SimAgentsClient(svc["url"], api_key=KEY) as client:
        http = client.create_session(scenario_bytes=svc["bytes"], seed=SEED)
        steps = [http.step(None if k == 0 else {int(scene.sdc_id): {
            "x": ego[5 * (k - 1): 5 * k, 0].tolist(), "y": ego[5 * (k - 1): 5 * k, 1].tolist(),
            "heading": ego[5 * (k - 1): 5 * k, 3].tolist()}}) for k in range(16)]
        http.close()
    pos = {str(i): n for n, i in enumerate(steps[0]["object_ids"])}
    rows = [pos[o] for o in want]
    cat = lambda name: np.concatenate([np.asarray(s[name], np.float32) for s in steps], 1)[rows]  # noqa: E731
    http_poses = encoded(cat("x"), cat("y"), cat("z"), cat("heading"))
    assert np.array_equal(grpc_poses, http_poses)

    ref = simulate(svc["model"], svc["model"].vocab.to_torch(), [scene], 1, Sampler_default(), base_seed=SEED,
                   policy_version=1, sdc="external", sdc_poses=[ego[:, [0, 1, 3]]])[0]
    idx = {str(int(i)): n for n, i in enumerate(ref.object_ids)}
    r = [idx[o] for o in want]
    z = np.repeat(np.float32(scene.states[[int(np.flatnonzero(scene.track_ids == int(o))[0]) for o in want],
                                          scene.current_time_index, Z])[:, None], 80, 1)
    assert np.array_equal(grpc_poses, encoded(ref.x[0, r], ref.y[0, r], z, ref.heading[0, r]))
    svc["poses16"] = grpc_poses


def Sampler_default() -> SamplerConfig:  # noqa: N802 (the HTTP service's default sampler)
    from services.schemas import Sampler

    return Sampler().config()


@pytest.mark.slow
def test_off_grid_queries_interpolate_and_grid_queries_match(svc):
    scene = svc["scene"]
    ref = svc.get("poses16")
    if ref is None:
        pytest.skip("needs the 16-step test's poses")
    t0 = t_us(scene, scene.current_time_index)
    _start(svc, "grpc-offgrid-1")
    last, answers = t0, {}
    for step in (1, 2, 2.5, 3, 4, 5, 6, 7.3, 10, 11):  # in 0.1 s: on and off the 10 Hz grid, across intervals
        tq = t0 + int(round(step * 100_000))
        _, times, vals = decode(_simulate(svc, "grpc-offgrid-1", tq, lo=last))
        answers[tq], last = vals[:, 0], tq
        assert times[0][0] == tq and all(t > tq for t in times[0][1:])
    for step in (1, 2, 3, 4, 5, 6, 10, 11):  # on the grid: exactly the 0.5 s session's poses
        assert np.array_equal(answers[t0 + step * 100_000], ref[:, step - 1])
    for step in (2.5, 7.3):  # off the grid: linear between the two 10 Hz poses around it
        lo, w = int(step), step - int(step)
        a, b = ref[:, lo - 1].astype(np.float64), ref[:, lo].astype(np.float64)
        np.testing.assert_allclose(answers[t0 + int(round(step * 100_000))][:, :3], a[:, :3] + w * (b - a)[:, :3],
                                   atol=1e-4)
    svc["stub"].close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid="grpc-offgrid-1"), metadata=AUTH)


def _code(call) -> tuple[grpc.StatusCode | None, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None, "no error"



@pytest.mark.slow
def test_bad_inputs_get_their_status_codes_and_the_server_keeps_serving(svc):
    scene, stub, S = svc["scene"], svc["stub"], grpc.StatusCode
    t0 = t_us(scene, scene.current_time_index)
    tracks = _order(scene)
    no_ego = [o for o in logged(scene, tracks) if o.object_id != "EGO"]
    nan = logged(scene, tracks)
    nan[0].trajectory.poses[0].pose.vec.x = float("nan")
    stranger = logged(scene, tracks)
    stranger[1].object_id = "999999"
    huge = logged(scene, tracks)
    huge[0].trajectory.poses.extend([huge[0].trajectory.poses[0]] * 80_000)  # > 2 MiB
    empty = PB.common.Empty()
    cases = [
        (lambda: stub.get_metadata(empty), S.UNAUTHENTICATED, "API key"),
        (lambda: stub.get_metadata(empty, metadata=(("authorization", "Bearer nope"),)), S.UNAUTHENTICATED, "API key"),
        (lambda: _start(svc, "bad-scene-01", scene_id="nosuchscene"), S.NOT_FOUND, "nosuchscene"),
        (lambda: _start(svc, "bad-handover", handover_time_us=t0 + 60_000), S.INVALID_ARGUMENT, "handover"),
        (lambda: _start(svc, "bad-object-1", logged_object_trajectories=stranger), S.INVALID_ARGUMENT, "999999"),
        (lambda: _start(svc, "bad-noego-01", logged_object_trajectories=no_ego), S.FAILED_PRECONDITION, "EGO"),
        (lambda: _start(svc, "bad-nan-0001", logged_object_trajectories=nan), S.INVALID_ARGUMENT, "non-finite"),
        (lambda: _start(svc, "x"), S.INVALID_ARGUMENT, "session_uuid"),
        (lambda: _start(svc, "bad-huge-001", logged_object_trajectories=huge), S.RESOURCE_EXHAUSTED, ""),
        (lambda: _simulate(svc, "nosuchsession", t0 + 500_000), S.NOT_FOUND, "unknown session"),
    ]
    _start(svc, "bad-inputs-01")
    times, poses = ego_track(scene)
    driven = PB.traffic.ObjectTrajectoryUpdate(object_id=str(int(scene.track_ids[tracks[0]])))
    nan_ego = ego_update(times, poses, t0, t0 + 500_000)
    nan_ego.trajectory.poses[2].pose.vec.y = float("nan")
    cases += [
        (lambda: _start(svc, "bad-inputs-01"), S.ALREADY_EXISTS, "already"),
        (lambda: stub.simulate(PB.traffic.TrafficRequest(  # the ego known up to 0.3 s, the query 1 s ahead
            session_uuid="bad-inputs-01", time_query_us=t0 + 1_000_000,
            object_trajectory_updates=[ego_update(times, poses, t0, t0 + 300_000)]), metadata=AUTH),
         S.FAILED_PRECONDITION, "EGO"),
        (lambda: _simulate(svc, "bad-inputs-01", t0), S.INVALID_ARGUMENT, "time_query_us"),
        (lambda: stub.simulate(PB.traffic.TrafficRequest(session_uuid="bad-inputs-01", time_query_us=t0 + 500_000,
                                                         object_trajectory_updates=[driven]), metadata=AUTH),
         S.INVALID_ARGUMENT, "driven by this service"),
        (lambda: stub.simulate(PB.traffic.TrafficRequest(session_uuid="bad-inputs-01", time_query_us=t0 + 500_000,
                                                         object_trajectory_updates=[nan_ego]), metadata=AUTH),
         S.INVALID_ARGUMENT, "non-finite"),
    ]
    for call, code, words in cases:
        got, details = _code(call)
        assert got == code, (words, got, details)
        assert words in details, (words, details)
    ok = decode(_simulate(svc, "bad-inputs-01", t0 + 500_000, lo=t0))  # the refused calls changed nothing
    assert ok[1][0][0] == t0 + 500_000
    stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid="bad-inputs-01"), metadata=AUTH)
    code, details = _code(lambda: _simulate(svc, "bad-inputs-01", t0 + 1_000_000))
    assert code == S.NOT_FOUND and "closed" in details
    held = [f"cap-session-{i:02d}" for i in range(6)]  # max_sessions=6 per replica
    for sid in held:
        _start(svc, sid)
    code, details = _code(lambda: _start(svc, "cap-session-99"))
    assert code == S.RESOURCE_EXHAUSTED and "max_sessions" in details
    for sid in held:
        stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid=sid), metadata=AUTH)
    assert stub.get_metadata(PB.common.Empty(), metadata=AUTH).minimum_history_length_us == 1_000_000


# ---- hypothesis-generated requests against every RPC: any status but UNKNOWN / INTERNAL (a servicer bug) or
# UNAVAILABLE (the replica failed on the request) ----

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, 1e30, -1e30, float("nan")])
U64 = st.sampled_from([0, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)  # edges often


def _pose_strategy(t0: int):
    return st.builds(lambda t, v, q: PB.common.PoseAtTime(
        timestamp_us=t, pose=PB.common.Pose(vec=PB.common.Vec3(x=v[0], y=v[1], z=v[2]),
                                            quat=PB.common.Quat(w=q[0], x=q[1], y=q[2], z=q[3]))),
        st.one_of(U64, st.integers(max(0, t0 - 2_000_000), t0 + 9_000_000)), st.tuples(FLOATS, FLOATS, FLOATS),
        st.tuples(FLOATS, FLOATS, FLOATS, FLOATS))


def _trajectory(t0: int, max_poses: int = 12):
    return st.builds(lambda ps, n: PB.common.Trajectory(poses=ps * n), st.lists(_pose_strategy(t0), max_size=max_poses),
                     st.sampled_from([1, 1, 1, 2_000]))  # now and then a long (repeated) array


def _mutated_log(scene, data):
    """The real logged objects, then a few generated edits: a field set to NaN / inf / huge, a renamed, dropped,
    duplicated or emptied object."""
    objs = logged(scene, _order(scene))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(objs) - 1))
        edit = data.draw(st.sampled_from(["value", "rename", "drop", "dup", "empty", "time"]))
        if edit == "value" and objs[i].trajectory.poses:
            p = objs[i].trajectory.poses[data.draw(st.integers(0, len(objs[i].trajectory.poses) - 1))]
            setattr(data.draw(st.sampled_from([p.pose.vec, p.pose.quat])), data.draw(st.sampled_from("xyz")),
                    data.draw(FLOATS))
        elif edit == "rename":
            objs[i].object_id = data.draw(st.sampled_from(["", "EGO", "0", "-1", "1e9", "ÿ" * 3]) | st.text(max_size=8))
        elif edit == "drop":
            objs.pop(i)
        elif edit == "dup":
            objs.append(objs[i])
        elif edit == "empty":
            objs[i].trajectory.ClearField("poses")
        elif objs[i].trajectory.poses:
            objs[i].trajectory.poses[-1].timestamp_us = data.draw(U64)
        if not objs:
            break
    return objs


def _never_a_server_fault(call) -> grpc.StatusCode | None:
    code, details = _code(call)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE), (code,
                                                                                                           details)
    return code


@pytest.mark.slow
def test_generated_requests_to_every_rpc_never_fault_the_server(svc):
    """About 600 generated requests (NaN / inf / huge values, long arrays, unknown and empty ids, wrong keys, out-of-range
    times) across all five RPCs: each is answered with a deliberate status, and the server keeps serving."""
    scene, stub = svc["scene"], svc["stub"]
    t0 = t_us(scene, scene.current_time_index)
    names = st.sampled_from(["", "x", "fuzz-live-0001", "nosuchsession", "ÿ" * 40]) | st.text(max_size=40)
    keys = st.sampled_from([AUTH] * 5 + [(), (("authorization", "Bearer "),), (("authorization", KEY),)])
    settings = dict(max_examples=200, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

    @given(data=st.data())
    @hyp_settings(**settings)
    def start(data):
        sid = data.draw(names)
        req = PB.traffic.TrafficSessionRequest(
            session_uuid=sid, scene_id=data.draw(st.sampled_from([scene.scenario_id, "", "nosuchscene"])),
            random_seed=data.draw(U64), handover_time_us=data.draw(st.sampled_from([t0]) | U64),
            logged_object_trajectories=data.draw(st.sampled_from(["log", "log", "generated"])) == "log"
            and _mutated_log(scene, data) or data.draw(st.lists(st.builds(
                PB.traffic.ObjectTrajectory, object_id=names, trajectory=_trajectory(t0)), max_size=4)))
        if _never_a_server_fault(lambda: stub.start_session(req, metadata=data.draw(keys))) is None:
            stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid=sid), metadata=AUTH)

    _start(svc, "fuzz-live-0001")  # a live session for simulate / close to hit

    @given(sid=names, t=st.sampled_from([t0 + 500_000]) | U64, keys=keys,
           ups=st.lists(st.builds(PB.traffic.ObjectTrajectoryUpdate, object_id=st.sampled_from(["EGO"]) | names,
                                  trajectory=_trajectory(t0)), max_size=3))
    @hyp_settings(**settings)
    def step(sid, t, keys, ups):
        _never_a_server_fault(lambda: stub.simulate(PB.traffic.TrafficRequest(
            session_uuid=sid, time_query_us=t, object_trajectory_updates=ups), metadata=keys))

    @given(sid=names.filter(lambda s: s != "fuzz-live-0001"), keys=keys)
    @hyp_settings(**{**settings, "max_examples": 60})
    def close_and_read(sid, keys):
        _never_a_server_fault(lambda: stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid=sid),
                                                         metadata=keys))
        _never_a_server_fault(lambda: stub.get_metadata(PB.common.Empty(), metadata=keys))
        _never_a_server_fault(lambda: stub.get_available_scenes(PB.common.Empty(), metadata=keys))

    start()
    step()
    close_and_read()
    ok = decode(_simulate(svc, "fuzz-live-0001", t0 + 500_000, lo=t0))  # the session survived every refusal
    assert ok[1][0][0] == t0 + 500_000
    stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid="fuzz-live-0001"), metadata=AUTH)
