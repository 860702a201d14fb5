"""`drivetune serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--grpc-port P] [--scenes SCENES] [--replicas N]
[--api-key-env VAR] [KEY=VALUE]`.

With `--grpc-port` AlpaSim's TrafficService is served there too (`services.grpc_front`), on the scenes of `--scenes`
(TFRecords or a shard directory; it sets `scenario_store`).

Starts the simulation service on a private local Ray (or attaches to `--address` / RAY_ADDRESS) and serves until
interrupted. KEY=VALUE overrides any `services.config.ServeConfig` field (e.g. `max_sessions=128`). The application is
deployed from a Serve config (`app_config`: import path `services.app:build_app`, args as in configs/serve.yaml), so
re-applying it with another {checkpoint, version} swaps the model in place (`--follow`).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from drivetune.checkpoint import read_model_spec, resolve_checkpoint
from drivetune.config import ConfigError, apply_overrides, from_dict
from drivetune.ray_runtime import ray_session
from services.config import ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or training run directory")
    parser.add_argument("--version", type=int, default=None, help="policy version (default: the checkpoint's step)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also serve AlpaSim's TrafficService (gRPC) on this port, same host")
    parser.add_argument("--scenes", default=None,
                        help="scenes the service owns (TFRecords or shard directory): get_available_scenes, scenario_id")
    parser.add_argument("--replicas", type=int, default=1, help="Serve replicas (sessions stick to one by x-session-id)")
    parser.add_argument("--api-key-env", default="", help="environment variable holding the API key (Bearer)")
    parser.add_argument("--address", default=None, help="Ray cluster to attach to (default: a private local Ray)")
    parser.add_argument("--follow", action="store_true",
                        help="CKPT is a training run: hot-swap each newer checkpoint in (policy version = its step)")
    parser.add_argument("--follow-every", type=float, default=30.0, help="seconds between checks with --follow")
    parser.add_argument("overrides", nargs="*", help="ServeConfig overrides, KEY=VALUE")


def serve_config(overrides: list[str], **fields) -> ServeConfig:
    data = apply_overrides({k: v for k, v in fields.items() if v is not None}, overrides)
    return from_dict(ServeConfig, data, where="serve config").validate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_config(cfg: ServeConfig, checkpoint: str, version: int | None, name: str = "drivetune",
               actor_options: dict | None = None) -> dict:
    """The Serve config (what `serve deploy` takes) of one service application. Re-applying it with only another
    {checkpoint, version} swaps the model in place (same code version: `reconfigure`, no restart)."""
    deployment = {"name": "SimAgents", "user_config": {"checkpoint": str(checkpoint), "version": version}}
    if actor_options is not None:
        deployment["ray_actor_options"] = actor_options
    return {"applications": [{"name": name, "route_prefix": "/", "import_path": "services.app:build_app",
                              "args": asdict(cfg), "deployments": [deployment]}]}


def apply_config(config: dict, timeout_s: float = 120.0) -> None:
    """Deploy a Serve config on the running Serve instance (what `serve run config.yaml` does) and wait until every
    application is RUNNING; raises RuntimeError naming a failed deploy."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema(**config))
    names = [a["name"] for a in config["applications"]]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: apps[n].message for n, st in states.items() if st in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"serve deploy failed: {failed}")
        if all(st == "RUNNING" for st in states.values()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"serve deploy: applications {names} not running after {timeout_s:.0f} s")


@contextmanager
def local_service(checkpoint: str, cfg: ServeConfig, host: str = "127.0.0.1", port: int | None = None,
                  version: int | None = None, address: str | None = None, grpc_port: int | None = None
                  ) -> Iterator[str]:
    """Run the service (on a private local Ray unless `address`), with the gRPC TrafficService on `grpc_port` if
    given; yields the HTTP URL and shuts both down after."""
    from ray import serve

    from drivetune.checkpoint import resolve_checkpoint

    resolve_checkpoint(checkpoint)  # fail here, not in a replica
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise ValueError(f"--api-key-env {cfg.api_key_env}: that environment variable is unset or empty")
    port = port or free_port()
    cpus = max(os.cpu_count() or 1, int(cfg.replicas * cfg.replica_cpus + 0.999))
    with ray_session(address, num_cpus=None if address else cpus, log_to_driver=False):
        serve.start(http_options={"host": host, "port": port})
        try:
            apply_config(app_config(cfg, checkpoint, version))
            front = None
            if grpc_port is not None:
                from services.grpc_front import start_grpc

                key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
                front = start_grpc(serve.get_deployment_handle("SimAgents", "drivetune"), grpc_port, host, key,
                                   cfg.max_body_bytes)
            try:
                yield f"http://{host}:{port}"
            finally:
                if front is not None:
                    front.stop(grace=1.0)
        finally:
            serve.shutdown()


def _follow(run_dir: str, cfg: ServeConfig, stop: threading.Event, every_s: float) -> None:
    """Serve the newest checkpoint of a training run: swap it in (version = its step) when one appears."""
    from drivetune.checkpoint import run_checkpoints

    served = None
    while not stop.wait(every_s):
        found = run_checkpoints(run_dir)
        if found and found[-1][1] != served:
            step, path = found[-1]
            if served is not None:
                apply_config(app_config(cfg, str(path), step))
                print(f"drivetune serve: now serving {path} (policy version {step})", flush=True)
            served = path


def run(args: argparse.Namespace) -> int:
    try:
        cfg = serve_config(args.overrides, replicas=args.replicas, api_key_env=args.api_key_env,
                           scenario_store=args.scenes)
        read_model_spec(resolve_checkpoint(args.checkpoint))  # missing, damaged or outdated: refused before Ray starts
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"drivetune serve: warning: listening on {args.host}, beyond loopback", file=sys.stderr)
        stop = threading.Event()  # never set: Ctrl-C (or Ray's SIGTERM handling) ends the process
        with local_service(args.checkpoint, cfg, args.host, args.port, args.version, args.address,
                           args.grpc_port) as url:
            print(f"drivetune serve: {url} (OpenAPI at {url}/docs); Ctrl-C stops", flush=True)
            if args.grpc_port is not None:
                print(f"drivetune serve: AlpaSim TrafficService (gRPC) on {args.host}:{args.grpc_port}", flush=True)
            try:
                if args.follow:
                    _follow(args.checkpoint, cfg, stop, args.follow_every)
                stop.wait()
            except KeyboardInterrupt:
                pass
    except (ValueError, OSError, ConfigError, RuntimeError) as e:
        print(f"drivetune serve: error: {e}", file=sys.stderr)
        return 2
    return 0
