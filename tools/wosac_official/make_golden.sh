#!/usr/bin/env bash
# Regenerate tests/fixtures/wosac_golden.json from the official WOSAC evaluator.
#   bash tools/wosac_official/make_golden.sh            # all golden scenes
#   GPUDRIVE=5 bash tools/wosac_official/make_golden.sh # fewer womd-gpudrive scenes
# Phase 1 (project venv): tests/wosac_cases.py rollouts -> $INPUTS/*.npz + manifest.json.
# Phase 2 (side venv of setup_venv.sh): official metrics -> the golden JSON.
# About 45-60 min on a busy 2-core machine; logs to $INPUTS/*.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${WOSAC_VENV:-/root/wosac-venv}"
INPUTS="${INPUTS:-/tmp/wosac_inputs}"
GPUDRIVE="${GPUDRIVE:-20}"
OUT="${OUT:-tests/fixtures/wosac_golden.json}"
[ -x "$VENV/bin/python" ] || bash tools/wosac_official/setup_venv.sh "$VENV"
mkdir -p "$INPUTS"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
start=$(date +%s)
nice -n 10 .venv/bin/python tools/wosac_official/make_inputs.py --out "$INPUTS" --gpudrive "$GPUDRIVE" \
  2>&1 | tee "$INPUTS/phase1.log"
nice -n 10 "$VENV/bin/python" -u tools/wosac_official/golden_official.py --inputs "$INPUTS" --out "$OUT" \
  2>&1 | grep --line-buffered -v "TF-TRT Warning\|cpu_feature_guard\|rebuild TensorFlow" | tee "$INPUTS/phase2.log"
echo "golden run: $(( $(date +%s) - start )) s wall"
