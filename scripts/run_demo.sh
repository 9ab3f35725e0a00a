#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the main job end to end on the embedded defaults (MiniLM + MR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec bash scripts/main_job.sh
