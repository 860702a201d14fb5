"""`drivetune vocab build`: k-disks motion vocabularies from scenes, with a per-type reconstruction report."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from drivetune.scene import Scene
from drivetune.tokenizer.kdisks import DEFAULT_COVERAGE, DEFAULT_JITTER, DEFAULT_MAX_SEGMENTS, DEFAULT_SIZES
from drivetune.tokenizer.kdisks import DEFAULT_TOLERANCES, build_vocab
from drivetune.tokenizer.layout import TYPE_NAMES
from drivetune.tokenizer.matching import reconstruction_errors, tokenize_scene
from drivetune.tokenizer.motion import MotionVocab

log = logging.getLogger("drivetune.vocab")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, nargs="+", help="shard dirs, Parquet shards, TFRecords or globs")
    p.add_argument("--out", required=True, help="output vocabulary file (.safetensors)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="tokens per type: one value for all, or VEHICLE PEDESTRIAN CYCLIST (default %(default)s)")
    p.add_argument("--tolerances", type=float, nargs="+", default=list(DEFAULT_TOLERANCES),
                   help="k-disks radius in metres of mean corner distance: one value or three (default %(default)s)")
    p.add_argument("--max-scenes", type=int, default=None, help="use at most this many scenes to build")
    p.add_argument("--max-segments", type=int, default=DEFAULT_MAX_SEGMENTS,
                   help="segments per type after dedup, half of them jittered copies (default %(default)s)")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE,
                   help="share of segments the disks must cover; radii grow from --tolerances until they do "
                        "(0 keeps --tolerances; default %(default)s)")
    p.add_argument("--no-jitter", action="store_true", help="cluster logged segments only (no corrective copies)")
    p.add_argument("--eval-scenes", type=int, default=50,
                   help="scenes for the reconstruction report: the ones after the build scenes when --max-scenes "
                        "leaves some (held-out), else the first build scenes (in-sample); 0 skips")
    p.add_argument("--seed", type=int, default=0)


def _three(values: list, name: str) -> tuple:
    if len(values) == 1:
        return tuple(values) * 3
    if len(values) != 3:
        raise SystemExit(f"error: --{name} takes 1 or 3 values (vehicle pedestrian cyclist), got {len(values)}")
    return tuple(values)


def report(vocab: MotionVocab, scenes: Iterable[Scene]) -> dict[str, dict[str, float]]:
    """Per-type reconstruction error of rolling matching, matched vs logged (metres / degrees)."""
    tv = vocab.to_torch("cpu")
    parts: dict[str, list[np.ndarray]] = {}
    for scene in scenes:
        for key, errs in reconstruction_errors(scene, tokenize_scene(scene, tv), tv).items():
            parts.setdefault(key, []).append(errs)
    out: dict[str, dict[str, float]] = {}
    for name in TYPE_NAMES:
        pos = np.concatenate(parts.get(f"{name}_pos", [np.zeros(0)]))
        if pos.size == 0:
            continue
        head = np.degrees(np.concatenate(parts[f"{name}_heading"]))
        p10 = np.concatenate(parts[f"{name}_pos10hz"])
        out[name] = {
            "boundaries": int(pos.size),
            "pos_mean_m": float(pos.mean()),
            "pos_p99_m": float(np.percentile(pos, 99)),
            "pos_max_m": float(pos.max()),
            "heading_mean_deg": float(head.mean()),
            "heading_max_deg": float(head.max()),
            "pos10hz_mean_m": float(p10.mean()) if p10.size else float("nan"),
        }
    return out


def format_report(stats: dict[str, dict[str, float]]) -> str:
    lines = [f"{'type':<11}{'n':>8}{'pos mean':>10}{'p99':>8}{'max':>8}{'head mean':>11}{'max':>8}{'10Hz mean':>11}"]
    for name, s in stats.items():
        lines.append(
            f"{name:<11}{s['boundaries']:>8d}{s['pos_mean_m']:>9.3f}m{s['pos_p99_m']:>7.3f}m{s['pos_max_m']:>7.2f}m"
            f"{s['heading_mean_deg']:>9.2f}deg{s['heading_max_deg']:>6.1f}deg{s['pos10hz_mean_m']:>10.3f}m"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sizes, tols = _three(args.sizes, "sizes"), _three(args.tolerances, "tolerances")
    if not 0.0 <= args.coverage < 1.0:
        raise SystemExit(f"error: --coverage must be in [0, 1), got {args.coverage}")
    try:
        vocab = _build(args, sizes, tols)
    except (ValueError, OSError) as exc:  # unreadable sources, corrupt records, bad scenes, bad sizes
        print(f"drivetune vocab build: error: {exc}", file=sys.stderr)
        return 2
    path = vocab.save(args.out)
    print(json.dumps({"out": str(path), "hash": vocab.hash, "sizes": vocab.sizes.tolist()}))
    return 0


def _build(args: argparse.Namespace, sizes: tuple, tols: tuple) -> MotionVocab:
    from drivetune.sources import iter_scenes

    stream: Iterator[Scene] = iter_scenes(args.shards)
    held: list[Scene] = []
    held_out = args.max_scenes is not None and args.eval_scenes > 0

    def build_stream() -> Iterator[Scene]:
        source = stream if args.max_scenes is None else itertools.islice(stream, args.max_scenes)
        for scene in tqdm(source, desc="scenes", unit="scene", total=args.max_scenes, disable=None):
            if not held_out and len(held) < args.eval_scenes:
                held.append(scene)
            yield scene

    t0 = time.perf_counter()
    jitter = None if args.no_jitter else DEFAULT_JITTER
    vocab = build_vocab(build_stream(), sizes, tols, args.max_segments, args.seed, jitter, args.coverage)
    if vocab.info["scenes"] == 0:
        raise ValueError(f"no scenes in {args.shards}")
    build_s = time.perf_counter() - t0
    if held_out:
        held = list(itertools.islice(stream, args.eval_scenes))
        if not held:  # --max-scenes took everything: fall back to the first build scenes
            held_out = False
            held = list(itertools.islice(iter_scenes(args.shards), args.eval_scenes))
    log.info("built %s from %d scenes in %.1fs", vocab.summary(), vocab.info["scenes"], build_s)
    for name in TYPE_NAMES:
        st = vocab.info[name]
        log.info("%s: %d tokens, radius %.3f m, %d segments, %d zero-motion, %d outside every disk", name,
                 st["tokens"], st["tolerance"], st["segments"], st["zero_motion_segments"], st["uncovered_segments"])
    if held:
        stats = report(vocab, tqdm(held, desc="matching", unit="scene", disable=None))
        where = "held-out" if held_out else "in-sample"
        vocab.info["reconstruction"] = {"scenes": len(held), "split": where, **stats}
        print(f"reconstruction error, rolling matching vs logged, {len(held)} {where} scenes:")
        print(format_report(stats))
    vocab.info["build_seconds"] = round(build_s, 2)
    return vocab
