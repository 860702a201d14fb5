"""`drivetune ingest` (on the shared local Ray) and `drivetune inspect`: real files, corrupt copies, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from drivetune.cli import main
from drivetune import ingest as ingest_mod
from drivetune.ingest import DuplicateScenarioError, ingest, plan_shards
from drivetune.shards import ShardStore
from drivetune.sources import expand_tfrecords
from drivetune.womd import load_scene


@pytest.fixture()
def src(tmp_path, womd_637, womd_ee5):
    """The two real files plus a copy of the first with one payload byte flipped."""
    d = tmp_path / "src"
    d.mkdir()
    for p in (womd_637, womd_ee5):
        shutil.copyfile(p, d / p.name)
    data = bytearray(womd_637.read_bytes())
    data[5000] ^= 0x01
    (d / "c_corrupt.tfrecord").write_bytes(bytes(data))
    return d


def test_plan_is_deterministic(src):
    files = expand_tfrecords([str(src / "*.tfrecord")])
    assert [f.name for f in files] == ["c_corrupt.tfrecord", "motion_data_one_scenario.tfrecord",
                                       "womd_scenario_input.tfrecord"]  # fmt: skip
    a, errs = plan_shards(files, 2)
    b, _ = plan_shards(list(files), 2)
    assert errs == [] and [(p.name, p.fingerprint) for p in a] == [(p.name, p.fingerprint) for p in b]
    assert [len(p.inputs) for p in a] == [2, 1] and a[0].inputs[0][1] == 0


def test_ingest_corrupt_copy_then_resume(ray_local, src, tmp_path, capsys, womd_ee5):
    out = tmp_path / "shards"
    argv = ["ingest", str(src), "--out", str(out), "--shard-size", "1", "--workers", "2", "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "c_corrupt.tfrecord: record at byte offset 0: payload CRC mismatch" in captured.err
    assert "2 scenes in 3 shards" in captured.out and "3 written, 0 already done" in captured.out
    store = ShardStore(out)
    assert store.verify() == [] and sorted(store.scenario_ids()) == ["637f20cafde22ff8", "ee519cf571686d19"]
    assert store.get("ee519cf571686d19").equals(load_scene(womd_ee5))
    bad = store.shards["shard-00000.parquet"]
    assert bad["num_rows"] == 0 and bad["errors"][0]["offset"] == 0

    # second run: nothing rebuilt, the bad record is still reported, still non-zero
    mtimes = {p.name: p.stat().st_mtime_ns for p in store.paths()}
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "0 written, 3 already done and skipped" in captured.out and "payload CRC mismatch" in captured.err
    assert {p.name: p.stat().st_mtime_ns for p in ShardStore(out).paths()} == mtimes

    # a tampered shard is rebuilt; the repaired source is a duplicate of another input: an error naming both
    tampered = out / "shard-00002.parquet"
    tampered.write_bytes(b"garbage")
    shutil.copyfile(src / "motion_data_one_scenario.tfrecord", src / "c_corrupt.tfrecord")
    with pytest.raises(DuplicateScenarioError) as err:
        ingest([str(src)], out, shard_size=1, workers=2, progress=False)
    assert (f"'637f20cafde22ff8' in {(src / 'c_corrupt.tfrecord').resolve()} (record at byte offset 0) and in "
            f"{(src / 'motion_data_one_scenario.tfrecord').resolve()} (record at byte offset 0)") in str(err.value)
    assert not (out / "manifest.json").exists()  # the directory is not usable until the inputs are fixed
    assert main(argv) == 2 and "1 duplicate scenario id(s)" in capsys.readouterr().err
    (src / "c_corrupt.tfrecord").unlink()
    result = ingest([str(src)], out, shard_size=1, workers=2, progress=False)
    assert result.errors == [] and result.scenes == 2 and len(result.written) + len(result.skipped) == 2
    assert ShardStore(out).verify() == [] and sorted(ShardStore(out).scenario_ids()) == sorted(store.scenario_ids())


def test_manifest_written_once_journal_resumes_and_lock_refuses(ray_local, src, tmp_path, monkeypatch, capsys):
    (src / "c_corrupt.tfrecord").unlink()
    out = tmp_path / "shards"
    writes = []
    real_write = ingest_mod.write_manifest
    monkeypatch.setattr(ingest_mod, "write_manifest", lambda d, e: (writes.append(len(e)), real_write(d, e)))
    result = ingest([str(src)], out, shard_size=1, workers=2, progress=False)
    assert len(result.written) == 2 and writes == [0, 2]  # at the start and at the end, not once per shard
    assert not (out / ingest_mod.JOURNAL_NAME).exists()

    # an interrupted run: its finished shards are in the journal only; the next run keeps them
    manifest = json.loads((out / "manifest.json").read_text())
    lines = [json.dumps([name, entry]) for name, entry in manifest["shards"].items()]
    (out / ingest_mod.JOURNAL_NAME).write_text("\n".join(lines) + '\n["shard-0000')  # torn last line
    (out / "manifest.json").unlink()
    result = ingest([str(src)], out, shard_size=1, workers=2, progress=False)
    assert result.written == [] and len(result.skipped) == 2 and ShardStore(out).verify() == []

    with ingest_mod.ingest_lock(out):  # another ingest holds the directory
        with pytest.raises(ingest_mod.IngestLockedError, match=f"another ingest \\(pid {os.getpid()}\\)"):
            ingest([str(src)], out, shard_size=1, workers=2, progress=False)
        assert main(["ingest", str(src), "--out", str(out), "--no-progress"]) == 2
        assert "is writing into this directory" in capsys.readouterr().err
    assert ingest([str(src)], out, shard_size=1, workers=2, progress=False).skipped  # released


def test_ingest_truncated_file_and_fewer_shards(ray_local, src, tmp_path, womd_637, womd_ee5):
    two = tmp_path / "two.tfrecord"
    two.write_bytes(womd_637.read_bytes() + womd_ee5.read_bytes()[:1000])
    out = tmp_path / "shards"
    result = ingest([str(src / "*.tfrecord")], out, shard_size=1, workers=1, progress=False)
    assert len(result.written) == 3
    result = ingest([str(two)], out, shard_size=1, workers=1, progress=False)  # smaller plan: stale shards removed
    assert [e["offset"] for e in result.errors] == [womd_637.stat().st_size]
    assert "truncated" in result.errors[0]["error"] and "rest of file unreadable" in result.errors[0]["error"]
    assert result.scenes == 1 and sorted(p.name for p in out.glob("*.parquet")) == ["shard-00000.parquet"]


def test_ingest_bad_arguments(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "none.tfrecord"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_inspect_json_cli(womd_ee5, womd_637):
    proc = subprocess.run(
        [sys.executable, "-m", "drivetune.cli", "inspect", str(womd_ee5), str(womd_637), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ee5, s637 = json.loads(proc.stdout)
    assert ee5["scenario_id"] == "ee519cf571686d19" and len(ee5["sim_agent_ids"]) == 84
    assert ee5["evaluated_agent_ids"] == [625, 635, 2677, 2694, 2893]
    assert ee5["num_tracks"] == 257 and ee5["num_signalled_lanes"] == 0
    assert ee5["map_feature_counts"] == {"lane": 114, "road_line": 12, "road_edge": 75, "stop_sign": 4,
                                         "crosswalk": 4, "speed_bump": 6, "driveway": 0}  # fmt: skip
    assert s637["num_sim_agents"] == 50 and s637["sim_agents_by_type"] == {"vehicle": 45, "pedestrian": 3, "cyclist": 2}
    assert s637["evaluated_agent_ids"] == [1675, 1676, 2320, 2406] and s637["num_signalled_lanes"] == 12


def test_inspect_reports_corrupt_file(src, capsys):
    assert main(["inspect", str(src / "c_corrupt.tfrecord"), str(src / "womd_scenario_input.tfrecord")]) == 1
    captured = capsys.readouterr()
    assert "c_corrupt.tfrecord: record at byte offset 0" in captured.err
    assert "ee519cf571686d19: 257 tracks, 84 sim agents" in captured.out
