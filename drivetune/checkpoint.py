"""Checkpoint format: a directory with `model.safetensors` (weights), `vocab.safetensors` (the motion vocabulary the
model was built with) and `meta.json` (format, model-definition version, model config, vocab hash, weights sha256,
step, metrics, parent, free-form extras). Loading checks the model-definition version (a checkpoint of another
definition is refused, `CheckpointVersionError`), the vocabulary's hash and the weights file's sha256 against the
meta, so a damaged or outdated file is an error naming it, never a silently different model.

Written atomically: everything goes to a temporary sibling directory that is renamed into place. Weights travel
between processes as a dict of numpy arrays (`state_dict_to_numpy` / `load_numpy_state_dict`), which Ray's object
store shares zero-copy. This module is core: rollout workers and services load checkpoints without `trainer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors, save_file

from drivetune.config import from_dict, to_dict
from drivetune.errors import CheckpointError, CheckpointVersionError

if TYPE_CHECKING:  # torch and the model load on first use: reading metadata (`drivetune lineage --help`) stays light
    import torch

    from drivetune.model import BehaviorModel, ModelConfig
    from drivetune.tokenizer import MotionVocab

FORMAT = "drivetune-checkpoint-v1"
WEIGHTS, VOCAB, META = "model.safetensors", "vocab.safetensors", "meta.json"
RUN_CHECKPOINTS = "checkpoints"  # a training run directory keeps its checkpoints here, one `step_NNNNNNNN` each
STEP_DIR = re.compile(r"^step_(\d{8})$")


def state_dict_to_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Parameters and persistent buffers as contiguous CPU numpy arrays (a copy, safe to ship or save)."""
    return {k: v.detach().cpu().contiguous().numpy().copy() for k, v in model.state_dict().items()}


