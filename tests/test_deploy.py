"""deploy/ manifests stay consistent with the code: valid YAML, real commands and configs, the pinned Ray version."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from drivetune import cli

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPO = DEPLOY.parent


def _pinned_ray_version() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)\.\*"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject must pin ray"
    return match.group(1)


def test_rayjob_entrypoint_is_a_real_command_with_a_real_config():
    job = yaml.safe_load((DEPLOY / "kuberay-rayjob-pretrain.yaml").read_text())
    assert job["kind"] == "RayJob"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[0] == "drivetune"
    assert " ".join(words[1:3]) in cli.COMMANDS
    config = words[words.index("--config") + 1]
    assert (REPO / config).is_file(), config
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"].startswith(_pinned_ray_version())
    assert spec["authOptions"]["mode"] == "token"


def test_overrides_in_the_entrypoint_are_known_config_keys():
    from cluster.pretrain import PretrainConfig
    from drivetune.config import load_config

    words = shlex.split(yaml.safe_load((DEPLOY / "kuberay-rayjob-pretrain.yaml").read_text())["spec"]["entrypoint"])
    overrides = [w for w in words if "=" in w]
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_micro.yaml", overrides)
    assert cfg.data.shards == "/data/shards"


def test_ray_up_config_and_dockerfile_pin_the_same_ray():
    cluster = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert cluster["provider"]["type"] == "local"
    assert any("get-auth-token --generate" in c for c in cluster["head_start_ray_commands"])
    assert f"rayproject/ray:{_pinned_ray_version()}" in (DEPLOY / "Dockerfile").read_text()
