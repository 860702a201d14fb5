"""WOSAC realism-metric configurations (2025 sim-agents and 2024), as plain data.

The numbers are the official challenge configs (`challenge_2025_sim_agents_config.textproto`,
`challenge_2024_config.textproto`): histogram ranges, bin counts, pseudocounts, per-step independence and
meta-metric weights. Bernoulli terms use the proto's default pseudocount of 0.001.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Field order of the official SimAgentMetrics likelihoods and the bucket each one belongs to.
FEATURE_NAMES = (
    "linear_speed",
    "linear_acceleration",
    "angular_speed",
    "angular_acceleration",
    "distance_to_nearest_object",
    "collision_indication",
    "time_to_collision",
    "distance_to_road_edge",
    "offroad_indication",
    "traffic_light_violation",
)
BUCKETS = {
    "kinematic": FEATURE_NAMES[0:4],
    "interactive": FEATURE_NAMES[4:7],
    "map_based": FEATURE_NAMES[7:10],
}
BERNOULLI_PSEUDOCOUNT = 0.001


@dataclass(frozen=True)
class FeatureConfig:
    """One likelihood term. Bernoulli terms are two-bin histograms over [-0.5, 1.5]."""

    min_val: float
    max_val: float
    num_bins: int
    pseudocount: float
    weight: float
    independent_timesteps: bool = True


@dataclass(frozen=True)
class MetricConfig:
    name: str
    features: dict[str, FeatureConfig]

    def weight(self, feature: str) -> float:
        return self.features[feature].weight


def _hist(lo: float, hi: float, bins: int, weight: float) -> FeatureConfig:
    return FeatureConfig(min_val=lo, max_val=hi, num_bins=bins, pseudocount=0.1, weight=weight)


def _bern(weight: float) -> FeatureConfig:
    return FeatureConfig(-0.5, 1.5, 2, BERNOULLI_PSEUDOCOUNT, weight, independent_timesteps=True)


CONFIG_2025 = MetricConfig(
    name="2025",
    features={
        "linear_speed": _hist(0.0, 25.0, 10, 0.05),
        "linear_acceleration": _hist(-12.0, 12.0, 11, 0.05),
        "angular_speed": _hist(-0.628, 0.628, 11, 0.05),
        "angular_acceleration": _hist(-3.14, 3.14, 11, 0.05),
        "distance_to_nearest_object": _hist(-5.0, 40.0, 10, 0.10),
        "collision_indication": _bern(0.25),
        "time_to_collision": _hist(0.0, 5.0, 10, 0.10),
        "distance_to_road_edge": _hist(-20.0, 40.0, 10, 0.05),
        "offroad_indication": _bern(0.25),
        "traffic_light_violation": _bern(0.05),
    },
)

# 2024: same estimators; road-edge distance weighs 0.10 and there is no traffic-light term.
CONFIG_2024 = MetricConfig(
    name="2024",
    features={
        **CONFIG_2025.features,
        "distance_to_road_edge": replace(CONFIG_2025.features["distance_to_road_edge"], weight=0.10),
        "traffic_light_violation": replace(CONFIG_2025.features["traffic_light_violation"], weight=0.0),
    },
)

CONFIGS = {"2025": CONFIG_2025, "2024": CONFIG_2024}


def get_config(name: str | MetricConfig) -> MetricConfig:
    """The named config ("2025" or "2024"); a MetricConfig passes through."""
    if isinstance(name, MetricConfig):
        return name
    if str(name) not in CONFIGS:
        raise ValueError(f"unknown realism config {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[str(name)]
