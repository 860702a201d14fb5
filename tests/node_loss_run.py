"""Run by tests/integration/test_fault_tolerance.py in its own process (the session's Ray stays untouched): a two-node
`ray.cluster_utils.Cluster` (1 CPU each), a RolloutPool with one worker per node, and the second node removed after
the first group. Writes the groups to OUT.npz and prints a JSON report as the last line."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Everything Ray writes by default under /tmp/ray (the "current cluster" address file too) goes to a private dir.
PRIVATE = tempfile.mkdtemp(prefix="dt_nl_", dir="/tmp")  # short: Ray's socket path length limit
os.environ["RAY_TMPDIR"] = PRIVATE
os.makedirs(os.path.join(PRIVATE, "ray"))

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from ray_head import free_ports  # noqa: E402
from rollout_helpers import COMPARED, GROUP, SAMPLER, SEED, micro_policy  # noqa: E402
from rollout_workers import PoolConfig, RolloutPool, RolloutWorker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WOMD = REPO.parent / "shared" / "data" / "womd"


class NodeWorker(RolloutWorker):
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def main(out: str) -> None:
    scenes, weights, spec = micro_policy([WOMD / "motion_data_one_scenario.tfrecord",
                                          WOMD / "womd_scenario_input.tfrecord"])
    gcs, agent_1, agent_2 = free_ports(3)
    node_args = {"num_cpus": 1, "temp_dir": os.path.join(PRIVATE, "ray"), "object_store_memory": 200 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False, "gcs_server_port": gcs,
                                                            "dashboard_agent_listen_port": agent_1})
    second = cluster.add_node(**node_args, dashboard_agent_listen_port=agent_2)
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}})
    pool = RolloutPool(spec, PoolConfig(num_workers=2, num_cpus=1, max_restarts=1, restart_timeout_s=5,
                                        task_timeout_s=20), worker_cls=NodeWorker)
    try:
        pool.set_weights(weights, 1)
        on_second = [ray.get(w.node_id.remote()) == second.node_id for w in pool.workers]
        stream = pool.generate(scenes, GROUP, SAMPLER, SEED)
        got = [next(stream)]
        cluster.remove_node(second)
        got += list(stream)
        report = {"order": [b.scenario_id for b in got], "removed_node_had_a_worker": sum(on_second) == 1,
                  "nodes_left": sum(n["Alive"] for n in ray.nodes()), "gave_up": pool.alive.count(False),
                  "restarts_seen": pool.restarts_seen, "versions": sorted({b.policy_version for b in got})}
        np.savez(out, **{f"{b.scenario_id}/{name}": getattr(b, name) for b in got for name in COMPARED})
    finally:
        pool.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    finally:
        shutil.rmtree(PRIVATE, ignore_errors=True)
