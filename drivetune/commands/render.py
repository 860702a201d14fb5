"""`drivetune render SCENES... --out FILE [--scenario-id ID] [--step T] [--radius M]`: one scenario drawn by
`drivetune.render`."""

from __future__ import annotations

import argparse

from drivetune.commands.common import add_scenes_argument
from drivetune.render import IMAGE_FORMATS, image_format, render_scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scenes_argument(parser)
    parser.add_argument("--scenario-id", default=None, help="scenario to draw (default: the first)")
    parser.add_argument("--out", required=True, help=f"output image ({', '.join('.' + s for s in IMAGE_FORMATS)})")
    parser.add_argument("--step", type=int, default=None,
                        help="step (0-90) to draw boxes and signals at (default: the current step, 10)")
    parser.add_argument("--radius", type=float, default=None,
                        help="half-width in metres of a fixed view around the SDC (default: framed to the agents)")


def run(args: argparse.Namespace) -> int:
    from drivetune.sources import load_scene  # pyarrow loads here, not for --help

    image_format(args.out)  # refuse a bad suffix before reading anything
    if args.radius is not None and not args.radius > 0:
        raise ValueError(f"--radius must be a positive number of metres, got {args.radius}")
    scene = load_scene(args.scenes, args.scenario_id)
    out = render_scene(scene, args.out, step=args.step, radius=args.radius)
    print(f"wrote {out} (scenario {scene.scenario_id})")
    return 0
