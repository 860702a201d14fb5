"""`drivetune train rft` end to end on the local Ray: 2 rollout workers + the learner actor, micro model, each
algorithm; a stopped run resumes at the next iteration and ends bit-identical to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.plot import plot_run
from cluster.rft import RFTConfig, check_resources, learner_threads, train
from drivetune.checkpoint import read_meta
from drivetune.config import ConfigError, load_config
from rollout_helpers import rft_data
from trainer.run_directory import RunDirectory

REPO = Path(__file__).resolve().parents[2]
PHASES = ("seconds_rollout", "seconds_update", "seconds_broadcast", "seconds_reward_worker")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return rft_data(tmp_path_factory.mktemp("rft"))


def _config(data: Path, algo: str, run_dir: Path, *overrides: str) -> RFTConfig:
    base = [f"init={data / 'bc'}", f"run_dir={run_dir}", f"data.shards={data / 'shards'}", "data.eval_fraction=0.4",
            "max_iters=2", "scenes_per_iter=2", "group_size=3", "pool.num_workers=2", "pool.num_cpus=0.5",
            "learner.num_cpus=1", "learner.epochs=1", "checkpoint_every=1", "sampler.k=8"]
    return load_config(RFTConfig, REPO / "configs" / f"rft_{algo}_micro.yaml", base + list(overrides)).validate()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["mpo", "grpo"])
def test_rft_runs_two_iterations(ray_local, data, tmp_path, algo):
    records = train(_config(data, algo, tmp_path / algo, "eval_every=2", "eval_scenes=1", "eval_rollouts=2"),
                    progress=False)
    assert [r["iteration"] for r in records] == [1, 2]
    assert [r["policy_version"] for r in records] == [1, 2]
    for r in records:
        assert r["logp_diff_max"] <= 1e-4  # the learner reproduces the rollouts' behaviour log-probs
        assert r["policy_version_lag"] == 0 and r["groups"] == 2
        assert r["learner_threads"] == 2  # synchronous: its CPU and the two idle workers' 0.5 each
        assert 0 <= r["collision_rate"] <= 1 and 0 <= r["group_meta"] <= 1 and r["kl_k3"] >= 0
        assert all(r[k] > 0 for k in PHASES) and r["grad_norm"] > 0
    assert records[0]["kl_k3"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference
    assert records[1]["kl_k3"] > 0  # ... and moves away from it
    assert "eval_metametric" in records[1] and "eval_metametric" not in records[0]
    if algo == "mpo":  # alpha: auto = the mean reward of the starting policy on its first batch
        assert records[0]["alpha"] == pytest.approx(records[0]["reward"]) == records[1]["alpha"]
    run = RunDirectory(tmp_path / algo)
    assert [m["iteration"] for m in run.read_metrics()] == [1, 2]
    meta = read_meta(run.latest())
    assert meta["stage"] == "rft" and meta["policy_version"] == 2 and meta["iteration"] == 2
    assert meta["reference"]["path"] == str(data / "bc") and meta["parent"] == str(run.checkpoint_path(1))
    assert len(meta["weights_sha256"]) == 64 and meta["weights_sha256"] != meta["reference"]["weights_sha256"]
    png = plot_run(run.root)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_grbo_resume_is_bit_identical_to_an_uninterrupted_run(ray_local, data, tmp_path):
    straight = train(_config(data, "grbo", tmp_path / "straight", "max_iters=3"), progress=False)
    first = train(_config(data, "grbo", tmp_path / "stopped"), progress=False)  # stops after iteration 2
    rest = train(_config(data, "grbo", tmp_path / "stopped", "max_iters=3"), progress=False)
    assert [r["iteration"] for r in first + rest] == [1, 2, 3]
    assert [r["policy_version"] for r in first + rest] == [1, 2, 3]
    assert all(r["human_nll"] > 0 and r["logp_diff_max"] <= 1e-4 for r in straight)
    a = read_meta(RunDirectory(tmp_path / "straight").latest())
    b = read_meta(RunDirectory(tmp_path / "stopped").latest())
    assert a["weights_sha256"] == b["weights_sha256"]
    assert rest[0]["reward"] == straight[2]["reward"]  # the same rollouts: same weights, seeds and scenes


def test_rft_config_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        _config(data, "grbo", tmp_path, "algo.gamma=1")
    with pytest.raises(ConfigError, match="group_size"):
        _config(data, "grbo", tmp_path, "group_size=1")
    with pytest.raises(ConfigError, match="algo.name"):
        _config(data, "grbo", tmp_path, "algo.name=ppo")
    with pytest.raises(ConfigError, match="init"):
        _config(data, "grbo", tmp_path, "init=")
    with pytest.raises(ConfigError, match="CPUs"):
        check_resources(_config(data, "grbo", tmp_path, "pool.num_workers=4"), {"CPU": 2.0})


def test_learner_threads_borrow_only_idle_workers_on_its_node(data, tmp_path):
    sync = _config(data, "grbo", tmp_path, "pool.num_workers=3", "pool.num_cpus=1", "learner.num_cpus=2")
    assert learner_threads(sync, "a", ["a", "b", "a"]) == 4  # its 2 CPUs + the 2 workers on node a
    assert learner_threads(sync, "c", ["a", "b", "a"]) == 2  # no worker on its node
    off = _config(data, "grbo", tmp_path, "pool.num_workers=3", "pool.num_cpus=1", "learner.num_cpus=2",
                  "max_staleness=1")
    assert learner_threads(off, "a", ["a", "a", "a"]) == 2  # one-step-off: the workers run during the update
    fixed = _config(data, "grbo", tmp_path, "learner.threads=3", "learner.num_cpus=1")
    assert learner_threads(fixed, "a", ["a", "a"]) == 3
    with pytest.raises(ConfigError, match="threads"):
        _config(data, "grbo", tmp_path, "learner.threads=-1")


@pytest.mark.slow
def test_one_step_off_trains_on_groups_one_version_behind(ray_local, data, tmp_path):
    records = train(_config(data, "grpo", tmp_path / "off", "max_iters=3", "max_staleness=1"), progress=False)
    assert [r["policy_version_lag"] for r in records] == [0, 1, 1]  # the next rollouts overlap the current update
    assert all(r["learner_threads"] == 1 for r in records)  # the workers are busy during the update: its CPU only
    assert [r["policy_version"] for r in records] == [1, 2, 3]
    assert all(r["logp_diff_max"] <= 1e-4 for r in records)  # the learner kept the version that rolled them
