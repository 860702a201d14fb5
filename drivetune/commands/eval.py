"""`drivetune eval SCENES... --checkpoints A B ... --rollouts 32 --out DIR`: compare checkpoints on held-out scenes.

Every checkpoint is rolled out on the same scenes with the same sampler and seeds (`drivetune.evaluation`) and scored
with the WOSAC realism metric. Writes under DIR:
  - `eval.json`: settings, per-checkpoint per-scene rows, means, bootstrap intervals, paired differences to the first
    checkpoint and the sampler-grid rows (schema: docs/evaluation.md);
  - `eval.md`: the same as Markdown tables (also printed);
  - `charts/*.png`: means with intervals, event rates and minADE, per-scene meta, the sampler grid;
  - `render/`: one scene's rollouts under the first and the last checkpoint, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from drivetune.atomic import atomic_write_bytes
from drivetune.checkpoint import resolve_checkpoint
from drivetune.commands.common import add_sampler_arguments, add_scenes_argument, check_device
from drivetune.errors import CheckpointError
from drivetune.progress import progress
from drivetune.rollout_config import SDC_MODES_OFFLINE, SamplerConfig

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="checkpoint directories or training run directories (their latest checkpoint); "
                             "differences are taken to the first")
    add_scenes_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--rollouts", type=int, default=32, help="rollouts per scene (WOSAC: 32)")
    add_sampler_arguments(parser, "warmk")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the rollouts (the same for every checkpoint)")
    parser.add_argument("--sdc", default="policy", choices=SDC_MODES_OFFLINE,
                        help="SDC driven by the policy or replayed from the log")
    parser.add_argument("--scenario-id", action="append", default=None, help="only these scenarios (repeatable)")
    parser.add_argument("--max-scenes", type=int, default=None, help="at most this many scenes (in spec order)")
    parser.add_argument("--batch-scenes", type=int, default=1, help="scenes simulated and scored together")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--config", default="2025", choices=("2025", "2024"), help="realism metric config")
    parser.add_argument("--sampler-grid", default=None,
                        help="test-time sampler table, e.g. 'k=8,32 warm_lambda=0,1,4' (fields of the sampler; "
                             "the others from --sampler ...)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over scenes")
    parser.add_argument("--ci-level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--render", default=None, metavar="SCENARIO_ID",
                        help="scene drawn side by side, first vs last checkpoint (default: the first scene)")
    parser.add_argument("--no-render", action="store_true", help="skip the rendering")


def run(args: argparse.Namespace) -> int:
    import torch

    from drivetune.eval_report import format_markdown, render_side_by_side, write_charts
    from drivetune.evaluation import BootstrapConfig, evaluate_checkpoints, load_eval_scenes, parse_sampler_grid

    check_device(args.device)
    sampler = SamplerConfig(kind=args.sampler, k=args.k, temperature=args.temperature, warm_lambda=args.warm_lambda)
    try:
        sampler.validate()
        boot = BootstrapConfig(args.bootstrap, args.ci_level, args.bootstrap_seed).validate()
        grid = parse_sampler_grid(args.sampler_grid, sampler) if args.sampler_grid else []
        if args.rollouts < 1 or args.batch_scenes < 1:
            raise ValueError(f"--rollouts and --batch-scenes must be >= 1 (got {args.rollouts}, {args.batch_scenes})")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available")
        for c in args.checkpoints:
            resolve_checkpoint(c)
        scenes = load_eval_scenes(args.scenes, args.scenario_id, args.max_scenes)
        shown = None if args.no_render else (args.render or scenes[0].scenario_id)
        if shown is not None and shown not in {s.scenario_id for s in scenes}:
            raise ValueError(f"--render {shown}: not among the evaluated scenes")
    except (ValueError, OSError, CheckpointError) as e:
        print(f"drivetune eval: error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    total = len(args.checkpoints) * (1 + len(grid)) * len(scenes)
    with progress(total, "eval", "scene") as bar:  # a bar on a terminal, plain lines in a log
        try:
            result = evaluate_checkpoints(
                args.checkpoints, scenes, args.rollouts, sampler, args.seed, batch_scenes=args.batch_scenes,
                device=args.device, sdc=args.sdc, config=args.config, boot=boot, grid=grid,
                keep_rollouts=[shown] if shown else [], progress=bar.update)
        except (ValueError, OSError, CheckpointError) as e:
            print(f"drivetune eval: error: {e}", file=sys.stderr)
            return 2
    result["settings"]["scenes"] = [str(s) for s in args.scenes]
    kept = [e.pop("rollouts_xy") for e in result["checkpoints"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval.json", [json.dumps(result, indent=2).encode()])
    markdown = format_markdown(result)
    atomic_write_bytes(out / "eval.md", [markdown.encode()])
    charts = write_charts(result, out / "charts")
    if shown is not None:
        scene = next(s for s in scenes if s.scenario_id == shown)
        charts.append(render_side_by_side(scene, result, kept, out / "render"))
    print(markdown)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, " + ", ".join(str(p) for p in charts))
    return 0
