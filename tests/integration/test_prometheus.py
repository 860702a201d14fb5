"""A real Prometheus server (Debian's `prometheus`; `make test` installs it) scrapes a private Ray head through the
scrape config in deploy/prometheus/ while a short RL job and a short serving session run; then every panel query of
deploy/grafana/drivetune.json, evaluated through Prometheus's HTTP API as Grafana draws it, must return data, and a
panel naming a metric that does not exist must be reported."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from ray_head import RayHead, free_ports  # noqa: E402

from cluster.dashboard_check import series_per_query  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "drivetune.json"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # CI installs it (`make test`); a missing server is a failure, never a skip
        pytest.fail(f"{name} not found: `make test` installs Debian's prometheus package (apt-get install prometheus)")
    return path


def _local_config(temp_dir: Path, interval_s: int) -> dict:
    """deploy's scrape config with the node list of this head's --temp-dir (instead of /tmp/ray) and a short scrape
    interval. The KubeRay job is left out: there is no Kubernetes API here, and Debian's build has no Kubernetes
    discovery."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (ray_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    (files,) = ray_job["file_sd_configs"]
    assert files["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    files["files"] = [str(temp_dir / "prom_metrics_service_discovery.json")]
    config["global"].update(scrape_interval=f"{interval_s}s", evaluation_interval=f"{interval_s}s")
    config["scrape_configs"] = [ray_job]
    return config


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(f"{url}/-/ready", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("prometheus did not become ready")


@pytest.mark.slow
def test_every_dashboard_panel_has_data_in_a_real_prometheus(tmp_path, womd_637):
    dashboard = json.loads(DASHBOARD.read_text())
    with RayHead(num_cpus=2) as head:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(_local_config(head.temp_dir / "ray", interval_s=2)))
        checked = subprocess.run([_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        log = (tmp_path / "prometheus.log").open("w")
        prom = subprocess.Popen([_binary("prometheus"), f"--config.file={config}",
                                 f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, prom)
            start = time.time()
            env = {**head.env, "RAY_ADDRESS": f"127.0.0.1:{head.ports['--port']}", "PYTHONPATH": str(REPO)}
            work = head.run(sys.executable, str(REPO / "tests" / "prom_workload.py"), str(tmp_path / "work"),
                            str(womd_637), env=env, timeout=420, cwd=REPO)
            assert work.returncode == 0, work.stdout[-3000:] + work.stderr[-3000:]
            print(work.stdout, f"workload {time.time() - start:.0f} s")
            rows: list = []
            deadline = time.monotonic() + 60  # Ray exports about every 10 s; Prometheus scrapes every 2 s
            while time.monotonic() < deadline:
                rows = series_per_query(url, dashboard, start, time.time())
                if all(n > 0 for _, _, n in rows):
                    break
                time.sleep(3)
            assert [(title, expr) for title, expr, n in rows if n == 0] == []
            assert len(rows) == sum(len(p.get("targets", [])) for p in dashboard["panels"])

            broken = copy.deepcopy(dashboard)  # a panel naming a metric nobody exports is reported
            target = broken["panels"][1]["targets"][0]
            target["expr"] = target["expr"].replace("ray_drivetune_kl_k1", "ray_drivetune_kl_k9")
            assert target["expr"] != dashboard["panels"][1]["targets"][0]["expr"]
            empty = [expr for _, expr, n in series_per_query(url, broken, start, time.time()) if n == 0]
            assert empty == [target["expr"].replace('$session', '.*')]
        finally:
            prom.terminate()
            prom.wait(timeout=30)
            log.close()
