"""The work of `drivetune vocab build` (arguments in `drivetune.commands.vocab_build`): k-disks motion vocabularies from scenes,
with a per-type reconstruction report."""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np

from drivetune.progress import tracked
from drivetune.scene import Scene
from drivetune.tokenizer.kdisks import DEFAULT_JITTER, build_vocab
from drivetune.tokenizer.layout import TYPE_NAMES
from drivetune.tokenizer.matching import reconstruction_errors, tokenize_scene
from drivetune.tokenizer.motion import MotionVocab

log = logging.getLogger("drivetune.vocab")


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


def build(args: argparse.Namespace, sizes: tuple, tols: tuple) -> MotionVocab:
    """The vocabulary `drivetune vocab build` asks for (args as parsed by `drivetune.commands.vocab_build`), with its report."""
    from drivetune.sources import iter_scenes

    stream: Iterator[Scene] = iter_scenes(args.scenes)
    held: list[Scene] = []
    held_out = args.max_scenes is not None and args.eval_scenes > 0

    def build_stream() -> Iterator[Scene]:
        source = stream if args.max_scenes is None else itertools.islice(stream, args.max_scenes)
        for scene in tracked(source, args.max_scenes, "vocab scenes", "scene"):
            if not held_out and len(held) < args.eval_scenes:
                held.append(scene)
            yield scene

    t0 = time.perf_counter()
    jitter = None if args.no_jitter else DEFAULT_JITTER
    vocab = build_vocab(build_stream(), sizes, tols, args.max_segments, args.seed, jitter, args.coverage)
    if vocab.info["scenes"] == 0:
        raise ValueError(f"no scenes in {args.scenes}")
    build_s = time.perf_counter() - t0
    if held_out:
        held = list(itertools.islice(stream, args.eval_scenes))
        if not held:  # --max-scenes took everything: fall back to the first build scenes
            held_out = False
            held = list(itertools.islice(iter_scenes(args.scenes), args.eval_scenes))
    log.info("built %s from %d scenes in %.1fs", vocab.summary(), vocab.info["scenes"], build_s)
    for name in TYPE_NAMES:
        st = vocab.info[name]
        log.info("%s: %d tokens, radius %.3f m, %d segments, %d zero-motion, %d outside every disk", name,
                 st["tokens"], st["tolerance"], st["segments"], st["zero_motion_segments"], st["uncovered_segments"])
    if held:
        stats = report(vocab, tracked(held, len(held), "matching", "scene"))
        where = "held-out" if held_out else "in-sample"
        vocab.info["reconstruction"] = {"scenes": len(held), "split": where, **stats}
        print(f"reconstruction error, rolling matching vs logged, {len(held)} {where} scenes:")
        print(format_report(stats))
    vocab.info["build_seconds"] = round(build_s, 2)
    return vocab
