"""The simulation service on a local Ray for tests and probes: a random-weights micro checkpoint, Serve on a private
127.0.0.1 port, deployed from its Serve config (as `drivetune serve` does). Nothing here depends on model outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from drivetune.checkpoint import save_checkpoint
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene


@dataclass
class Stack:
    url: str
    checkpoint: Path
    scenario_id: str  # a scenario of the configured scenario store


def micro_checkpoint(scenario: Path, out: Path, seed: int = 0) -> Path:
    """A random-weights micro model with a small vocabulary built from `scenario`, saved as a checkpoint."""
    vocab = build_vocab([load_scene(scenario)], sizes=(64, 16, 16))
    torch.manual_seed(seed)
    return save_checkpoint(out, BehaviorModel(ModelConfig.named("micro"), vocab).eval(), {"step": 1})


def start_service(scenario: Path, tmp: Path, name: str = "sim", api_key_env: str = "", api_key: str = "",
                  **settings) -> Stack:
    """serve.start on a free loopback port and deploy the service with `settings` (ServeConfig fields) and the
    scenario file as its scenario store; waits for /healthz to answer "ok"."""
    from ray import serve

    from services.launch import app_config, apply_config, free_port
    from services.serve_config import ServeConfig

    ckpt = micro_checkpoint(scenario, tmp / "ckpt")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(replica_cpus=0.5, scenario_store=str(scenario), api_key_env=api_key_env, **settings)
    actor: dict = {"num_cpus": 0.5}
    if api_key_env:
        actor["runtime_env"] = {"env_vars": {api_key_env: api_key}}
    apply_config(app_config(cfg, str(ckpt), 1, name=name, actor_options=actor))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=10).json().get("status") == "ok":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the service at {url} did not become healthy")
    return Stack(url, ckpt, load_scene(scenario).scenario_id)
