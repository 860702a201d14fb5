#!/usr/bin/env bash
# drivetune demo, run by `make demo` from the repo root: the whole pipeline on the embedded default data (the
# procedural synthetic world), then closed-loop rollouts of the pretrained model on a real WOMD scenario.
#   synth -> ingest (Ray) -> inspect -> vocab build -> train pretrain (Ray Train) -> simulate (+ realism, submission)
# Everything lands in runs/demo/. Re-running resumes: finished shards are skipped, training continues its run.
set -euo pipefail

cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
DT=.venv/bin/drivetune
OUT=runs/demo
SCENES=${DEMO_SCENES:-200}
STEPS=${DEMO_STEPS:-150}
REAL=../shared/data/womd/motion_data_one_scenario.tfrecord
mkdir -p "$OUT"

echo "== 1. generate $SCENES synthetic WOMD-format scenarios (TFRecords of official Scenario protos)"
[[ -d "$OUT/synth" ]] || "$DT" synth --num-scenes "$SCENES" --out "$OUT/synth" --seed 7 --workers 2

echo "== 2. ingest them into Parquet shards on a local Ray (2 workers, resumable)"
"$DT" ingest "$OUT/synth" --out "$OUT/shards" --shard-size 50 --workers 2 --no-progress

echo "== 3. inspect the shards (per-scenario JSON in $OUT/inspect.json) and draw the first scene"
"$DT" inspect "$OUT/shards" --json > "$OUT/inspect.json"
.venv/bin/python -c "import json, sys; s = json.load(open(sys.argv[1])); print(len(s), 'scenarios; first:', \
  {k: v for k, v in s[0].items() if not k.endswith('_ids')})" "$OUT/inspect.json"
"$DT" render "$OUT/shards" --out "$OUT/synth_scene.png"

echo "== 4. build the per-type motion vocabularies (k-disks)"
[[ -f "$OUT/vocab.safetensors" ]] || "$DT" vocab build "$OUT/shards" --out "$OUT/vocab.safetensors" \
  --sizes 256 128 128

echo "== 5. pretrain the micro behaviour model with behaviour cloning on Ray Train ($STEPS steps)"
"$DT" train pretrain --config configs/pretrain_micro.yaml run_dir="$OUT/pretrain" \
  data.shards="$OUT/shards" data.vocab="$OUT/vocab.safetensors" max_steps="$STEPS"

if [[ -f "$REAL" ]]; then
  echo "== 6. closed-loop rollouts (32, Warm-K) on the real WOMD scenario, scored with the WOSAC 2025 metric"
  "$DT" simulate "$REAL" --checkpoint "$OUT/pretrain" --rollouts 32 --sampler warmk \
    --out "$OUT/simulate" --submission --render
else
  echo "== 6. (../shared/data/womd not found: closed-loop rollouts on a synthetic scene instead)"
  "$DT" simulate "$OUT/shards" --checkpoint "$OUT/pretrain" --max-scenes 1 --rollouts 32 \
    --sampler warmk --out "$OUT/simulate" --render
fi
echo "== done: see $OUT/ (shards, vocab, pretrain checkpoints + metrics.jsonl, simulate/ rollouts, realism.json, PNGs)"