def check_state_dict(state: Mapping[str, torch.Tensor], arrays: Mapping[str, np.ndarray]) -> None:
    """Raise CheckpointError naming the missing, unexpected and mis-shaped entries of `arrays` against `state`."""
    missing, unexpected = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
    bad = [f"{k}: {tuple(arrays[k].shape)} != {tuple(v.shape)}" for k, v in state.items()
           if k in arrays and tuple(arrays[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        raise CheckpointError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                              f"mis-shaped {bad[:5]}")


def load_numpy_state_dict(model: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy numpy arrays (possibly read-only views from the object store) into the model's tensors, in place.
    Raises CheckpointError naming missing, unexpected or mis-shaped entries."""
    import torch

    state = model.state_dict()
    check_state_dict(state, arrays)
    with torch.no_grad():
        for k, v in state.items():
            v.copy_(torch.from_numpy(np.array(arrays[k], copy=True)))


def save_checkpoint(
    directory: str | os.PathLike,
    model: BehaviorModel,
    meta: dict[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write `model` (+ its vocabulary) and metadata to `directory` atomically; replaces an existing checkpoint.
    `meta` may hold step, metrics, parent (path of the checkpoint this one continues) and any JSON-able extras;
    `extra_files` (name -> bytes) are written beside them (e.g. the trainer's optimizer state)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    full = {
        "format": FORMAT,
        "model_version": model.VERSION,
        "model_config": to_dict(model.cfg),
        "vocab_hash": model.vocab_hash,
        "step": int(meta.pop("step", 0)),
        "metrics": meta.pop("metrics", {}),
        "parent": meta.pop("parent", None),
        "created": time.time(),
        **meta,
    }
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        save_file(state_dict_to_numpy(model), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        full["weights_sha256"] = hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest()
        model.vocab.save(tmp / VOCAB)
        for name, payload in (extra_files or {}).items():
            if Path(name).name != name or name in (WEIGHTS, VOCAB, META):
                raise CheckpointError(f"invalid extra checkpoint file name {name!r}")
            (tmp / name).write_bytes(payload)
        (tmp / META).write_text(json.dumps(full, indent=2, sort_keys=True, default=_json_default))
        if directory.exists():
            old = directory.parent / f".{directory.name}.old.{os.getpid()}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata; raises CheckpointError if missing or of another format."""
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {META})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} != {FORMAT!r}")
    return meta


def read_model_spec(directory: str | os.PathLike) -> tuple[ModelConfig, MotionVocab, dict]:
    """(model config, vocabulary checked against its recorded hash, metadata) of a checkpoint, without weights.
    Raises CheckpointVersionError for a checkpoint of another model definition."""
    from drivetune.model import ModelConfig
    from drivetune.tokenizer import MotionVocab

    directory = Path(directory)
    meta = read_meta(directory)
    check_model_version(directory, meta)
    vocab = MotionVocab.load(directory / VOCAB)
    if vocab.hash != meta["vocab_hash"]:
        raise CheckpointError(f"{directory}: vocabulary hash {vocab.hash[:12]} != recorded {meta['vocab_hash'][:12]}")
    return from_dict(ModelConfig, meta["model_config"], where=f"{directory}/{META}"), vocab, meta


def check_model_version(directory: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Raise CheckpointVersionError, naming both versions and what to do, if the checkpoint's model definition is not
    the one this drivetune runs."""
    from drivetune.model.model_config import MODEL_VERSION

    version = meta.get("model_version", 1)
    if version != MODEL_VERSION:
        raise CheckpointVersionError(
            f"{directory}: checkpoint of model definition v{version}, but this drivetune runs v{MODEL_VERSION} "
            f"(v2 is SMART's: attention normalised over keys, layer norms, agent size), so its weights cannot be "
            f"used. Train a new one (`drivetune train pretrain`), or post-train the shipped base (`make base`)")


def read_weights(directory: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """A checkpoint's weights as numpy arrays, after checking its model version and the file's sha256 against the
    meta's `weights_sha256` (`meta` read from the directory when not given); CheckpointError naming the file
    otherwise."""
    directory = Path(directory)
    meta = read_meta(directory) if meta is None else meta
    check_model_version(directory, meta)
    path = directory / WEIGHTS
    try:
        payload = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable weights ({e})") from e
    want = meta.get("weights_sha256")
    if not want:
        raise CheckpointError(f"{directory / META}: no weights_sha256 recorded (written by an older drivetune); "
                              f"re-save the checkpoint")
    got = hashlib.sha256(payload).hexdigest()
    if got != want:
        raise CheckpointError(f"{path}: sha256 {got[:12]}... != {want[:12]}... recorded in {META}: the weights file "
                              f"is damaged or was replaced")
    try:
        return load_safetensors(payload)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable weights ({e})") from e


def load_weights(directory: str | os.PathLike, model: torch.nn.Module) -> None:
    """Copy a checkpoint's weights into `model` in place (CheckpointError if damaged, unreadable or not fitting)."""
    load_numpy_state_dict(model, read_weights(directory))


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[BehaviorModel, dict]:
    """Rebuild the model from a checkpoint directory; returns (model in eval mode, metadata)."""
    from drivetune.model import BehaviorModel

    cfg, vocab, meta = read_model_spec(directory)
    model = BehaviorModel(cfg, vocab)
    load_weights(directory, model)
    return model.to(device).eval(), meta


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a training run keeps its checkpoint of `step`."""
    return Path(run_dir) / RUN_CHECKPOINTS / f"step_{step:08d}"


def run_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints (readable metadata) of a training run directory, ascending."""
    root = Path(run_dir) / RUN_CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match:
            try:
                read_meta(path)
            except CheckpointError:
                continue
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory as given, or the latest complete checkpoint of a training run directory."""
    path = Path(path)
    if (path / META).is_file():
        return path
    found = run_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: neither a checkpoint (no {META}) nor a run directory with checkpoints")
    return found[-1][1]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    raise TypeError(f"not JSON-serialisable in checkpoint metadata: {type(value).__name__}")
