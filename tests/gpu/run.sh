#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU (run from the repository root).
# Their Python dependencies are pure Python and travel with the tree, because the
# GPU machine may have no package index:
#   pip install --target .cache/gpu-deps prometheus-client nvidia-ml-py
set -euo pipefail
out="${OUT:-${1:-/tmp}}"
python3 --version
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
PYTHONPATH=".cache/gpu-deps:." python3 tests/gpu/check_gpu_metrics.py --out "$out"
