"""`drivetune train pipeline`: an ordered list of stages (pretrain, sft, rft, sft, ...) in one run directory, on one
Ray session (one `ray job submit`).

Each stage trains in `RUN/<NN>-<name>/` with its own config file plus overrides; a stage starts from the previous
stage's final checkpoint (`init`), and an RFT stage's frozen reference is its start. When a stage finishes, its
record (`stage.json`: final checkpoint, policy version, weights hash) is written atomically; a rerun skips finished
stages and resumes the running one (every trainer resumes from its run directory). `drivetune lineage RUN` prints
the chain.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivetune.config import ConfigError, load_config

log = logging.getLogger("drivetune.pipeline")
KINDS = ("pretrain", "sft", "rft")
STAGE_RECORD = "stage.json"


@dataclass
class StageConfig:
    name: str = ""  # unique, used in the stage directory name
    kind: str = ""  # pretrain | sft | rft
    config: str = ""  # the stage's own YAML (e.g. configs/rft_grbo_micro.yaml)
    overrides: list[str] = field(default_factory=list)  # dotted key=value, applied after the pipeline's own
    optimizer: str = "fresh"  # fresh: a new AdamW | carry: the previous stage's AdamW moments (sft / rft stages);
    # the learning-rate schedule is always the stage's own (its config's learner.optim)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/pipeline"
    shards: str = "data/shards"  # passed to every stage as data.shards
    vocab: str = "data/vocab.safetensors"  # pretraining's vocabulary (later stages take it from their init)
    init: str = ""  # start checkpoint when the first stage is not pretraining
    stages: list[StageConfig] = field(default_factory=list)

    def validate(self) -> "PipelineConfig":
        names = [s.name for s in self.stages]
        if not self.stages:
            raise ConfigError("pipeline: no stages")
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"pipeline: stage names must be unique and non-empty, got {names}")
        for i, s in enumerate(self.stages):
            if s.kind not in KINDS:
                raise ConfigError(f"pipeline: stage {s.name!r} kind {s.kind!r} unknown (choose from {KINDS})")
            if not Path(s.config).is_file():
                raise ConfigError(f"pipeline: stage {s.name!r} config {s.config!r} not found")
            if s.optimizer not in ("fresh", "carry") or (s.optimizer == "carry" and s.kind == "pretrain"):
                raise ConfigError(f"pipeline: stage {s.name!r} optimizer {s.optimizer!r}: fresh, or carry for an sft "
                                  "/ rft stage")
            if s.kind == "pretrain" and i > 0:
                raise ConfigError(f"pipeline: pretrain must be the first stage (stage {i} is {s.name!r})")
        if self.stages[0].kind != "pretrain" and not self.init:
            raise ConfigError("pipeline: `init` (a checkpoint) is needed when the first stage is not pretrain")
        return self


def stage_dir(run_dir: str | Path, index: int, stage: StageConfig) -> Path:
    return Path(run_dir) / f"{index:02d}-{stage.name}"


def read_stage_record(directory: Path) -> dict[str, Any] | None:
    path = directory / STAGE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run the stages in order on the connected Ray; returns every stage's record (finished ones are skipped)."""
    from cluster.pretrain import PretrainConfig, fit
    from cluster.rft import RFTConfig, train
    from drivetune.atomic import atomic_write_bytes
    from drivetune.checkpoint import read_meta, resolve_checkpoint

    cfg.validate()
    records, init = [], cfg.init
    for i, stage in enumerate(cfg.stages):
        directory = stage_dir(cfg.run_dir, i, stage)
        done = read_stage_record(directory)
        if done is not None:
            log.info("stage %d %s: finished earlier (%s), skipped", i, stage.name, done["checkpoint"])
            records.append(done)
            init = done["checkpoint"]
            continue
        log.info("stage %d/%d %s (%s) in %s", i + 1, len(cfg.stages), stage.name, stage.kind, directory)
        common = [f"run_dir={directory}", f"data.shards={cfg.shards}"]
        if stage.kind == "pretrain":
            handler = signal.getsignal(signal.SIGINT)
            try:
                fit(load_config(PretrainConfig, stage.config, common + [f"data.vocab={cfg.vocab}", *stage.overrides]),
                    progress=progress)
            finally:  # Ray Train installs its own SIGINT handler and leaves it: Ctrl-C must stop later stages too
                signal.signal(signal.SIGINT, handler)
        else:
            carry = f"learner.carry_optimizer={str(stage.optimizer == 'carry').lower()}"
            rft = load_config(RFTConfig, stage.config, common + [f"init={init}", f"stage={stage.name}", carry,
                                                                  *stage.overrides])
            if (rft.algo.name == "sft") != (stage.kind == "sft"):
                raise ConfigError(f"pipeline: stage {stage.name!r} is {stage.kind} but {stage.config} has "
                                  f"algo.name {rft.algo.name!r}")
            train(rft, progress=progress)
        final = resolve_checkpoint(directory)
        meta = read_meta(final)
        record = {"index": i, "name": stage.name, "kind": stage.kind, "optimizer": stage.optimizer,
                  "checkpoint": str(final), "init": init or None,
                  "reference": meta.get("reference"), "policy_version": int(meta.get("policy_version", 0)),
                  "weights_sha256": meta.get("weights_sha256")}
        atomic_write_bytes(directory / STAGE_RECORD, [json.dumps(record, indent=1).encode()])
        records.append(record)
        init = str(final)
    return records
