"""Streaming pretraining data: peak RSS of the training worker and scenes/s for stores of N scenes, for
`drivetune train pretrain` (Ray Data reads + tokenization tasks, the worker pulls mini-batches) against the baseline
the stream replaced, measured in the same run: one process that tokenizes its whole share into memory first, then
trains (what each worker did before).

    .venv/bin/python bench/pretrain_stream.py --shards SHARDS --vocab VOCAB --scenes 200 2000 --steps 10

The stores of N scenes are the first shards of SHARDS (symlinked beside a manifest listing only them). One training
worker (1 CPU) and one CPU for Ray Data; micro model, batch 4 scenes. scenes/s of the stream is the second half of
the steps (the first half includes the pipeline start); the baseline's time to its first step is its tokenization.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from drivetune.shards import ShardStore, write_manifest  # noqa: E402


def subset_store(src: ShardStore, scenes: int, out: Path) -> int:
    """A shard directory holding the first shards of `src` up to `scenes` scenes (symlinks); returns its size."""
    out.mkdir(parents=True)
    chosen, total = {}, 0
    for name, entry in src.shards.items():
        if total >= scenes:
            break
        (out / name).symlink_to((src.directory / name).resolve())
        chosen[name], total = entry, total + entry["num_rows"]
    write_manifest(out, chosen)
    return total


def baseline_worker(shards: str, vocab_path: str, steps: int, batch_size: int) -> dict:
    """The replaced design in this process: tokenize every scene into a list, then train on random mini-batches."""
    import numpy as np
    import torch

    from cluster.pretrain_data import make_batch, make_sample
    from drivetune.model import BehaviorModel, ModelConfig
    from drivetune.tokenizer import MotionVocab
    from trainer.objectives import TokenTargets, next_token_loss

    torch.set_num_threads(1)
    vocab = MotionVocab.load(vocab_path)
    t0, c0 = time.perf_counter(), time.process_time()
    samples = [make_sample(scene, vocab) for scene in ShardStore(shards)]
    tokenize_s, tokenize_cpu = time.perf_counter() - t0, time.process_time() - c0
    model = BehaviorModel(ModelConfig.named("micro"), vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        mb, ab = make_batch([samples[i] for i in rng.choice(len(samples), batch_size, replace=False)])
        loss = next_token_loss(model(mb, ab), TokenTargets.from_tokens(ab.tokens, ab.valid))
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tokenize_s": tokenize_s,
            "tokenize_cpu_s": tokenize_cpu, "scenes_per_s": steps * batch_size / train_s,
            "train_cpu_s_per_scene": train_cpu / (steps * batch_size)}


def streaming(shards: Path, vocab: str, steps: int, batch_size: int, run_dir: Path) -> dict:
    from cluster.pretrain import fit
    from cluster.pretrain_config import PretrainConfig
    from drivetune.config import load_config

    half = max(1, steps // 2)
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_micro.yaml", [
        f"run_dir={run_dir}", f"data.shards={shards}", f"data.vocab={vocab}", "num_workers=1", "cpus_per_worker=1",
        f"batch_size={batch_size}", f"max_steps={2 * half}", f"log_every={half}", f"checkpoint_every={2 * half}",
        "eval_scenes=1", "eval_rollouts=1"]).validate()
    t0 = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - t0
    if result.error is not None:
        raise RuntimeError(f"pretraining failed: {result.error}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"peak_rss_mb": rows[-1]["worker_peak_rss_mb"], "first_half_scenes_per_s": rows[0]["scenes_per_s_per_worker"],
            "scenes_per_s": rows[-1]["scenes_per_s_per_worker"], "fit_wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--scenes", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args()
    if args.baseline_worker:
        print(json.dumps(baseline_worker(args.shards, args.vocab, args.steps, args.batch_size)))
        return

    from drivetune.ray_runtime import ray_session

    src = ShardStore(args.shards)
    work = Path(tempfile.mkdtemp(prefix="dt_bench_stream_"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; micro model, batch {args.batch_size}")
    rows = []
    with ray_session(num_cpus=2, dashboard=True, log_to_driver=False):
        for n in args.scenes:
            store = work / f"n{n}"
            n = subset_store(src, n, store)
            stream = streaming(store, args.vocab, args.steps, args.batch_size, work / f"run{n}")
            c0 = time.process_time()
            proc = subprocess.run([sys.executable, __file__, "--baseline-worker", "--shards", str(store), "--vocab",
                                   args.vocab, "--steps", str(args.steps), "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, check=True)
            base = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((n, stream, base))
            print(f"{n} scenes: stream {json.dumps(stream)} | baseline {json.dumps(base)} "
                  f"(driver CPU {time.process_time() - c0:.1f}s)", flush=True)
    print(f"\n{'scenes':>6} {'stream RSS MB':>14} {'baseline RSS MB':>16} {'RSS ratio':>10} {'stream sc/s':>12} "
          f"{'baseline sc/s':>14} {'baseline tokenize s (CPU)':>26}")
    for n, s, b in rows:
        print(f"{n:>6} {s['peak_rss_mb']:>14.0f} {b['peak_rss_mb']:>16.0f} {b['peak_rss_mb'] / s['peak_rss_mb']:>9.2f}x "
              f"{s['scenes_per_s']:>12.2f} {b['scenes_per_s']:>14.2f} "
              f"{b['tokenize_s']:>17.0f} ({b['tokenize_cpu_s']:.0f})")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
