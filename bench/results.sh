#!/usr/bin/env bash
# `make results`: the data, the BC model and the SMART-R1 Table-3-style ablation behind docs/results.md.
#   300 synthetic training scenes (seed 7) + 16 held-out ones (seed 8) -> shards -> vocabularies -> BC (micro, 200
#   steps) -> bench/pipeline.py (7 recipes x 3 training seeds, held-out synthetic + real WOMD, Warm-K table).
# Long: about 75 min of the ablation on 2 CPU cores after ~10 min of data and BC. Re-running resumes every part.
set -euo pipefail

cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
DT=.venv/bin/drivetune
O=${RESULTS_DIR:-runs/results_data}
[[ -d $O/synth ]] || "$DT" synth --num-scenes 300 --out "$O/synth" --seed 7 --workers 2
[[ -d $O/heldout ]] || "$DT" synth --num-scenes 16 --out "$O/heldout" --seed 8 --workers 1
"$DT" ingest "$O/synth" --out "$O/shards" --shard-size 50 --workers 2 --no-progress
[[ -f $O/vocab.safetensors ]] || "$DT" vocab build "$O/shards" --out "$O/vocab.safetensors" --sizes 256 128 128
"$DT" train pretrain --config configs/pretrain_micro.yaml run_dir="$O/bc" data.shards="$O/shards" \
  data.vocab="$O/vocab.safetensors" max_steps=200 eval_scenes=8
.venv/bin/python bench/pipeline.py --bc "$O/bc" --shards "$O/shards" --heldout "$O/heldout" --seeds 0 1 2 \
  --sft-iters 4 --rl-iters 10 --heldout-scenes 16 --grid-scenes 8 --out runs/results --doc docs/results.md
