#!/usr/bin/env bash
# `make results`: the data and the SMART-R1 Table-3-style ablation behind docs/results.md, post-training the shipped
# base (base/micro, `make base`):
#   300 synthetic training scenes (seed 7) + 64 held-out ones (seed 8) -> shards -> bench/pipeline.py (7 recipes x 3
#   training seeds from the base, held-out synthetic + real WOMD, Warm-K table).
# Long: about 80 min on 2 CPU cores (2026-12-07: 77 min; 19 checkpoints x 66 scenes x 32 rollouts of evaluation, 2 Ray
# tasks each). Re-running resumes every part.
set -euo pipefail

cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
DT=.venv/bin/drivetune
O=${RESULTS_DIR:-runs/results_data}
[[ -d $O/synth ]] || "$DT" synth --num-scenes 300 --out "$O/synth" --seed 7 --workers 2
[[ -d $O/heldout ]] || "$DT" synth --num-scenes 64 --out "$O/heldout" --seed 8 --workers 1
"$DT" ingest "$O/synth" --out "$O/shards" --shard-size 50 --workers 2 --no-progress
.venv/bin/python bench/pipeline.py --bc base/micro --shards "$O/shards" --heldout "$O/heldout" --seeds 0 1 2 \
  --sft-iters 4 --rl-iters 10 --heldout-scenes 64 --grid-scenes 8 --out runs/results --doc docs/results.md
