"""Shared fixtures: real WOMD sample data from ../shared, one session-scoped local Ray."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WOMD_DIR = SHARED / "data" / "womd"
ORACLE_DIR = SHARED / "oracle"
SCENARIO_637 = WOMD_DIR / "motion_data_one_scenario.tfrecord"
SCENARIO_EE5 = WOMD_DIR / "womd_scenario_input.tfrecord"
TEST_SUBMISSION = WOMD_DIR / "test_submission.binproto"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (a checkout needs ../shared beside it)")
    return path


@pytest.fixture(scope="session")
def womd_637() -> Path:
    return _need(SCENARIO_637)


@pytest.fixture(scope="session")
def womd_ee5() -> Path:
    return _need(SCENARIO_EE5)


@pytest.fixture(scope="session")
def test_submission_path() -> Path:
    return _need(TEST_SUBMISSION)


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    return _need(ORACLE_DIR)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A private local Ray (2 CPUs, no dashboard, 512 MiB object store) shared by the whole session."""
    import ray
    import torch

    torch.set_num_threads(1)
    temp_dir = Path("/tmp") / f"dt_ray_{os.getpid()}"  # short path: Ray's socket names have a length limit
    ray.init(
        address="local",
        _temp_dir=str(temp_dir),
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 1024 * 1024,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}},
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
