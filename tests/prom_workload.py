"""A short RL job and a short serving session on the Ray cluster at RAY_ADDRESS (a driver process of its own, as a
`ray job submit` entrypoint would be), so that every series the Grafana dashboard plots gets data.

    RAY_ADDRESS=127.0.0.1:PORT python tests/prom_workload.py WORKDIR SCENARIO_TFRECORD
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
REPO = Path(__file__).resolve().parents[1]


def main(work: Path, scenario: Path) -> None:
    from ray import serve

    from cluster.rft import RFTConfig, train
    from drivetune.client import SimAgentsClient
    from drivetune.config import load_config
    from drivetune.ray_runtime import ray_session
    from drivetune.tfrecord import read_records
    from rollout_helpers import rft_data
    from serve_stack import start_service

    data = rft_data(work / "data")
    overrides = [f"init={data / 'bc'}", f"run_dir={work / 'run'}", f"data.shards={data / 'shards'}",
                 "data.eval_fraction=0.4", "max_iters=2", "scenes_per_iter=2", "group_size=3", "pool.num_workers=2",
                 "pool.num_cpus=0.5", "learner.num_cpus=1", "learner.epochs=1", "checkpoint_every=3", "sampler.k=8"]
    cfg = load_config(RFTConfig, REPO / "configs" / "rft_grbo_micro.yaml", overrides).validate()
    with ray_session(os.environ["RAY_ADDRESS"], log_to_driver=False):
        records = train(cfg, progress=False)
        print(f"rl: {len(records)} iterations", flush=True)
        stack = start_service(scenario, work, name="prom")
        payload = next(read_records(scenario))[1]
        with SimAgentsClient(stack.url) as client:
            deadline = time.monotonic() + 20  # steps across several scrapes: rates need two samples
            steps = 0
            while time.monotonic() < deadline:
                session = client.create_session(scenario_bytes=payload, external_ids=[])  # the policy drives all
                for _ in range(8):
                    session.step()
                    steps += 1
                session.close()
        print(f"serve: {steps} steps", flush=True)
        serve.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
