"""`ray job submit` against a running cluster with token auth on: a private `ray start --head` on loopback, tiny
synthetic data made here (synth -> ingest -> vocab build), a 4-step pretraining job, SUCCEEDED, its artifacts and
`ray job logs`; a client without the token is refused. The head is stopped by PID (tests/ray_head.py)."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from ray_head import BIN, RayHead  # noqa: E402

from drivetune.checkpoint import load_checkpoint  # noqa: E402
from trainer.run_directory import RunDirectory  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    with RayHead(num_cpus=2) as h:
        yield h


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, head) -> Path:
    """6 synthetic scenes -> one shard -> 64/32/32-token vocabularies, through the real CLI commands."""
    root = tmp_path_factory.mktemp("job_data")
    env = {**head.env, "PYTHONPATH": str(REPO)}
    env.pop("RAY_AUTH_TOKEN_PATH")  # ingest starts its own private Ray
    steps = [("synth", "--num-scenes", "6", "--out", str(root / "synth"), "--seed", "3"),
             ("ingest", str(root / "synth"), "--out", str(root / "shards"), "--shard-size", "6", "--workers", "1",
              "--no-progress"),
             ("vocab", "build", str(root / "shards"), "--out", str(root / "vocab.safetensors"),
              "--sizes", "64", "32", "32", "--eval-scenes", "0")]
    for args in steps:
        done = head.run(sys.executable, "-m", "drivetune.cli", *args, env=env, cwd=REPO)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return root


def _ray(head: RayHead, verb: str, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    """`ray job VERB --address HEAD ARGS...` from the repository root."""
    return head.run(str(BIN / "ray"), "job", verb, "--address", head.address, *args, env=env, cwd=REPO,
                    timeout=timeout)


def _get(head: RayHead, path: str):
    """GET a job-API path with the head's token."""
    request = urllib.request.Request(head.address + path, headers={"Authorization": f"Bearer {head.token}"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def test_clients_without_the_token_are_refused(head, tmp_path):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=30)
    assert err.value.code == 401
    assert isinstance(_get(head, "/api/jobs/"), list)
    # No RAY_AUTH_MODE / token file, and a HOME without ~/.ray/auth_token: `ray job list` must fail.
    bare = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    done = _ray(head, "list", env={**bare, "HOME": str(tmp_path)}, timeout=120)
    assert done.returncode != 0
    assert "auth" in (done.stdout + done.stderr).lower()


def test_pretrain_job_succeeds_with_artifacts_and_logs(head, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    job_id = f"dt-pretrain-{os.getpid()}"
    done = _ray(head, "submit", "--submission-id", job_id, "--working-dir", ".", "--",
                "python", "-m", "drivetune.cli", "train", "pretrain", "--config", "configs/pretrain_micro.yaml",
                f"data.shards={tiny_data / 'shards'}", f"data.vocab={tiny_data / 'vocab.safetensors'}",
                f"run_dir={run_dir}", "max_steps=4", "log_every=2", "checkpoint_every=2", "batch_size=1",
                "data.eval_fraction=0", "eval_scenes=2", "eval_rollouts=1")
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert _get(head, f"/api/jobs/{job_id}")["status"] == "SUCCEEDED"
    logs = _ray(head, "logs", job_id, timeout=120)
    assert logs.returncode == 0 and "done: metrics" in logs.stdout
    assert str(run_dir) in logs.stdout  # the job wrote to the run directory given on its command line
    run = RunDirectory(run_dir)
    assert [step for step, _ in run.checkpoints()] == [2, 4]
    assert [m["step"] for m in run.read_metrics()] == [2, 4]
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 4
    _, meta = load_checkpoint(run.latest())
    assert meta["step"] == 4 and meta["stage"] == "pretrain"
