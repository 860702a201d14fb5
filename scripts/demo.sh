#!/usr/bin/env bash
# drivetune demo (run by `make demo` from the repo root): ingest the real WOMD samples into Parquet shards on a
# local Ray, then inspect the shards. Later stages are appended as they land.
set -euo pipefail

cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
DT=.venv/bin/drivetune
DATA=../shared/data/womd
OUT=runs/demo

for f in "$DATA/motion_data_one_scenario.tfrecord" "$DATA/womd_scenario_input.tfrecord"; do
  [[ -f "$f" ]] || { echo "demo: missing sample data $f (a checkout needs ../shared beside it)" >&2; exit 1; }
done
mkdir -p "$OUT"

echo "== 1. ingest the two real WOMD scenarios into Parquet shards (Ray, 2 workers, resumable)"
"$DT" ingest "$DATA/motion_data_one_scenario.tfrecord" "$DATA/womd_scenario_input.tfrecord" \
  --out "$OUT/shards" --shard-size 1 --workers 2

echo "== 2. inspect the shards"
"$DT" inspect "$OUT/shards"
"$DT" inspect "$OUT/shards" --json > "$OUT/inspect.json"
echo "   per-scenario JSON summary: $OUT/inspect.json"
