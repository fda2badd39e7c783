#!/usr/bin/env bash
# Create .venv and install hazematching with every extra. torch is pinned because an unpinned
# `pip install torch` may pull a multi-GB build; 2.14.1 + torchvision 0.29.1 is the pair that
# imports together (torchvision is needed by LPIPS/FID) and runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
.venv/bin/python -m pip install -q -e ".[all]"
