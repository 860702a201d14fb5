"""`ServeConfig`: the simulation service's settings (the `args` of the Serve application, see configs/serve.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Per-replica limits and deployment options. The checkpoint and its policy version are the deployment's
    `user_config` ({checkpoint, version}), so they can be swapped without restarting replicas."""

    replicas: int = 1  # replicas of the deployment (sessions are routed by the x-session-id header)
    replica_cpus: float = 1.0  # CPUs reserved per replica
    max_sessions: int = 64  # open sessions per replica; beyond: 429 with Retry-After
    session_ttl_s: float = 300.0  # idle sessions expire after this many seconds
    max_steps: int = 160  # steps per session (16 = one 8 s WOSAC rollout; the model's window slides beyond)
    max_batch_size: int = 16  # concurrent steps of different sessions run as one forward
    batch_wait_timeout_s: float = 0.25  # longest wait for the active sessions' steps to fill a batch
    active_window_s: float = 2.0  # a session is active (a batch waits for it) if it stepped this recently
    max_ongoing_requests: int = 32  # per replica; raised to max_batch_size if lower
    max_body_bytes: int = 16 * 1024 * 1024  # request size cap (413)
    max_rollouts: int = 64  # POST /v1/rollouts: rollouts per request
    scenario_store: str = ""  # TFRecords or shard directory for `scenario_id` requests ("" = none)
    api_key_env: str = ""  # environment variable holding the API key ("" = no key required)
    device: str = "cpu"

    def validate(self) -> "ServeConfig":
        positive = ("replicas", "max_sessions", "max_steps", "max_batch_size", "max_ongoing_requests",
                    "max_body_bytes", "max_rollouts")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        if self.session_ttl_s <= 0 or self.batch_wait_timeout_s < 0 or self.replica_cpus < 0 or \
                self.active_window_s <= 0:
            bad.append("session_ttl_s > 0, active_window_s > 0, batch_wait_timeout_s >= 0 and replica_cpus >= 0 "
                       "are required")
        if bad:
            raise ValueError(f"serve config: bad values {bad} (counts and sizes must be >= 1)")
        return self
