"""`drivetune` command line. Each command lives in its own module, imported only when that command runs.

A command module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Sub-grouped commands ("vocab build") use a space in the name.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("drivetune.ingest", "WOMD Scenario TFRecords -> Parquet shards (parallel on Ray, resumable)"),
    "inspect": ("drivetune.inspect_cmd", "summarise scenarios in TFRecords or shards"),
    "synth": ("drivetune.synth.cli", "generate synthetic WOMD-format scenarios"),
    "render": ("drivetune.render", "draw a scenario (and rollouts) to PNG"),
    "realism": ("drivetune.realism.cli", "WOSAC realism metrics of a rollout set"),
    "vocab build": ("drivetune.tokenizer.cli", "build per-type motion vocabularies (k-disks)"),
    "train pretrain": ("cluster.pretrain", "behaviour-cloning pretraining on Ray Train"),
    "simulate": ("drivetune.simulate_cmd", "closed-loop rollouts of a checkpoint on scenes"),
    "serve": ("services.cli", "closed-loop simulation service (Ray Serve, HTTP)"),
    "serve-demo": ("services.demo", "example closed loop against the service: SDC from the log, scored"),
}


def _top_help() -> str:
    lines = ["usage: drivetune COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`drivetune COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    for width in (2, 1):
        name = " ".join(argv[:width])
        if len(argv) >= width and name in COMMANDS:
            return name, argv[width:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = _resolve(argv)
    if found is None:
        print(_top_help(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = found
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"drivetune {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
