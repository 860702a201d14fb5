"""Behaviour-cloning (next-token) pretraining on Ray Train (`drivetune train pretrain`; its config:
`cluster.pretrain_config`).

The driver validates the config and the resource request, builds a streaming Ray Dataset from the Parquet shards
(train / eval split by scenario-id hash, tokenization in Ray Data tasks: `cluster.pretrain_data`) and runs a
`TorchTrainer` (DDP over `num_workers` CPU or GPU workers) whose loop lives in `cluster.pretrain_loop`. The run directory holds numbered
checkpoints, `metrics.jsonl` and `config.json`; a rerun with the same `run_dir` resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.data import DataContext
from ray.train import CheckpointConfig, DataConfig as RayDataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.pretrain_config import PretrainConfig, check_resources
from cluster.pretrain_data import build_datasets
from cluster.pretrain_loop import train_loop
from drivetune.checkpoint import CheckpointError, check_model_version, read_meta, run_checkpoints
from drivetune.config import ConfigError, to_dict
from drivetune.progress import progress
from drivetune.ray_runtime import verbose_ray
from trainer.run_directory import RunDirectory

log = logging.getLogger("drivetune.pretrain")


@contextmanager
def follow_steps(metrics_path: Path, total: int, enabled: bool = True, poll_s: float = 1.0) -> Iterator[None]:
    """While the block runs, follow the metrics that rank 0 appends to the run directory (the driver reads it, as it
    reads the checkpoints): a progress bar of training steps and a log line per record. Workers' own output stays in
    Ray's logs unless `--verbose`."""
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


def check_resumable(cfg: PretrainConfig) -> None:
    """A run directory to resume whose latest checkpoint is of another model version: ConfigError (exit 2) before
    Ray starts."""
    found = run_checkpoints(cfg.run_dir) if cfg.resume else []
    if found:
        try:
            check_model_version(found[-1][1], read_meta(found[-1][1]))
        except CheckpointError as exc:
            raise ConfigError(f"{exc}; or start a new run_dir (or resume=false)") from None
