"""WOSAC realism metrics (2025 / 2024 configs) in batched PyTorch, plus per-rollout RL rewards and submission I/O."""

from drivetune.realism.batch import RolloutError, Rollouts
from drivetune.realism.challenge import CONFIG_2024, CONFIG_2025, get_config
from drivetune.realism.metrics import METRIC_FIELDS, mean_metrics, realism_metrics
from drivetune.realism.rewards import RolloutRewards, rollout_rewards

__all__ = ["CONFIG_2024", "CONFIG_2025", "METRIC_FIELDS", "RolloutError", "RolloutRewards", "Rollouts", "get_config",
           "mean_metrics", "realism_metrics", "rollout_rewards"]
