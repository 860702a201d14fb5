"""deploy/ manifests: valid against the real KubeRay CRD schemas (../shared/kuberay-crds, `ray.io/v1`
openAPIV3Schema, unknown fields rejected as `kubectl apply` does), generated ones in sync with their source, real
commands and configs in entrypoints, the pinned Ray and torch versions, no dashboard / job API on 0.0.0.0 without
token auth, and the Prometheus / Grafana files consistent with the metrics drivetune exports."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster import kuberay
from cluster.metrics import DASHBOARD_KEYS, REWARD_PREFIX, metric_name
from drivetune import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent
CRDS = REPO.parent / "shared" / "kuberay-crds"
MANIFESTS = {"kuberay-raycluster.yaml": "RayCluster", "kuberay-rayjob-pretrain.yaml": "RayJob",
             "kuberay-rayjob-pipeline.yaml": "RayJob", "kuberay-rayservice.yaml": "RayService"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# The series rollout workers and the pool export themselves (tests/integration/test_metrics.py scrapes them).
WORKER_SERIES = {"drivetune_rollout_groups_total", "drivetune_rollout_seconds_total", "drivetune_rollout_task_seconds",
                 "drivetune_rollout_worker_restarts_total", "drivetune_rollout_task_timeouts_total"}


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _strict(schema: object) -> object:
    """The schema with unknown fields rejected wherever Kubernetes would reject them (objects with declared
    properties and no x-kubernetes-preserve-unknown-fields), as strict field validation in `kubectl apply` does."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _validator(kind: str) -> jsonschema.Draft7Validator:
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD missing: {path} (a checkout needs ../shared beside it)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "ray.io"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return jsonschema.Draft7Validator(_strict(v1["schema"]["openAPIV3Schema"]))


def _errors(kind: str, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in _validator(kind).iter_errors(doc)]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_is_valid_against_the_kuberay_crd(name):
    doc = _load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == MANIFESTS[name]
    assert not _errors(doc["kind"], doc)


def test_the_crd_check_rejects_broken_manifests():
    good = _load("kuberay-raycluster.yaml")
    typo = copy.deepcopy(good)
    typo["spec"]["workerGroupSpecs"][0]["replicaCount"] = 2  # unknown field
    assert any("replicaCount" in e for e in _errors("RayCluster", typo))
    bad_mode = copy.deepcopy(good)
    bad_mode["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions/mode" in e for e in _errors("RayCluster", bad_mode))
    no_group = copy.deepcopy(good)
    del no_group["spec"]["workerGroupSpecs"][1]["groupName"]
    assert any("groupName" in e for e in _errors("RayCluster", no_group))
    job = _load("kuberay-rayjob-pretrain.yaml")
    job["spec"]["entrypoint"] = ["drivetune"]  # must be a string
    assert _errors("RayJob", job)


def test_generated_manifests_are_in_sync_with_the_raycluster_and_serve_config():
    for name, text in kuberay.generated().items():
        assert (DEPLOY / name).read_text() == text, f"deploy/{name} is stale: run `python -m cluster.kuberay`"
    spec = _load("kuberay-raycluster.yaml")["spec"]
    assert _load("kuberay-rayservice.yaml")["spec"]["rayClusterConfig"] == spec
    serve = yaml.safe_load(_load("kuberay-rayservice.yaml")["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    serve_yaml = REPO / "configs" / "serve.yaml"
    assert app["args"] == (yaml.safe_load(serve_yaml.read_text()) if serve_yaml.is_file() else {})


def test_cluster_groups_and_versions():
    spec = _load("kuberay-raycluster.yaml")["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu.get("nvidia.com/gpu") == "1" and "nvidia.com/gpu" not in cpu
    pinned_ray = re.search(r'"ray\[[^\]]*\]==([0-9.]+)\.\*"', (REPO / "pyproject.toml").read_text()).group(1)
    assert spec["rayVersion"].startswith(pinned_ray)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"rayproject/ray:{pinned_ray}" in dockerfile
    torch_pin = re.search(r"torch==([0-9.]+)", (REPO / "Makefile").read_text()).group(1)
    assert f"torch=={torch_pin}" in dockerfile and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" not in dockerfile.split(
        "ARG")[-1]


def _dotted_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _dotted_keys(v, f"{prefix}{k}.")
    return keys


@pytest.mark.parametrize("name", ["kuberay-rayjob-pretrain.yaml", "kuberay-rayjob-pipeline.yaml"])
def test_rayjob_entrypoints_are_real_commands_with_known_config_keys(name):
    words = shlex.split(_load(name)["spec"]["entrypoint"])
    command = " ".join(words[1:3])
    if command not in cli.COMMANDS:
        pytest.skip(f"`drivetune {command}` is not in this tree yet (the RL engine lands it)")
    assert words[0] == "drivetune"
    config = REPO / words[words.index("--config") + 1]
    assert config.is_file(), config
    known = _dotted_keys(yaml.safe_load(config.read_text()))
    overrides = [w.split("=", 1)[0] for w in words if "=" in w]
    assert overrides and set(overrides) <= known, set(overrides) - known


def test_pretrain_rayjob_overrides_load_with_the_real_config_class():
    from cluster.pretrain_config import PretrainConfig
    from drivetune.config import load_config

    words = shlex.split(_load("kuberay-rayjob-pretrain.yaml")["spec"]["entrypoint"])
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_micro.yaml", [w for w in words if "=" in w])
    assert cfg.data.shards == "/data/shards" and cfg.run_dir == "/data/runs/pretrain"


def _cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for name, kind in MANIFESTS.items():
        spec = _load(name)["spec"]
        out.append((name, {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
                           "RayService": spec.get("rayClusterConfig")}[kind]))
    return out


def test_no_dashboard_on_all_interfaces_without_token_auth():
    for name, spec in _cluster_specs():
        # KubeRay binds the head's dashboard (and job API) to 0.0.0.0 unless told otherwise: token auth is a must.
        host = spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0")
        assert host != "0.0.0.0" or spec.get("authOptions", {}).get("mode") == "token", name
    cluster = _load("ray-cluster.yaml")
    commands = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    for command in commands:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    assert any("--dashboard-host=0.0.0.0" in c for c in cluster["head_start_ray_commands"])
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    assert cluster["provider"]["type"] == "local"


def test_prometheus_scrapes_the_metrics_port_of_every_manifest():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert any(r.get("regex") == "metrics" for r in jobs["kuberay-pods"]["relabel_configs"])
    for name, spec in _cluster_specs():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            port = group["rayStartParams"]["metrics-export-port"]
            ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
            assert ports["metrics"] == int(port), name
    assert "--metrics-export-port=8080" in " ".join(_load("ray-cluster.yaml")["head_start_ray_commands"])


def test_grafana_dashboard_plots_only_series_that_exist():
    dash = json.loads((DEPLOY / "grafana" / "drivetune.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("reward terms", "kl", "rates", "throughput", "version lag", "serve latency"):
        assert topic in titles, topic
    known = WORKER_SERIES | {metric_name("drivetune_", k) for k in DASHBOARD_KEYS}
    used = {m.group(1) for e in exprs for m in re.finditer(r"\bray_(drivetune_[a-z0-9_]+)(?![a-z0-9_.])", e)}
    assert used and used <= known, used - known
    assert any(metric_name("drivetune_", REWARD_PREFIX) in e for e in exprs)  # the reward-term family
    assert any("ray_serve_http_request_latency_ms_bucket" in e for e in exprs)
