"""drivetune.config (YAML dataclasses, dotted overrides, unknown keys) and the CLI dispatcher."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from drivetune import cli
from drivetune.config import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Job:
    name: str = "job"
    steps: int = 10
    use_gpu: bool = False
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\noptim:\n  lr: 0.01\n")
    cfg = load_config(Job, path, ["steps=25", "optim.betas=[0.8, 0.9]", "use_gpu=true"])
    assert cfg == Job(name="demo", steps=25, use_gpu=True, optim=Optim(lr=0.01, betas=(0.8, 0.9)))


def test_int_is_accepted_for_float_field():
    assert load_config(Job, None, ["optim.lr=1"]).optim.lr == 1.0


def test_exponent_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; a float field takes it as the number a user means (file and override)."""
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  lr: 5e-4\n")
    assert load_config(Job, path).optim.lr == 5e-4
    assert load_config(Job, path, ["optim.lr=1E+2"]).optim.lr == 100.0
    with pytest.raises(ConfigError, match="expected float"):
        load_config(Job, None, ["optim.lr=1e-4x"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(Job, None, ["steps=1e3"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stepz=3"], "unknown keys ['stepz']"),
        (["optim.momentum=0.9"], "unknown keys ['momentum']"),
        (["steps=many"], "override 'steps=many': expected int"),
        (["use_gpu=1"], "expected true/false"),
        (["steps"], "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(Job, None, overrides)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "nope.yaml")


def test_every_command_module_exposes_the_protocol():
    import importlib

    for name, (module_name, _) in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), name


def test_top_level_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "drivetune.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout
    bad = subprocess.run([sys.executable, "-m", "drivetune.cli", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: drivetune" in bad.stderr
    assert "unknown command 'frobnicate'" in bad.stderr and "Traceback" not in bad.stderr


def test_progress_lines_in_a_log_end_once():
    """In a log (no terminal), a progress line every `every_s` and one at the end, not repeated when the last update
    already wrote it."""
    import io

    from drivetune.progress import progress

    out = io.StringIO()
    bar = progress(4, "sft", unit="iter", file=out, every_s=0.0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert [line.split(" ", 1)[1].split(",")[0] for line in out.getvalue().splitlines()] == [
        f"sft: {i}/4 iters ({25 * i}%)" for i in range(1, 5)]
    quiet = io.StringIO()
    bar = progress(4, "sft", unit="iter", file=quiet, every_s=3600.0)
    bar.update(3)
    bar.close()
    assert len(quiet.getvalue().splitlines()) == 1 and "3/4 iters" in quiet.getvalue()
