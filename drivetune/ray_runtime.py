"""Ray for drivetune processes: the environment every Ray process needs, and a private local Ray when no cluster is
given (its own temp dir, loopback only, shut down and removed on exit)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# One torch thread per process (2 per process on 2 cores made actor rounds 14x slower), no usage-stats phone-home,
# every socket on 127.0.0.1.
VERBOSE_ENV = "DRIVETUNE_VERBOSE"  # `drivetune ... --verbose` sets it (drivetune.cli)
WORKER_ENV = {"OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def set_process_env() -> None:
    """Give this process the Ray environment (keeps values the user set)."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
                log_to_driver: bool = True, object_store_bytes: int | None = None) -> Iterator[Any]:
    """Yield the `ray` module attached to `address`, or to a private local Ray started here. A Ray this process
    already runs is used as it is and left running."""
    import ray

    set_process_env()
    if ray.is_initialized():
        yield ray
        return
    env = {"env_vars": WORKER_ENV}
    quiet = {} if verbose_ray() else {"logging_level": logging.ERROR}  # no start-up banner or token notice
    temp_dir = None
    try:  # Ctrl-C (or a failure) half-way through start-up still stops what started and removes the temp dir
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver, **quiet)
        else:
            temp_dir = tempfile.mkdtemp(prefix="dt_ray_", dir="/tmp")  # short: Ray's socket paths have a length limit
            ray.init(address="local", _temp_dir=temp_dir, num_cpus=num_cpus, include_dashboard=dashboard,
                     dashboard_host="127.0.0.1", log_to_driver=log_to_driver,
                     object_store_memory=object_store_bytes, runtime_env=env, **quiet)
        yield ray
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def verbose_ray() -> bool:
    """Whether Ray's own start-up and worker logs should reach the terminal (`drivetune ... --verbose`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def current_node_id() -> str:
    """The Ray node the calling worker or actor runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()
