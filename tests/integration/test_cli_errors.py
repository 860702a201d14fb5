"""Issue 14: no silently wrong results, no tracebacks. Every case runs the command as a user would (drivetune.cli.main
or a subprocess) and checks the exit code and that the message names the problem."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivetune.atomic import atomic_path
from drivetune.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drivetune.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, **kw)


# ------------------------------------------------------------------ silent wrong results
def test_killed_synth_and_rerun_with_another_size_leave_no_duplicates(tmp_path, capsys):
    out = tmp_path / "k"
    assert _run(["synth", "--num-scenes", "3", "--scenes-per-file", "2", "--out", str(out)], capsys)[0] == 0
    first = sorted(p.name for p in out.iterdir())
    assert first == ["synth-s0-00000-of-00002.tfrecord", "synth-s0-00001-of-00002.tfrecord"]
    # a synth killed mid-write leaves its atomic temp file (full of scenes) beside the outputs
    killed = atomic_path(out / first[0]).__enter__()
    killed.write_bytes((out / first[0]).read_bytes())
    code, text, _ = _run(["inspect", str(out), "--json"], capsys)
    ids = [s["scenario_id"] for s in json.loads(text)]
    assert code == 0 and len(ids) == 3 == len(set(ids))  # the hidden temp file is not input
    # rerun with another plan: the old -of-00002 files and the temp file go, the scenes are not mixed
    code, _, err = _run(["synth", "--num-scenes", "3", "--scenes-per-file", "1", "--out", str(out)], capsys)
    assert code == 0 and "removed 2 files of an earlier seed-0 run" in err
    assert sorted(p.name for p in out.iterdir()) == [f"synth-s0-0000{k}-of-00003.tfrecord" for k in range(3)]
    rerun = [s["scenario_id"] for s in json.loads(_run(["inspect", str(out), "--json"], capsys)[1])]
    assert rerun == ids  # the same scenes, once each (scene i does not depend on the plan)


def test_hidden_files_are_not_sources(tmp_path):
    from drivetune.sources import SourceError, expand_sources

    (tmp_path / ".a.tfrecord.x1.tmp.tfrecord").write_bytes(b"")
    with pytest.raises(SourceError, match="no \\*.tfrecord\\* files"):
        expand_sources(tmp_path)
    with pytest.raises(SourceError, match="only hidden"):
        expand_sources(str(tmp_path / ".*tfrecord*"))
    (tmp_path / "b.tfrecord").write_bytes(b"")
    assert [p.name for p in expand_sources(str(tmp_path / "*"))] == ["b.tfrecord"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests"))
    from model_helpers import grid_vocab

    from drivetune.checkpoint import save_checkpoint
    from drivetune.model import BehaviorModel, ModelConfig

    path = tmp_path_factory.mktemp("ckpt") / "step"
    return save_checkpoint(path, BehaviorModel(ModelConfig.named("micro"), grid_vocab()), {"step": 1})


def test_damaged_weights_are_refused_naming_the_file(checkpoint, tmp_path, womd_637, capsys):
    import shutil

    from drivetune.checkpoint import CheckpointError, load_checkpoint, read_meta

    assert len(read_meta(checkpoint)["weights_sha256"]) == 64
    load_checkpoint(checkpoint)  # intact: loads
    bad = shutil.copytree(checkpoint, tmp_path / "bad")
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\x7f" * 8  # inside a tensor: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 .* damaged"):
        load_checkpoint(bad)
    code, _, err = _run(["simulate", str(womd_637), "--checkpoint", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "drivetune simulate: error:" in err and "model.safetensors" in err


def _rollouts_npz(path: Path, womd_637, scale: float = 1.0, rollouts: int = 32) -> Path:
    from drivetune.realism import Rollouts
    from drivetune.womd import load_scene

    scene = load_scene(womd_637)
    sim = scene.sim_agent_mask()
    st = scene.states[sim][:, scene.current_time_index + 1:]  # logged future as every rollout
    field = lambda k: np.repeat(st[None, :, :, k].astype(np.float32), rollouts, 0)  # noqa: E731
    x = field(0).copy()
    x[0, :, 40] = scale
    Rollouts(scene.track_ids[sim], x, field(1), field(2), field(6)).save(path)
    return path


def test_realism_json_is_valid_json_for_huge_values(tmp_path, womd_637, capsys):
    path = _rollouts_npz(tmp_path / "huge.npz", womd_637, scale=1e30, rollouts=2)
    code, out, err = _run(["realism", str(womd_637), str(path), "--json"], capsys)

    def no_constants(name):
        raise AssertionError(f"not JSON: {name}")

    values = json.loads(out, parse_constant=no_constants)  # json.dumps would have written Infinity
    assert code == 0 and values["average_displacement_error"] is None
    assert all(v is None or np.isfinite(v) for v in values.values())
    assert "non-finite metric values ['average_displacement_error']" in err
    assert "2 rollouts per scenario" in err  # R != 32: not comparable to WOSAC


def test_realism_text_file_is_not_an_npz(tmp_path, womd_637, capsys):
    path = tmp_path / "r.npz"
    path.write_text("hello\n")
    code, _, err = _run(["realism", str(womd_637), str(path)], capsys)
    assert code == 2 and f"{path}: not an npz file" in err


# ------------------------------------------------------------------ tracebacks and accepted nonsense
@pytest.mark.parametrize("extra, message", [
    (["--scenario-id", "nope"], "scenario 'nope' not found"),
    (["--step", "200"], "step 200 outside [0, 91)"),
    (["--radius", "-5"], "--radius must be a positive"),
    (["--out", "x.bmp"], "cannot write a 'bmp' image"),
])
def test_render_bad_arguments(extra, message, womd_637, tmp_path, capsys):
    args = ["render", str(womd_637), "--out", str(tmp_path / "a.png"), *extra]
    code, _, err = _run(args, capsys)
    assert code == 2 and err.startswith("drivetune render: error:") and message in err
    assert not (tmp_path / "a.png").exists()


def test_render_missing_or_corrupt_input_and_jpeg(womd_637, tmp_path, capsys):
    code, _, err = _run(["render", str(tmp_path / "nope.tfrecord"), "--out", str(tmp_path / "a.png")], capsys)
    assert code == 2 and "nope.tfrecord: no such file" in err
    corrupt = tmp_path / "c.tfrecord"
    corrupt.write_bytes(womd_637.read_bytes()[:5000])
    code, _, err = _run(["render", str(corrupt), "--out", str(tmp_path / "a.png")], capsys)
    assert code == 2 and "c.tfrecord" in err
    assert _run(["render", str(womd_637), "--out", str(tmp_path / "a.jpg")], capsys)[0] == 0
    assert (tmp_path / "a.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not a PNG under a .jpg name


def test_simulate_bad_device_and_out(checkpoint, womd_637, tmp_path, capsys):
    import torch

    base = ["simulate", str(womd_637), "--checkpoint", str(checkpoint)]
    if not torch.cuda.is_available():
        code, _, err = _run(base + ["--out", str(tmp_path / "o"), "--device", "cuda"], capsys)
        assert code == 2 and "--device cuda: no CUDA device is available" in err
    (tmp_path / "file").write_text("x")
    code, _, err = _run(base + ["--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "exists and is not a directory" in err


def test_simulate_takes_several_scene_sources(checkpoint, womd_637, womd_ee5, tmp_path, capsys):
    out = tmp_path / "sim"
    code, _, err = _run(["simulate", str(womd_637), str(womd_ee5), "--checkpoint", str(checkpoint), "--out", str(out),
                         "--rollouts", "1", "--k", "4"], capsys)
    assert code == 0 and "\r" not in err
    assert sorted(p.name for p in (out / "rollouts").iterdir()) == ["637f20cafde22ff8.npz", "ee519cf571686d19.npz"]


def test_realism_bad_device(womd_637, tmp_path, capsys):
    code, _, err = _run(["realism", str(womd_637), str(tmp_path / "x.npz"), "--device", "bogus"], capsys)
    assert code == 2 and "drivetune realism: error: --device 'bogus' is not a torch device" in err


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "override 'optim.lr=-1': lr must be in (0, inf)"),
    ("optim.weight_decay=-0.1", "override 'optim.weight_decay=-0.1': weight_decay must be in [0, inf)"),
    ("model.dropout=1.5", "override 'model.dropout=1.5': dropout must be in [0, 1)"),
    ("optim.grad_clip=0", "override 'optim.grad_clip=0': grad_clip must be in (0, inf)"),
    ("optim.lr=.nan", "override 'optim.lr=.nan': must be a finite number"),
    ("optim.lr=fast", "override 'optim.lr=fast': expected float"),
])
def test_pretrain_config_errors_name_the_override(override, message, capsys):
    code, _, err = _run(["train", "pretrain", "--config", str(REPO / "configs/pretrain_micro.yaml"), override], capsys)
    assert code == 2 and err.startswith("drivetune train pretrain: error:") and message in err


def test_config_file_that_is_not_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [lr: 1\n")
    code, _, err = _run(["train", "pretrain", "--config", str(bad)], capsys)
    assert code == 2 and f"{bad}: not valid YAML" in err


def test_failed_work_exits_1_with_the_traceback_only_when_verbose(monkeypatch, womd_637, capsys):
    from drivetune.commands import inspect as inspect_cmd

    def boom(args):
        raise RuntimeError("the raylet did not start")

    monkeypatch.setattr(inspect_cmd, "run", boom)
    monkeypatch.setenv("DRIVETUNE_VERBOSE", "")  # --verbose sets it; restored after the test
    code, _, err = _run(["inspect", str(womd_637)], capsys)
    assert code == 1 and "drivetune inspect: error: RuntimeError: the raylet did not start" in err
    assert main(["inspect", str(womd_637), "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_unknown_command_and_version():
    bad = _cli("bogus")
    assert bad.returncode == 2 and "drivetune: error: unknown command 'bogus'" in bad.stderr
    near = _cli("simulat")
    assert near.returncode == 2 and "did you mean 'simulate'" in near.stderr
    group = _cli("train", "--help")  # a command group lists its subcommands
    assert group.returncode == 0 and all(f"  {sub} " in group.stdout for sub in ("pretrain", "sft", "rft", "pipeline"))
    bare = _cli("vocab")
    assert bare.returncode == 2 and "  build " in bare.stderr and "drivetune vocab: error: a subcommand" in bare.stderr
    assert "did you mean 'train rft'" in _cli("train", "rtf").stderr
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("drivetune ")


def test_help_into_a_closed_pipe_is_quiet():
    proc = subprocess.Popen([sys.executable, "-m", "drivetune.cli", "-h"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    proc.stdout.close()  # the reader is gone before drivetune writes (`drivetune -h | head` once head exits)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.slow
def test_ctrl_c_during_ray_start_up_leaves_nothing_behind(tmp_path):
    """SIGINT while `ray.init` runs: ray_session stops what started and removes its temp dir."""
    script = """
