#!/usr/bin/env bash
# Issue 15 device check (CUDA): rollout identity cuda vs cpu, no host sync in the step loop, and bench/rollouts.py on
# cuda next to the CPU engine (1 and 16 threads) and the pre-change engine, all in one run, < 6 minutes.
# Needs devdata/ (made here by `python bench/device_check.py --prepare`; carried to the device). No ray, no WOMD protos.
#   OUT=/some/dir bash bench/device_check.sh        -> $OUT/device_check.log, $OUT/identity.json, $OUT/rollouts*.json
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dt_device_check}
PY=${PYTHON:-python3}
"$PY" -c "import torch" 2>/dev/null || PY=python  # the interpreter that has torch
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
SIZES=${SIZES:-micro tiny}  # model sizes of the 50-agent benchmark
THREADS=$("$PY" -c "import os; print(min(16, os.cpu_count() or 1))")
status=0
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log, remember a failure
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s)"
  timeout "$limit" "$@" || { echo "=== $name FAILED (exit $?)"; status=1; }
}
{
  echo "device check $(date -Is) on $(hostname), $(nproc) cores; git $(git rev-parse --short HEAD 2>/dev/null || echo '-')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  stage imports 30 "$PY" -c "
import sys
for m in ('ray', 'fastapi', 'uvicorn', 'pydantic', 'waymo_open_dataset', 'google_crc32c'):
    sys.modules[m] = None  # importing any of them now fails: the engine path must not need them
import torch, drivetune.closed_loop, drivetune.shards
sys.path[:0] = ['bench', 'tests']
import rollouts, device_check
print('engine imports without ray / fastapi / WOMD protos; torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  stage identity-and-sync 80 "$PY" bench/device_check.py --json "$OUT/identity.json"
  stage rollouts-50-agents 170 "$PY" bench/rollouts.py --scene devdata/motion_data_one_scenario.parquet \
    --sizes $SIZES --threads 1 "$THREADS" --repeats 1 --recompute-sizes --skip-broadcast --no-profile --cuda \
    --json "$OUT/rollouts_50.json"
  stage rollouts-84-agents 60 "$PY" bench/rollouts.py --scene devdata/womd_scenario_input.parquet \
    --sizes micro --threads 1 "$THREADS" --repeats 1 --recompute-sizes --skip-broadcast --no-profile --cuda \
    --json "$OUT/rollouts_84.json"
  echo "=== done $(date +%T), status $status"
  exit "$status"
} 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
