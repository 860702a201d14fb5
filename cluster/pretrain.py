"""`drivetune train pretrain`: behaviour-cloning (next-token) pretraining on Ray Train.

The driver validates the config and the resource request, builds a streaming Ray Dataset from the Parquet shards
(train / eval split by scenario-id hash, tokenization in Ray Data tasks: `cluster.pretrain_data`) and runs a
`TorchTrainer` (DDP over `num_workers` CPU or GPU workers) whose loop lives in `cluster.pretrain_loop`. The run directory holds numbered
checkpoints, `metrics.jsonl` and `config.json`; a rerun with the same `run_dir` resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivetune.checkpoint import CheckpointError, check_model_version, read_meta, run_checkpoints
from drivetune.config import ConfigError, load_config, to_dict
from drivetune.ray_runtime import ray_session, set_process_env, verbose_ray
from drivetune.model import ModelConfig

log = logging.getLogger("drivetune.pretrain")


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


@contextmanager
def follow_steps(metrics_path: Path, total: int, enabled: bool = True, poll_s: float = 1.0) -> Iterator[None]:
    """While the block runs, follow the metrics that rank 0 appends to the run directory (the driver reads it, as it
    reads the checkpoints): a progress bar of training steps and a log line per record. Workers' own output stays in
    Ray's logs unless `--verbose`."""
    from drivetune.progress import progress

    offset = metrics_path.stat().st_size if metrics_path.is_file() else 0  # a resumed run's earlier records
    bar, done, stop = progress(total, "pretrain", unit="step", enabled=enabled), 0, threading.Event()

    def poll() -> None:
        nonlocal offset, done
        if not metrics_path.is_file():
            return
        with metrics_path.open() as fh:
            fh.seek(offset)
            for line in iter(fh.readline, ""):
                if not line.endswith("\n"):
                    break  # a record still being written: read it next time
                offset += len(line)
                record = json.loads(line)
                step = int(record.get("step", done))
                bar.update(max(step - done, 0))
                done = max(done, step)
                log.info("step %d/%d %s", step, total, " ".join(f"{k}={v:.4g}" for k, v in record.items()
                                                                 if isinstance(v, float)))

    def loop() -> None:
        while not stop.wait(poll_s):
            poll()

    thread = threading.Thread(target=loop, name="pretrain-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()
        bar.close()


def fit(cfg: PretrainConfig, progress: bool = True) -> Any:
    """Run pretraining on the connected Ray cluster (a progress bar of its steps unless not `progress`); returns the
    Ray Train Result."""
    import ray
    from ray.data import DataContext
    from ray.train import CheckpointConfig, DataConfig as RayDataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.pretrain_data import build_datasets
    from cluster.pretrain_loop import train_loop
    from trainer.checkpoints import RunDirectory

    cfg.validate()
    check_resources(cfg, ray.cluster_resources())
    run_dir = Path(cfg.run_dir).resolve()
    cfg.run_dir = str(run_dir)
    cfg.data.shards, cfg.data.vocab = str(Path(cfg.data.shards).resolve()), str(Path(cfg.data.vocab).resolve())
    RunDirectory(run_dir).write_config(to_dict(cfg))
    DataContext.get_current().enable_progress_bars = verbose_ray()  # Ray Data's per-operator bars: --verbose only
    datasets, n_train, n_eval = build_datasets(cfg.data.shards, cfg.data.vocab, cfg.data.eval_fraction,
                                               cfg.data.fraction, cfg.eval_scenes)
    if not n_eval:
        log.warning("no held-out scenes (eval_fraction %.2f): evaluating on training scenes", cfg.data.eval_fraction)
    log.info("pretrain: %d train / %d eval scenes, %d workers (%s), run dir %s", n_train, n_eval, cfg.num_workers,
             "GPU" if cfg.use_gpu else "CPU", run_dir)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="pretrain", storage_path=str(run_dir / "ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
        datasets=datasets,
        dataset_config=RayDataConfig(datasets_to_split=["train"]),
    )
    with follow_steps(run_dir / "metrics.jsonl", cfg.max_steps, enabled=progress):
        return trainer.fit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (e.g. configs/pretrain_micro.yaml)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. max_steps=50 model.size=nano")


def check_resumable(cfg: PretrainConfig) -> None:
    """A run directory to resume whose latest checkpoint is of another model version: ConfigError (exit 2) before
    Ray starts."""
    found = run_checkpoints(cfg.run_dir) if cfg.resume else []
    if found:
        try:
            check_model_version(found[-1][1], read_meta(found[-1][1]))
        except CheckpointError as exc:
            raise ConfigError(f"{exc}; or start a new run_dir (or resume=false)") from None


def run(args: argparse.Namespace) -> int:
    set_process_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a ConfigError (bad YAML, key, value or resource request) reaches drivetune.cli: `... error: ...`, exit 2
    cfg = load_config(PretrainConfig, args.config, args.overrides).validate()
    check_resumable(cfg)
    from ray.train import TrainingFailedError

    # Attach to --address or RAY_ADDRESS (set under `ray job submit`), else a private local Ray. Its dashboard
    # (loopback only) serves the State API that Ray Train's placement-group cleaner polls; without it that cleaner
    # logs a warning every few seconds and cannot clean up.
    try:
        with ray_session(args.address or os.environ.get("RAY_ADDRESS"), dashboard=True, log_to_driver=verbose_ray()):
            result = fit(cfg)
    except TrainingFailedError as exc:
        log.error("pretraining failed: %s", exc)
        return 1
    log.info("done: metrics %s; checkpoints in %s", result.metrics, Path(cfg.run_dir) / "checkpoints")
    return 0