import os, signal, sys, tempfile, threading
import ray
from drivetune.ray_runtime import ray_session
real_init = ray.init
def init(*a, **kw):
    print(kw["_temp_dir"], flush=True)
    real_init(*a, **kw)              # Ray's processes are up ...
    os.kill(os.getpid(), signal.SIGINT)  # ... when Ctrl-C arrives, before the session is handed out
    import time; time.sleep(5)
ray.init = init
with ray_session(num_cpus=1):
    print("not reached", flush=True)
"""
    # A shell's background job starts with SIGINT ignored, and Python then keeps it so: give the child the default
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    temp_dir = proc.stdout.splitlines()[0]
    assert proc.returncode != 0 and "not reached" not in proc.stdout
    assert temp_dir.startswith("/tmp/dt_ray_") and not os.path.exists(temp_dir)
    left = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes left running: {left}"


# ------------------------------------------------------------------ one CLI
SCENE_COMMANDS = ("ingest", "inspect", "render", "realism", "vocab build", "simulate", "eval")


def test_scene_inputs_have_one_name_and_every_option_is_documented():
    for name in COMMANDS:
        parser = build_parser(name)
        undocumented = [a.dest for a in parser._actions if not a.help]
        assert not undocumented, f"{name}: options without help {undocumented}"
        helps = {a.dest: parser._get_formatter()._get_help_string(a) for a in parser._actions}
        hidden = [a.dest for a in parser._actions if a.default not in (None, False, "==SUPPRESS==")
                  and not a.required and "default" not in helps[a.dest]]
        assert not hidden, f"{name}: defaults not shown in --help for {hidden}"
        positional = {a.metavar for a in parser._actions if not a.option_strings}
        assert ("SCENES" in positional) == (name in SCENE_COMMANDS), name
        assert "--shards" not in parser.format_help(), name  # one meaning per option name


def test_help_is_fast_no_torch_before_parsing():
    code = ("import sys\nfrom drivetune.cli import COMMANDS, build_parser\n"
            "for n in COMMANDS:\n    build_parser(n).format_help()\n"
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'matplotlib', 'httpx', 'waymo_open_dataset') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.strip() == "[]"


def test_progress_lines_without_carriage_returns(tmp_path):
    out = _cli("synth", "--num-scenes", "2", "--scenes-per-file", "1", "--out", str(tmp_path / "s"))
    assert out.returncode == 0 and "\r" not in out.stderr
    assert "synth: 2/2 scenes (100%)" in out.stderr


def test_realism_reads_shard_directories(tmp_path, womd_637, womd_ee5, oracle_dir, capsys):
    from drivetune.shards import write_shards
    from drivetune.womd import load_scene

    write_shards(tmp_path / "shards", [load_scene(womd_ee5), load_scene(womd_637)])
    npz = str(oracle_dir / "case_logged_noise_small.npz")
    code, direct, _ = _run(["realism", str(womd_637), npz, "--json"], capsys)
    assert code == 0
    code, sharded, _ = _run(["realism", str(tmp_path / "shards"), str(womd_ee5), npz, "--json",
                             "--scenario-id", "637f20cafde22ff8"], capsys)
    assert code == 0
    drop = lambda text: {k: v for k, v in json.loads(text).items() if k != "seconds"}  # noqa: E731
    assert drop(sharded) == drop(direct)
