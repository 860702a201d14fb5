#!/usr/bin/env bash
# drivetune demo, run by `make demo` from the repo root: the product's story on the embedded default data (the
# procedural synthetic world) and the real WOMD scenario in ../shared:
#   synth -> ingest (Ray) -> train pipeline from the shipped base (base/micro: BC-pretrained v2 model, `make base`)
#   [CAT-K SFT -> GRBO -> SFT] (Ray rollout workers + learner) -> eval (the base against every stage on held-out
#   scenes) -> simulate + submission -> serve-demo (the HTTP closed-loop service on Ray Serve, queried step by step)
# Everything lands in runs/demo/. Re-running resumes: finished shards and finished stages are skipped.
set -euo pipefail

cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
DT=.venv/bin/drivetune
OUT=runs/demo
SCENES=${DEMO_SCENES:-200}
RL_ITERS=${DEMO_RL_ITERS:-16}
BASE=base/micro  # every stage starts from the previous one; the first from this base (its vocabulary too)
REAL=../shared/data/womd/motion_data_one_scenario.tfrecord
mkdir -p "$OUT"
SECONDS=0

echo "== 1. generate $SCENES synthetic WOMD-format training scenarios and 8 held-out ones (another seed)"
[[ -d "$OUT/synth" ]] || "$DT" synth --num-scenes "$SCENES" --out "$OUT/synth" --seed 7 --workers 2
[[ -d "$OUT/heldout" ]] || "$DT" synth --num-scenes 8 --out "$OUT/heldout" --seed 8 --workers 1

echo "== 2. ingest the training scenes into Parquet shards on a local Ray (2 workers, resumable)"
"$DT" ingest "$OUT/synth" --out "$OUT/shards" --shard-size 50 --workers 2 --no-progress
"$DT" render "$OUT/shards" --out "$OUT/synth_scene.png"

echo "== 3. the shipped base: $BASE (v2 micro, BC on 1,000 synthetic scenes; base/micro.json: lineage, hash)"
"$DT" lineage "$BASE"

echo "== 4. train pipeline from the base: CAT-K closed-loop SFT -> GRBO ($RL_ITERS iterations) -> SFT"
"$DT" train pipeline --config configs/pipeline_micro.yaml run_dir="$OUT/pipeline" shards="$OUT/shards" \
  init="$BASE" \
  "stages=[{name: sft, kind: sft, config: configs/sft_catk_micro.yaml, overrides: [max_iters=4]},
           {name: grbo, kind: rft, config: configs/rft_grbo_micro.yaml, overrides: [max_iters=$RL_ITERS]},
           {name: sft2, kind: sft, config: configs/sft_catk_micro.yaml, overrides: [max_iters=4, algo.beta=8]}]"
# (the final SFT's algo.beta: exact KL to the GRBO policy it starts from, so it keeps RL's gains: docs/results.md)
"$DT" lineage "$OUT/pipeline"
"$DT" plot "$OUT/pipeline/01-grbo" --out "$OUT/grbo_curves.png"

EVAL_SCENES=("$OUT/heldout")
[[ -f "$REAL" ]] && EVAL_SCENES+=("$REAL")
echo "== 5. evaluate the base against every stage: the same held-out scenes, seeds and sampler (32 rollouts)"
"$DT" eval "${EVAL_SCENES[@]}" --checkpoints "$BASE" "$OUT"/pipeline/00-sft \
  "$OUT"/pipeline/01-grbo "$OUT"/pipeline/02-sft2 --rollouts 32 --batch-scenes 2 --sampler topk --k 16 \
  --out "$OUT/eval"

# The last stage is served: its KL to the GRBO policy keeps RL's gains (README, docs/results.md)
echo "== 6. the post-trained model (the final SFT stage) on the real WOMD scenario: rollouts, realism table, submission, PNG"
if [[ -f "$REAL" ]]; then
  "$DT" simulate "$REAL" --checkpoint "$OUT/pipeline/02-sft2" --rollouts 32 --sampler topk --k 16 \
    --out "$OUT/simulate" --submission --render
else
  echo "   (../shared/data/womd not found: skipped)"
fi
if [[ -f "$REAL" ]]; then
  echo "== 7. serve it: a private Ray Serve service; a client drives the SDC from the log, the service the others (4 x 8 s)"
  "$DT" serve-demo --checkpoint "$OUT/pipeline/02-sft2" --scenario "$REAL" --out "$OUT/serve-demo" --rollouts 4 \
    --sampler topk --k 16
fi
echo "== done in ${SECONDS} s: see $OUT/ (pipeline stages + lineage, eval/eval.md + charts + side-by-side render,"
echo "   grbo_curves.png, simulate/ rollouts + submission, serve-demo/)"
