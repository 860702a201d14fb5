"""Run by tests/test_fault_tolerance.py in its own process (the session's Ray stays untouched): a two-node
`ray.cluster_utils.Cluster` (1 CPU each), a RolloutPool with one worker per node, and the second node removed after
the first group. Writes the groups to OUT.npz and prints a JSON report as the last line."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

from rollout_helpers import COMPARED, GROUP, SAMPLER, SEED, micro_policy
from rollout_workers import PoolConfig, RolloutPool, RolloutWorker

REPO = Path(__file__).resolve().parents[1]
WOMD = REPO.parent / "shared" / "data" / "womd"


class NodeWorker(RolloutWorker):
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def main(out: str) -> None:
    scenes, weights, spec = micro_policy([WOMD / "motion_data_one_scenario.tfrecord",
                                          WOMD / "womd_scenario_input.tfrecord"])
    temp_dir = tempfile.mkdtemp(prefix="dt_nl_", dir="/tmp")  # short: Ray's socket path length limit
    node_args = {"num_cpus": 1, "temp_dir": temp_dir, "object_store_memory": 200 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    second = cluster.add_node(**node_args)
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
    main(sys.argv[1])
