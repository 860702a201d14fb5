"""Start the simulation service (Ray Serve) on a private local Ray or an existing cluster, and swap its model in
place: the library of `drivetune serve`. The application is deployed from a Serve config (`app_config`: import path
`services.app:build_app`, args as in configs/serve.yaml), so re-applying it with another {checkpoint, version} swaps
the model in place (`follow`)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from drivetune.checkpoint import resolve_checkpoint, run_checkpoints
from drivetune.config import apply_overrides, from_dict
from drivetune.ray_runtime import ray_session
from services.serve_config import ServeConfig


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


def follow(run_dir: str, cfg: ServeConfig, stop: threading.Event, every_s: float) -> None:
    """Serve the newest checkpoint of a training run: swap it in (version = its step) when one appears."""
    served = None
    while not stop.wait(every_s):
        found = run_checkpoints(run_dir)
        if found and found[-1][1] != served:
            step, path = found[-1]
            if served is not None:
                apply_config(app_config(cfg, str(path), step))
                print(f"drivetune serve: now serving {path} (policy version {step})", flush=True)
            served = path
