#!/usr/bin/env bash
# Build the side virtualenv that holds the official Waymo Open Sim Agents (WOSAC) evaluator.
# It lives OUTSIDE the repo and is independent of blm_gym's dependencies (the package pulls
# TensorFlow 2.13, numpy 1.23, protobuf 4). Usage:  bash tools/wosac_official/setup_venv.sh [VENV_DIR]
set -euo pipefail
VENV="${1:-${WOSAC_VENV:-/root/wosac-venv}}"
PY="${WOSAC_PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 /root/.pyenv/versions/3.11*/bin/python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2]==(3,11)' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "need a Python 3.11 interpreter (set WOSAC_PYTHON)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade "pip<25" >/dev/null
# constraints.txt pins every package to the versions the golden file was made with (TensorFlow
# 2.13.0, numpy 1.23.5, protobuf 4.25.9); WOSAC_UNPINNED=1 lets pip choose.
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ "${WOSAC_UNPINNED:-0}" = 1 ]; then
  "$VENV/bin/python" -m pip install "waymo-open-dataset-tf-2-12-0==1.6.7"
else
  "$VENV/bin/python" -m pip install -c "$HERE/constraints.txt" "waymo-open-dataset-tf-2-12-0==1.6.7"
fi
TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" - <<'PY'
from importlib import metadata
import tensorflow as tf
from waymo_open_dataset.wdl_limited.sim_agents_metrics import metrics  # noqa: F401
print("ok: waymo-open-dataset-tf-2-12-0", metadata.version("waymo-open-dataset-tf-2-12-0"), "tensorflow", tf.__version__)
PY
