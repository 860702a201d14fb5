"""CUDA device check of the closed-loop rollout engine (issue 15): the same rollouts as on CPU, and no host
synchronisation inside the step loop. `bench/device_check.sh` runs it (then bench/rollouts.py) on a lent GPU machine.

    python bench/device_check.py --prepare                  # here: devdata/ = the two real scenes (+ Parquet shards)
    python bench/device_check.py --json OUT/identity.json   # on the device (no ray, no WOMD protos needed)

Identity: `simulate` on cuda vs cpu, same weights, seeds and uniforms, `micro` model (float32, TF32 off):
  - the test setting of tests/integration/test_engine_speed.py (3 rollouts, k=8, the 65-token test vocabulary; topk / catk /
    warmk, sdc policy and log; both scenes): tokens must be equal and logp / sampler logp within 1e-4 (the CPU
    contract; CUDA reorders float32 sums, ~1e-6 in logits, far inside it);
  - the benchmark setting (32 rollouts, top-K 32, 2048 tokens): how many rollouts keep every token (a near-tie draw can
    flip on float rounding, then that rollout diverges) and the logp difference over those.
Sync: `torch.cuda.set_sync_debug_mode("error")` from the end of `Engine.start` until the outputs are read back, so a
synchronising call in act / observe / `BehaviorModel.step` raises (its place is reported); the loop is then rerun in
"warn" mode to count every such call. Without CUDA everything is skipped (exit 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from drivetune import closed_loop  # noqa: E402
from drivetune.engine import Engine  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig  # noqa: E402
from drivetune.samplers import SamplerConfig  # noqa: E402
from model_helpers import grid_vocab as test_vocab  # noqa: E402
from rollouts import grid_vocab as bench_vocab  # noqa: E402
from rollouts import load_scene  # noqa: E402

SCENES = ("motion_data_one_scenario", "womd_scenario_input")  # 50 and 84 sim agents
CASES = (("topk", "policy"), ("catk", "log"), ("warmk", "policy"), ("warmk", "log"))
TOL = 1e-4


def prepare(devdata: Path) -> None:
    """Copy the two real scenes from ../shared into `devdata` and add Parquet shards of them (readable there)."""
    from drivetune.shards import write_shard
    from drivetune.womd import load_scene as load_womd

    devdata.mkdir(exist_ok=True)
    for name in SCENES:
        src = ROOT.parent / "shared" / "data" / "womd" / f"{name}.tfrecord"
        shutil.copyfile(src, devdata / src.name)
        write_shard(devdata / f"{name}.parquet", [load_womd(src)])
        print(f"{devdata / name}.tfrecord + .parquet")


class _Guarded(Engine):
    """An Engine whose `start` ends by switching on the sync debug mode (the loop that follows is checked)."""

    mode = "error"

    def start(self, specs):
        sessions = super().start(specs)
        if self.vocab.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode(self.mode)
        return sessions


@contextlib.contextmanager
def step_loop_checked(mode: str):
    """`closed_loop.simulate`'s step loop under sync debug `mode`; switched off before the outputs are read back."""
    engine, output = closed_loop.Engine, closed_loop._scene_output

    def read_back(*args, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        return output(*args, **kwargs)

    _Guarded.mode = mode
    closed_loop.Engine, closed_loop._scene_output = _Guarded, read_back
    try:
        yield
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        closed_loop.Engine, closed_loop._scene_output = engine, output


def _site(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "drivetune" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].line})" if frames else "?"
    return f"{str(exc).splitlines()[0]} at {where}"


def run_case(models, scene, rollouts: int, cfg: SamplerConfig, sdc: str) -> dict:
    (m_cpu, tv_cpu), (m_gpu, tv_gpu) = models
    call = lambda m, tv: closed_loop.simulate(m, tv, [scene], rollouts, cfg, base_seed=4, sdc=sdc)[0]  # noqa: E731
    cpu = call(m_cpu, tv_cpu)
    sync_error = None
    try:
        with step_loop_checked("error"):
            call(m_gpu, tv_gpu)
    except RuntimeError as exc:
        sync_error = _site(exc)
    with warnings.catch_warnings(record=True) as caught, step_loop_checked("warn"):
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        gpu = call(m_gpu, tv_gpu)  # (its outputs are read back: the time includes the device's work)
        wall = time.perf_counter() - t0
    syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    same = (cpu.tokens == gpu.tokens).all(axis=(1, 2))

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a[same] - b[same]).max()) if same.any() else math.nan

    return dict(scene=scene.scenario_id, agents=int(cpu.tokens.shape[1]), sampler=cfg.kind, k=cfg.k, sdc=sdc,
                rollouts=rollouts, same_rollouts=int(same.sum()), logp_diff=diff(cpu.logp, gpu.logp),
                sampler_logp_diff=diff(cpu.sampler_logp, gpu.sampler_logp),
                xy_diff=max(diff(cpu.x, gpu.x), diff(cpu.y, gpu.y)), sync_error=sync_error,
                sync_calls=len(syncs), sync_sites=sorted(set(syncs)), cuda_wall_s=wall)


def check(devdata: Path, device: str) -> dict:
    """Every identity / sync case of `device` against the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    scenes = [load_scene(devdata / f"{name}.parquet") for name in SCENES]
    results = []
    for vocab, settings in ((test_vocab(), [(s, 3, SamplerConfig(kind=k, k=8), sdc, True)
                                            for s in scenes for k, sdc in CASES]),
                            (bench_vocab(), [(scenes[0], 32, SamplerConfig(kind="topk", k=32), "policy", False)])):
        torch.manual_seed(0)
        model = BehaviorModel(ModelConfig.named("micro"), vocab).eval()
        gpu = BehaviorModel(ModelConfig.named("micro"), vocab).eval().to(device)
        gpu.load_state_dict(model.state_dict())
        models = ((model, vocab.to_torch("cpu")), (gpu, vocab.to_torch(device)))
        for scene, rollouts, cfg, sdc, strict in settings:
            r = run_case(models, scene, rollouts, cfg, sdc)
            r["strict"] = strict
            r["ok"] = r["sync_error"] is None and r["sync_calls"] == 0 and (not strict or (
                r["same_rollouts"] == rollouts and r["logp_diff"] < TOL and r["sampler_logp_diff"] < TOL))
            results.append(r)
            print(f"{'PASS' if r['ok'] else 'FAIL'} {r['scene']} ({r['agents']} agents) {cfg.kind} k={cfg.k} sdc={sdc} "
                  f"R={rollouts}: same tokens {r['same_rollouts']}/{rollouts}, |dlogp| {r['logp_diff']:.1e}, "
                  f"|dsampler_logp| {r['sampler_logp_diff']:.1e}, |dxy| {r['xy_diff']:.1e} m, host syncs in loop "
                  f"{r['sync_calls']} {r['sync_sites'] or ''} {r['sync_error'] or ''}", flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else device
    return dict(cuda=device == "cuda", device=name, torch=torch.__version__, tolerance=TOL,
                all_ok=all(r["ok"] for r in results), cases=results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devdata", type=Path, default=ROOT / "devdata")
    ap.add_argument("--prepare", action="store_true", help="copy the scenes from ../shared into --devdata")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--device", default="cuda", help="device checked against the CPU (cpu: a dry run of the script)")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.devdata)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: device checks skipped")
        out = dict(cuda=False, torch=torch.__version__)
    else:
        out = check(args.devdata, args.device)
        print(f"identity + sync: {'ALL PASS' if out['all_ok'] else 'FAILURES (see above)'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if out.get("all_ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
