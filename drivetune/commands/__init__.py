"""The `drivetune` commands: one module per command, each with `add_arguments(parser)` and `run(args) -> int`.

Command modules are the one face that may import every package; no library imports them (or `drivetune.cli`).
At module level they import only libraries that load none of torch, Ray, pyarrow, matplotlib, httpx or the WOMD
protos, and import the others inside `run`, so `drivetune COMMAND --help` stays fast. Libraries report bad input with
`drivetune.errors` (exit 2).
"""
