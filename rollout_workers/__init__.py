"""Ray rollout actors: `RolloutWorker` (a policy copy that rolls groups of closed-loop rollouts), `RolloutPool`
(N workers, streaming groups with `ray.wait`, restarts, weight broadcast) and `RolloutBatch` (one group, numpy).

API:
  - `PolicySpec(model_config, vocab, device="cpu", rewards=True, reward_agents="evaluated"|"all", metric_config)`;
    `PolicySpec.from_model(model)`, `PolicySpec.from_checkpoint(dir)`.
  - `RolloutWorker(spec)`: `set_weights(numpy_state_dict, version)`, `generate(scenes, group_size, sampler, seed,
    expected_version=None, **simulate_options) -> list[RolloutBatch]` (one per scene).
  - `RolloutPool(spec, PoolConfig(num_workers, num_cpus, num_gpus, max_restarts, scenes_per_task))`:
    `set_weights(state, version, wait=True) -> seconds`; `generate(scenes, group_size, sampler, seed, **options)`
    yields one `RolloutBatch` per scene in completion order, each exactly once; `shutdown()`.
Never imports `trainer` (weights arrive as data).
"""

from rollout_workers.batch import RolloutBatch
from rollout_workers.pool import PoolConfig, RolloutPool
from rollout_workers.worker import PolicySpec, RolloutWorker, StaleWeightsError

__all__ = ["PolicySpec", "PoolConfig", "RolloutBatch", "RolloutPool", "RolloutWorker", "StaleWeightsError"]
