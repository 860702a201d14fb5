#!/usr/bin/env bash
# `make base`: remake the shipped base checkpoint (base/micro): BC pretraining of the v2 `micro` model on 1,000
# synthetic scenes (seed 7; the demo's 200 are the first 200 of them) until held-out NLL stops improving or the run
# ends (configs/pretrain_base.yaml: 600 steps of 8 scenes). Resumable: a rerun continues the run in
# runs/base/. The checkpoint with the lowest held-out NLL is copied to base/micro with its lineage and weights hash.
set -euo pipefail

cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
DT=.venv/bin/drivetune
OUT=runs/base
mkdir -p "$OUT"

[[ -d "$OUT/synth" ]] || "$DT" synth --num-scenes "${BASE_SCENES:-1000}" --out "$OUT/synth" --seed 7 --workers 2
"$DT" ingest "$OUT/synth" --out "$OUT/shards" --shard-size 100 --workers 2 --no-progress
[[ -f "$OUT/vocab.safetensors" ]] || "$DT" vocab build "$OUT/shards" --out "$OUT/vocab.safetensors" \
  --sizes 256 128 128
"$DT" train pretrain --config configs/pretrain_base.yaml "$@"
.venv/bin/python -m cluster.base_export "$OUT/bc" --out base/micro --curve docs/images/base_curve.png
