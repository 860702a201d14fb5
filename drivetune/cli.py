"""`drivetune` command line: the command table and the dispatch. Each command lives in its own module of
`drivetune.commands`, imported only when that command runs.

A command module exposes `add_arguments(parser)` and `run(args) -> int`, and imports nothing heavy (torch, ray) at
module level, so `--help` stays fast. Every failure is reported as `drivetune COMMAND: error: ...`: exit 2 for bad
arguments or input (argparse errors, and any ValueError / OSError a command raises: `drivetune.errors.InputError` and
its kinds are ValueErrors), 1 for work that failed (a command returns 1, or raised anything else: its traceback only
with --verbose), 130 for Ctrl-C, 141 when the reader of stdout went away (`drivetune -h | head`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback
from importlib import metadata

from drivetune.ray_runtime import VERBOSE_ENV  # --verbose sets it: Ray's start-up logs then reach the terminal

# name -> (module, one-line help); the modules are in drivetune.commands. Sub-grouped commands ("vocab build") use a
# space in the name.
COMMANDS: dict[str, tuple[str, str]] = {name: (f"drivetune.commands.{module}", help_) for name, module, help_ in (
    ("ingest", "ingest", "WOMD Scenario TFRecords -> Parquet shards (parallel on Ray, resumable)"),
    ("inspect", "inspect", "summarise scenarios in TFRecords or shards"),
    ("synth", "synth", "generate synthetic WOMD-format scenarios"),
    ("render", "render", "draw a scenario (and rollouts) to PNG, JPEG, SVG or PDF"),
    ("realism", "realism", "WOSAC realism metrics of a rollout set"),
    ("vocab build", "vocab_build", "build per-type motion vocabularies (k-disks)"),
    ("train pretrain", "train_pretrain", "behaviour-cloning pretraining on Ray Train"),
    ("simulate", "simulate", "closed-loop rollouts of a checkpoint on scenes"),
    ("train sft", "train_sft", "CAT-K closed-loop SFT with Ray rollout workers and a learner"),
    ("train rft", "train_rft", "RL post-training (MPO / GRPO / GRBO) with Ray rollout workers and a learner"),
    ("train pipeline", "train_pipeline", "stages (pretrain, sft, rft, ...) in one run directory and Ray session"),
    ("lineage", "lineage", "the stage -> checkpoint -> parent -> reference chain of a run"),
    ("plot", "plot", "draw a run's metrics.jsonl curves to a PNG"),
    ("eval", "eval", "compare checkpoints on the same scenes: realism, bootstrap CIs, differences"),
    ("serve", "serve", "closed-loop simulation service (Ray Serve, HTTP)"),
    ("serve-demo", "serve_demo", "example closed loop against the service: SDC from the log, scored"),
)}


def version() -> str:
    try:
        return metadata.version("drivetune")
    except metadata.PackageNotFoundError:
        return "unknown"


def _top_help() -> str:
    lines = ["usage: drivetune [--version] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`drivetune COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def _group_help(group: str) -> str:
    """Usage of a command group ("train", "vocab"): its subcommands."""
    subs = [(name.split(" ", 1)[1], help_) for name, (_, help_) in COMMANDS.items() if name.startswith(f"{group} ")]
    lines = [f"usage: drivetune {group} SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {sub:<16} {help_}" for sub, help_ in subs]
    lines += ["", f"`drivetune {group} SUBCOMMAND --help` shows its options."]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    for width in (2, 1):
        name = " ".join(argv[:width])
        if len(argv) >= width and name in COMMANDS:
            return name, argv[width:]
    return None


def _unknown(argv: list[str]) -> str:
    words = {n.split()[0] for n in COMMANDS}
    name = argv[0] if argv[0] not in words else " ".join(argv[:2])
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (commands: {', '.join(COMMANDS)})"
    return f"drivetune: error: unknown command {name!r}{hint}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` where there is a meaningful default (not for flags, unset options, required ones, or
    where the help text already speaks of its default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of command `name` (imports only its module)."""
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"drivetune {name}", description=help_,
                                     formatter_class=_HelpFormatter)
    module.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="also show Ray's start-up and worker logs")
    parser.set_defaults(_run=module.run)
    return parser


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        print(f"drivetune {version()}")
        return 0
    found = _resolve(argv)
    groups = {name.split()[0] for name in COMMANDS if " " in name}
    if found is None and argv[0] in groups and (len(argv) == 1 or argv[1].startswith("-")):
        if argv[1:2] in (["-h"], ["--help"]):
            print(_group_help(argv[0]))
            return 0
        print(_group_help(argv[0]), file=sys.stderr)
        print(f"drivetune {argv[0]}: error: a subcommand is needed", file=sys.stderr)
        return 2
    if found is None:
        print(_top_help(), file=sys.stderr)
        print(_unknown(argv), file=sys.stderr)
        return 2
    name, rest = found
    parser = build_parser(name)
    args = parser.parse_args(rest)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as exc:  # bad input the command did not catch itself: no traceback
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"drivetune {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drivetune {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # work that failed (e.g. Ray could not start): a message, the traceback with --verbose
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (--verbose shows the traceback)"
        print(f"drivetune {name}: error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _dispatch(argv)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:  # during imports or parsing
        print("drivetune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader closed stdout (`| head`): stop quietly, leave no flush error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
