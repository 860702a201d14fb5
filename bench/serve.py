"""Closed-loop serving over loopback HTTP and gRPC (AlpaSim's TrafficService, `--grpc`): step latency at 1 / 4 / 16
concurrent sessions, and batched (steps of different sessions in one forward, `max_batch_size=16`) against unbatched
(`max_batch_size=1`) throughput, in one run, for each protocol.

Scene: the first real WOMD scenario (50 sim agents), the SDC driven by the caller (log replay), the service driving
the other 49. A random-weights model of each size (latency does not depend on training). Each session runs `--steps`
steps; every client thread drives one session. Reported: client-side p50/p95/p99 per step, steps/s, the replica's CPU
seconds per step, replica RSS and RSS growth per open session; also the in-process engine (no HTTP) with 1 / 4 / 16
sessions in one batch: the batching gain the model itself allows. Targets (issue 11): p50 <= 30 ms at 1 session (micro, CPU); batched >= 2x unbatched at 16.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py [--sizes micro tiny] [--levels 1 4 16] [--steps 16]
        [--engine-only] [--protocols http grpc] [--load | --soak]

gRPC sessions are driven like AlpaSim drives a traffic service: `start_session` with the logged trajectories, then
`simulate` at 0.1 s (the first interval) and every 0.5 s after, with the ego's log poses up to the query time; one
`simulate` is one step.

`--load`: the sustained step rate at which p99 stays under `--p99-ms` (200): sessions stepped in lockstep every
`--period` s (simulators ticking together, all agents policy-driven), more sessions per level, `--duration` s each
(services.loadgen.lockstep). `--soak`: `--waves` waves of 20 sessions (3 steps each; every 4th left to expire by a 5 s
TTL), the replica's RSS after each wave (services.loadgen.soak).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from drivetune.checkpoint import save_checkpoint  # noqa: E402
from drivetune.client import ClientSession, SimAgentsClient  # noqa: E402
from drivetune.engine import Engine, SessionSpec  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig  # noqa: E402
from drivetune.tfrecord import read_records  # noqa: E402
from drivetune.tokenizer import build_vocab  # noqa: E402
from drivetune.womd import scene_from_bytes  # noqa: E402
from services.demo import logged_sdc_track  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "womd" / "motion_data_one_scenario.tfrecord"
SAMPLER = {"kind": "warmk", "k": 32}


def drive(client: SimAgentsClient, info: dict, track: np.ndarray, sdc: int, steps: int, lat: list, sizes: list
          ) -> None:
    session = ClientSession(client, info)
    for k in range(steps):
        seg = track[(k - 1) % 16 * 5: ((k - 1) % 16 + 1) * 5] if k else None
        states = None if seg is None else {sdc: {"x": seg[:, 0], "y": seg[:, 1], "heading": seg[:, 2]}}
        t0 = time.perf_counter()
        body = session.step(states)
        lat.append(time.perf_counter() - t0)
        if k:
            sizes.append(body["batch_size"])


def level(url: str, payload: bytes, track: np.ndarray, sdc: int, n: int, steps: int) -> dict:
    """n concurrent sessions x steps; latency percentiles, throughput, replica CPU and memory."""
    admin = SimAgentsClient(url)
    before = admin.model()
    clients = [SimAgentsClient(url) for _ in range(n)]
    infos = [c.create_session(scenario_bytes=payload, sampler=SAMPLER, seed=i).info for i, c in enumerate(clients)]
    opened = admin.model()
    lats: list[list[float]] = [[] for _ in range(n)]
    sizes: list[int] = []
    threads = [threading.Thread(target=drive, args=(c, info, track, sdc, steps, lat, sizes))
               for c, info, lat in zip(clients, infos, lats)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = admin.model()
    for c, info in zip(clients, infos):
        ClientSession(c, info).close()
        c.close()
    admin.close()
    ms = np.asarray([x for lat in lats for x in lat]) * 1e3
    done = n * steps
    if len(ms) != done:
        raise RuntimeError(f"{done - len(ms)} steps failed")
    return {"p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "steps_s": done / wall, "batch": float(np.mean(sizes)), "wall": wall, "client_cpu": cpu,
            "replica_cpu_ms_step": (after["replica_cpu_s"] - opened["replica_cpu_s"]) / done * 1e3,
            "rss_mb": after["replica_rss_bytes"] / 2**20,
            "mb_per_session": (opened["replica_rss_bytes"] - before["replica_rss_bytes"]) / 2**20 / n}


def drive_grpc(stub, sid: str, scene, steps: int, lat: list, ready: threading.Barrier, span: list) -> None:
    """One AlpaSim session: start, wait for the others, `steps` simulate calls (0.1 s, then every 0.5 s; at most 16:
    the log's 8 s of ego poses), then close."""
    from services.alpasim_replay import PB, ego_track, ego_update, logged, t_us

    t0 = t_us(scene, scene.current_time_index)
    times, ego = ego_track(scene)
    agents = [int(i) for i in np.flatnonzero(scene.sim_agent_mask())]
    stub.start_session(PB.traffic.TrafficSessionRequest(
        session_uuid=sid, scene_id=scene.scenario_id, random_seed=0, handover_time_us=t0,
        logged_object_trajectories=logged(scene, agents)))
    queries = [t0 + 100_000] + [t0 + 500_000 * k for k in range(1, min(steps, 16))]
    ready.wait()
    span.append(time.perf_counter())
    for lo, tq in zip([t0] + queries, queries):
        req = PB.traffic.TrafficRequest(session_uuid=sid, time_query_us=tq,
                                        object_trajectory_updates=[ego_update(times, ego, lo, tq)])
        t1 = time.perf_counter()
        stub.simulate(req)
        lat.append(time.perf_counter() - t1)
    span.append(time.perf_counter())
    stub.close_session(PB.traffic.TrafficSessionCloseRequest(session_uuid=sid))


def grpc_level(stub, scene, n: int, steps: int, tag: str) -> dict:
    """n concurrent AlpaSim sessions x steps over gRPC (sessions opened first): latency percentiles, throughput."""
    lats: list[list[float]] = [[] for _ in range(n)]
    ready, span = threading.Barrier(n), []
    threads = [threading.Thread(target=drive_grpc, args=(stub, f"bench-{tag}-{n}-{i:03d}", scene, steps, lat,
                                                         ready, span)) for i, lat in enumerate(lats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.asarray([x for lat in lats for x in lat]) * 1e3
    done = n * min(steps, 16)
    if len(ms) != done:
        raise RuntimeError(f"{done - len(ms)} gRPC steps failed")
    return {"p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "steps_s": done / (max(span) - min(span))}


def engine_floor(ckpt: Path, scene, n: int, steps: int) -> tuple[float, float]:
    """In-process engine (no HTTP), n sessions stepped together: (p50 ms per batch step, CPU ms per session-step)."""
    from drivetune.checkpoint import load_checkpoint
    from drivetune.samplers import SamplerConfig

    model, _ = load_checkpoint(ckpt)
    engine = Engine(model, model.vocab.to_torch("cpu"))
    sessions = engine.start([SessionSpec(scene, [i], SamplerConfig(**SAMPLER), [scene.sdc_id]) for i in range(n)])
    engine.act(sessions)
    track, times, cpu = logged_sdc_track(scene), [], 0.0
    for k in range(steps):
        poses = np.zeros((1, sessions[0].num_agents, 5, 3))
        poses[:, sessions[0].external] = track[k % 16 * 5: (k % 16 + 1) * 5]
        ext = [(torch.as_tensor(poses), torch.as_tensor(s.external[None].copy())) for s in sessions]
        t0, c0 = time.perf_counter(), time.process_time()
        engine.advance(sessions, ext)
        times.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
    return float(np.median(times) * 1e3), cpu / (steps * n) * 1e3


def grpc_front():
    """The TrafficService front of the `bench` application on a free loopback port: (server, channel, stub)."""
    import grpc
    from ray import serve

    from services.alpasim_replay import PB
    from services.launch import free_port
    from services.grpc_front import start_grpc

    port = free_port()
    front = start_grpc(serve.get_deployment_handle("SimAgents", "bench"), port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return front, channel, PB.grpc.TrafficServiceStub(channel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["micro"])
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--engine-only", action="store_true", help="only the in-process engine figures")
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    parser.add_argument("--load", action="store_true", help="only the sustained-rate sweep (p99 bound)")
    parser.add_argument("--soak", action="store_true", help="only the session-churn soak (RSS per wave)")
    parser.add_argument("--period", type=float, default=0.1, help="--load: seconds between a session's steps")
    parser.add_argument("--duration", type=float, default=20.0, help="--load: seconds per level")
    parser.add_argument("--p99-ms", type=float, default=200.0)
    parser.add_argument("--waves", type=int, default=20)
    args = parser.parse_args()
    if args.load or args.soak:
        return ops_figures(args)
    from ray import serve

    from drivetune.ray_runtime import ray_session
    from services.launch import app_config, apply_config, free_port
    from services.serve_config import ServeConfig

    torch.set_num_threads(1)
    payload = next(read_records(SCENARIO))[1]
    scene = scene_from_bytes(payload)
    track, sdc = logged_sdc_track(scene), int(scene.sdc_id)
    vocab = build_vocab([scene], sizes=(256, 128, 128))
    tmp = Path(tempfile.mkdtemp(prefix="dt_bench_serve_"))
    print(f"scene {scene.scenario_id}: {int(scene.sim_agent_mask().sum())} sim agents (SDC external), "
          f"{args.steps} steps per session; machine shared and loaded, figures are indicative")
    with contextlib.nullcontext() if args.engine_only else ray_session(num_cpus=2, log_to_driver=False):
        url = f"http://127.0.0.1:{free_port()}"
        if not args.engine_only:
            serve.start(http_options={"host": "127.0.0.1", "port": int(url.rsplit(":", 1)[1])})
        for size in args.sizes:
            torch.manual_seed(0)
            model = BehaviorModel(ModelConfig.named(size), vocab)
            ckpt = save_checkpoint(tmp / size, model, {"step": 1})
            print(f"\n{size}: {model.num_parameters() / 1e6:.2f}M parameters")
            for n in args.levels:
                wall, cpu = engine_floor(ckpt, scene, n, args.steps)
                print(f"in-process engine, {n:>2} sessions in one batch: p50 {wall:.1f} ms per step, "
                      f"CPU {cpu:.1f} ms per session-step")
            if args.engine_only:
                continue
            print(f"{'proto':>5} {'batch':>6} {'sessions':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'steps/s':>8} "
                  f"{'mean batch':>10} {'replica cpu ms/step':>20} {'RSS MB':>7} {'MB/session':>10} {'client cpu s':>12}")
            rate = {}
            for batch in (16, 1):
                cfg = ServeConfig(replica_cpus=1.0, max_batch_size=batch, max_sessions=64, scenario_store=str(SCENARIO))
                apply_config(app_config(cfg, str(ckpt), 1, name="bench"))
                front, channel, stub = None, None, None
                if "grpc" in args.protocols:
                    front, channel, stub = grpc_front()
                for n in (args.levels if batch > 1 else [max(args.levels)]):
                    if "http" in args.protocols:
                        r = level(url, payload, track, sdc, n, args.steps)
                        rate[("http", batch, n)] = r["steps_s"]
                        print(f"{'http':>5} {batch:>6} {n:>8} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['p99']:>8.1f} "
                              f"{r['steps_s']:>8.1f} {r['batch']:>10.1f} {r['replica_cpu_ms_step']:>20.1f} "
                              f"{r['rss_mb']:>7.0f} {r['mb_per_session']:>10.2f} {r['client_cpu']:>12.1f}")
                    if stub is not None:
                        r = grpc_level(stub, scene, n, args.steps, f"{size}-{batch}")
                        rate[("grpc", batch, n)] = r["steps_s"]
                        print(f"{'grpc':>5} {batch:>6} {n:>8} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['p99']:>8.1f} "
                              f"{r['steps_s']:>8.1f}")
                if front is not None:
                    channel.close()
                    front.stop(grace=None)
            n = max(args.levels)
            for proto in args.protocols:
                print(f"{size} {proto}: batched / unbatched throughput at {n} sessions: "
                      f"{rate[(proto, 16, n)] / rate[(proto, 1, n)]:.2f}x")
        if not args.engine_only:
            serve.shutdown()


def ops_figures(args: argparse.Namespace) -> None:
    """--load / --soak against one micro replica (1 CPU, batch 16, 64 sessions)."""
    from ray import serve

    from drivetune.ray_runtime import ray_session
    from services.launch import app_config, apply_config, free_port
    from services.serve_config import ServeConfig
    from services.loadgen import lockstep, soak

    torch.set_num_threads(1)
    payload = next(read_records(SCENARIO))[1]
    scene = scene_from_bytes(payload)
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro"), build_vocab([scene], sizes=(256, 128, 128)))
    ckpt = save_checkpoint(Path(tempfile.mkdtemp(prefix="dt_bench_ops_")) / "micro", model, {"step": 1})
    print(f"micro {model.num_parameters() / 1e6:.2f}M parameters, scene {scene.scenario_id} "
          f"({int(scene.sim_agent_mask().sum())} agents, all policy-driven); machine shared, figures indicative")
    with ray_session(num_cpus=2, log_to_driver=False):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        cfg = ServeConfig(replica_cpus=1.0, max_batch_size=16, max_sessions=64, session_ttl_s=5.0 if args.soak else 300)
        apply_config(app_config(cfg, str(ckpt), 1, name="bench"))
        if args.load:
            best = None
            print(f"{'sessions':>8} {'offered/s':>9} {'steps/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
                  f"{'missed ticks':>12}")
            for n in args.levels:
                r = lockstep(url, payload, n, args.period, args.duration)
                print(f"{n:>8} {r['offered']:>9.1f} {r['achieved']:>8.1f} {r['p50']:>7.1f} {r['p99']:>7.1f} "
                      f"{r['max']:>7.1f} {r['missed_ticks']:>12}")
                if r["p99"] < args.p99_ms and r["missed_ticks"] == 0:
                    best = r
            print("sustained rate with p99 < %.0f ms and no missed tick: %s" % (
                args.p99_ms, "none" if best is None else f"{best['achieved']:.1f} steps/s ({best['sessions']} "
                                                          f"sessions, p99 {best['p99']:.1f} ms)"))
        if args.soak:
            t0 = time.perf_counter()
            rep = soak(url, payload, waves=args.waves, per_wave=20, expire_every=4, steps=3, ttl_s=5.0)
            rss = [w.rss_bytes / 2**20 for w in rep.waves]
            kept = sum(w.left_to_expire for w in rep.waves)
            print(f"soak: {rep.sessions} sessions in {len(rep.waves)} waves, {kept} left to expire "
                  f"({rep.expired_404} answered 404 expired), open after each wave "
                  f"{[w.open_after for w in rep.waves]}, engine maps held {[w.maps_held for w in rep.waves]}, "
                  f"{time.perf_counter() - t0:.0f} s")
            print("RSS MiB after each wave: " + " ".join(f"{r:.0f}" for r in rss))
            print(f"last / first wave: {rss[-1] / rss[0]:.3f}; max / first: {max(rss) / rss[0]:.3f}")
        serve.shutdown()


if __name__ == "__main__":
    main()
