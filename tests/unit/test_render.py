"""`drivetune render`: PNGs of synthetic and real scenes, with and without rollouts."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from drivetune.commands.render import run
from drivetune.render import render_scene
from drivetune.synth.files import generate
from drivetune.womd import write_scenes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 20_000


def test_render_synthetic_scene_with_rollouts(tmp_path):
    scene = generate(2, 0)
    plain = render_scene(scene, tmp_path / "plain.png")
    assert _is_png(plain)
    n_sim = int(scene.sim_agent_mask().sum())
    start = scene.states[scene.sim_agent_mask(), scene.current_time_index, :2]
    rollouts = start[None, :, None, :] + np.random.default_rng(0).normal(0, 1, (4, n_sim, 80, 2)).cumsum(2)
    with_ro = render_scene(scene, tmp_path / "ro.png", rollouts=rollouts)
    assert _is_png(with_ro) and with_ro.read_bytes() != plain.read_bytes()
    with pytest.raises(ValueError, match="sim agents"):
        render_scene(scene, tmp_path / "bad.png", rollouts=rollouts[:, :-1])
    with pytest.raises(ValueError, match="rollouts must be"):
        render_scene(scene, tmp_path / "bad.png", rollouts=rollouts[0])
    assert not (tmp_path / "bad.png").exists()


def test_render_cli_on_real_womd(womd_637, tmp_path, capsys):
    out = tmp_path / "womd.png"
    args = argparse.Namespace(scenes=[str(womd_637)], scenario_id="637f20cafde22ff8", out=str(out), step=None,
                              radius=None)
    assert run(args) == 0
    assert _is_png(out)
    assert "637f20cafde22ff8" in capsys.readouterr().out


def test_render_cli_picks_scenario_by_id_and_names_missing_ones(tmp_path):
    scenes = [generate(4, i) for i in range(2)]
    path = tmp_path / "two.tfrecord"
    write_scenes(path, scenes)
    args = argparse.Namespace(scenes=[str(path)], scenario_id=scenes[1].scenario_id, out=str(tmp_path / "b.png"),
                              step=50, radius=40.0)
    assert run(args) == 0 and _is_png(tmp_path / "b.png")
    args.scenario_id = "nope"
    with pytest.raises(ValueError, match="nope"):
        run(args)
