"""The config of behaviour-cloning pretraining (`cluster.pretrain`, `configs/pretrain_*.yaml`) and the check that its
resource request fits the cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from drivetune.config import ConfigError
from drivetune.model import ModelConfig


@dataclass
class DataConfig:
    shards: str = ""  # shard directory (drivetune ingest / synth output)
    vocab: str = ""  # motion vocabulary file (drivetune vocab build)
    eval_fraction: float = 0.1  # share of scenes held out for evaluation (drivetune.scene_sampling: id hash)
    fraction: float = 1.0  # train on this stable share of the training split (by a second id hash)
    shuffle_buffer: int = 64  # scenes in each worker's local shuffle buffer (0: stream order)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0
    label_smoothing: float = 0.1  # SMART / CAT-K BC


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    batch_size: int = 4  # scenes per worker per step
    max_steps: int = 200
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: evaluate only at the end
    eval_scenes: int = 32  # at most this many held-out scenes per evaluation
    eval_rollouts: int = 4  # sampled rollouts per scene for minADE
    eval_top_k: int = 5  # top-k sampling for those rollouts
    token_noise_k: int = 0  # >1: replace input tokens by one of their k nearest tokens ...
    token_noise_prob: float = 0.0  # ... with this probability (targets stay clean)
    seed: int = 0
    resume: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> "PretrainConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"pretrain config: {msg}")

        need(self.num_workers >= 1, f"num_workers must be >= 1 (got {self.num_workers})")
        need(self.cpus_per_worker > 0, f"cpus_per_worker must be > 0 (got {self.cpus_per_worker})")
        need(self.batch_size >= 1 and self.max_steps >= 1, "batch_size and max_steps must be >= 1")
        need(self.log_every >= 1 and self.checkpoint_every >= 1, "log_every and checkpoint_every must be >= 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        need(0.0 <= self.data.eval_fraction < 1.0, f"data.eval_fraction must be in [0, 1) ({self.data.eval_fraction})")
        need(0.0 < self.data.fraction <= 1.0, f"data.fraction must be in (0, 1] ({self.data.fraction})")
        need(self.data.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0 ({self.data.shuffle_buffer})")
        need(self.eval_scenes >= 1, f"eval_scenes must be >= 1 ({self.eval_scenes})")
        need(self.token_noise_k != 1 and self.token_noise_k >= 0, "token_noise_k must be 0 (off) or >= 2")
        need(0.0 <= self.token_noise_prob <= 1.0, "token_noise_prob must be in [0, 1]")
        need(self.eval_rollouts >= 1 and self.eval_top_k >= 1, "eval_rollouts and eval_top_k must be >= 1")
        need(bool(self.data.shards) and Path(self.data.shards).is_dir(), f"data.shards {self.data.shards!r} is not a dir")
        need(bool(self.data.vocab) and Path(self.data.vocab).is_file(), f"data.vocab {self.data.vocab!r} is not a file")
        self.model.resolved()
        return self


def check_resources(cfg: PretrainConfig, resources: dict[str, float]) -> None:
    """Raise ConfigError if the request cannot fit the cluster (Ray Train would wait forever). One CPU is kept free
    for Ray Data's read tasks."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    want = cfg.num_workers * cfg.cpus_per_worker
    if want > cpus - 1:
        raise ConfigError(f"pretrain asks for {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU = {want} CPUs, "
                          f"but the cluster has {cpus:g} and 1 must stay free for Ray Data; lower num_workers or "
                          f"cpus_per_worker")
    if cfg.use_gpu and gpus < cfg.num_workers:
        raise ConfigError(f"pretrain asks for {cfg.num_workers} GPU workers but the cluster has {gpus:g} GPUs")
