"""`drivetune serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--grpc-port P] [--scenes SCENES] [--replicas N]
[--api-key-env VAR] [KEY=VALUE]`.

With `--grpc-port` AlpaSim's TrafficService is served there too (`services.grpc_front`), on the scenes of `--scenes`
(TFRecords or a shard directory; it sets `scenario_store`).

Starts the simulation service on a private local Ray (or attaches to `--address` / RAY_ADDRESS) and serves until
interrupted. KEY=VALUE overrides any `services.serve_config.ServeConfig` field (e.g. `max_sessions=128`). The application is
deployed from a Serve config (`app_config`: import path `services.app:build_app`, args as in configs/serve.yaml), so
re-applying it with another {checkpoint, version} swaps the model in place (`--follow`).
"""

from __future__ import annotations

import argparse
import sys
import threading

from drivetune.checkpoint import read_model_spec, resolve_checkpoint
from drivetune.config import ConfigError
from services.launch import follow, local_service, serve_config


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
                    follow(args.checkpoint, cfg, stop, args.follow_every)
                stop.wait()
            except KeyboardInterrupt:
                pass
    except (ValueError, OSError, ConfigError, RuntimeError) as e:
        print(f"drivetune serve: error: {e}", file=sys.stderr)
        return 2
    return 0
