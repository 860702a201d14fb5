"""The RL loop (`cluster.rft.train`) under actor deaths: a rollout worker killed mid-iteration is restarted and the
run ends bit-identical to an undisturbed one (every group exactly once); a killed learner makes `train` raise, and
a rerun on the same run directory resumes from the last checkpoint and ends bit-identical too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ray.exceptions import RayActorError

from cluster.rft import RFTConfig, train
from drivetune.checkpoint import read_meta
from drivetune.config import load_config
from rollout_workers import RolloutWorker
from rollout_helpers import rft_data
from trainer.run_directory import RunDirectory
from trainer.learner import Learner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return rft_data(tmp_path_factory.mktemp("rl_ft"))


def _config(data: Path, run_dir: Path) -> RFTConfig:
    base = [f"init={data / 'bc'}", f"run_dir={run_dir}", f"data.shards={data / 'shards'}", "data.eval_fraction=0.4",
            "max_iters=2", "scenes_per_iter=2", "group_size=3", "pool.num_workers=2", "pool.num_cpus=0.5",
            "pool.max_restarts=2", "learner.num_cpus=1", "learner.epochs=1", "checkpoint_every=1", "sampler.k=8"]
    return load_config(RFTConfig, REPO / "configs" / "rft_grbo_micro.yaml", base).validate()


@pytest.fixture(scope="module")
def undisturbed(ray_local, data, tmp_path_factory) -> tuple[list[dict], str]:
    """Two undisturbed iterations: their records and the final weights' sha256."""
    run_dir = tmp_path_factory.mktemp("rl_ft_straight")
    records = train(_config(data, run_dir), progress=False)
    return records, read_meta(RunDirectory(run_dir).latest())["weights_sha256"]


def _dying_worker(marker: Path) -> type[RolloutWorker]:
    """A RolloutWorker (defined here, so Ray ships it by value) whose process exits in its first `generate` of
    policy version >= 1 (iteration 2) — once in the whole pool (an O_EXCL marker file), so the restart lives."""

    class DyingWorker(RolloutWorker):
        def generate(self, scenes, group_size, sampler, seed, expected_version=None, **options):
            if self.version >= 1:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                except FileExistsError:
                    pass
            return super().generate(scenes, group_size, sampler, seed, expected_version, **options)

    return DyingWorker


def _dying_learner(marker: Path) -> type[Learner]:
    """A Learner whose process exits at the start of its second `update` (once: an O_EXCL marker file)."""

    class DyingLearner(Learner):
        def update(self, batches, scenes):
            if self.iteration >= 1:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                except FileExistsError:
                    pass
            return super().update(batches, scenes)

    return DyingLearner


@pytest.mark.slow
def test_rollout_worker_killed_mid_iteration_changes_nothing(ray_local, data, undisturbed, tmp_path):
    straight, sha = undisturbed
    marker = tmp_path / "worker_died"
    records = train(_config(data, tmp_path / "run"), progress=False, worker_cls=_dying_worker(marker))
    assert marker.exists()  # a worker process did exit in iteration 2
    assert [r["rollout_worker_restarts"] for r in records] == [0, 1]  # ... and the pool saw it once
    assert [r["iteration"] for r in records] == [1, 2] and all(r["groups"] == 2 for r in records)
    assert [r["reward"] for r in records] == [r["reward"] for r in straight]  # the same groups, each once
    assert read_meta(RunDirectory(tmp_path / "run").latest())["weights_sha256"] == sha


@pytest.mark.slow
def test_learner_killed_mid_run_resumes_bit_identical(ray_local, data, undisturbed, tmp_path):
    straight, sha = undisturbed
    marker = tmp_path / "learner_died"
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(RayActorError):
        train(_config(data, run.root), progress=False, learner_cls=_dying_learner(marker))
    assert marker.exists()
    assert [m["iteration"] for m in run.read_metrics()] == [1]  # iteration 2 never finished
    assert read_meta(run.latest())["iteration"] == 1
    rest = train(_config(data, run.root), progress=False)  # resumes at iteration 2
    assert [r["iteration"] for r in rest] == [2] and rest[0]["reward"] == straight[1]["reward"]
    assert [m["iteration"] for m in run.read_metrics()] == [1, 2]
    assert read_meta(run.latest())["weights_sha256"] == sha
