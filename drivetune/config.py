"""Dataclass configs loaded from YAML with dotted `key=value` overrides; unknown keys are errors.

Besides types, a few field names mean the same thing in every config and are range-checked wherever they appear
(`FIELD_RANGES`: a learning rate is positive, a dropout a probability, ...), and no float may be NaN or infinite.
An error in a value that came from an override names the override, not the YAML file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from drivetune.errors import ConfigError

T = TypeVar("T")

# field name -> (low, high, low inclusive, high inclusive), checked in every config that has such a field
FIELD_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0.0, math.inf, False, False),
    "weight_decay": (0.0, math.inf, True, False),
    "dropout": (0.0, 1.0, True, False),
    "hist_drop": (0.0, 1.0, True, False),
    "grad_clip": (0.0, math.inf, False, False),
    "label_smoothing": (0.0, 1.0, True, False),
    "min_lr_ratio": (0.0, 1.0, True, True),
    "warmup_steps": (0.0, math.inf, True, False),
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_range(name: str, value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where, f"must be a finite number, got {value!r}")
    if name not in FIELD_RANGES or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    lo, hi, lo_in, hi_in = FIELD_RANGES[name]
    if not ((value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)):
        interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
        raise ConfigError(where, f"{name} must be in {interval}, got {value!r}")


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping for {hint.__name__}, got {type(value).__name__}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:  # the first member type that accepts the value (e.g. `float | str` for 0.77 or "auto")
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(" or ".join(errors))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {value!r}")
        (inner, *_) = typing.get_args(hint) or (Any,)
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, f"expected true/false, got {value!r}")
    if hint in (int, float, str):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is float and isinstance(value, str) and _EXPONENT_FLOAT.match(value):
            return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
        if not isinstance(value, hint) or isinstance(value, bool):
            raise ConfigError(where, f"expected {hint.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and out-of-range values raise ConfigError naming them."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}" if len(unknown) == 1 else where,
                          f"unknown keys {unknown} (known: {sorted(types_)})")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(v, types_[k], f"{where}.{k}")
        _check_range(k, kwargs[k], f"{where}.{k}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (for YAML/JSON metadata)."""
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}", f"{k!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings (values parsed as YAML scalars) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}", "not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}", f"value is not valid YAML ({e})") from None
        _set_dotted(data, key.strip(), value)
    return data


def _blame_override(err: ConfigError, root: str, overrides: list[str]) -> ConfigError:
    """`err` re-worded to name the override that set the failing key, if one did."""
    if err.problem is None or not err.where.startswith(root + "."):
        return err
    key = err.where[len(root) + 1:].split("[")[0]
    for item in reversed(overrides):
        name = item.split("=", 1)[0].strip()
        if name == key or name.startswith(key + ".") or key.startswith(name + "."):
            return ConfigError(f"override {item!r}", err.problem)
    return err


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML file (or defaults when None), then apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(str(p), f"not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(str(p), "top level must be a mapping")
        data = loaded
    overrides = overrides or []
    data = apply_overrides(data, overrides)
    root = str(path or cls.__name__)
    try:
        return from_dict(cls, data, where=root)
    except ConfigError as e:
        raise _blame_override(e, root, overrides) from None
