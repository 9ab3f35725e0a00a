#!/usr/bin/env bash
# The main job on the embedded defaults: fine-tune all-MiniLM-L6-v2 with entmax15 attention on MR (a short run),
# measure attention vs input influence per layer and head on MR test sentences, and write the model card.
# Every step resumes: re-running after an interruption continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-out/mr-entmax15}
STEPS=${STEPS:-150}
LIMIT=${LIMIT:-100}
if [ ! -d "$OUT/final" ]; then
  resume=(); [ -d "$OUT/checkpoints" ] && resume=(--resume)
  "$PY" -m hf_sparse_attn.training --dataset mr --attn-impl entmax15 --max-steps "$STEPS" --max-length 64 \
    --output-dir "$OUT" "${resume[@]}"
fi
# The default tier (paper: the measurement set of the study) on 100 sentences; the forecast is printed first.
resume=(); [ -d "$OUT/eval" ] && resume=(--resume)
"$PY" -m eval_suite "$OUT/final" --dataset mr --split test --limit "$LIMIT" --max-length 64 \
  --output-dir "$OUT/eval" --card "${resume[@]}"
# Accuracy, attention sparsity per layer, and, for undefined heads, why in words and what to try.
echo
"$PY" -m eval_suite.console_summary "$OUT/eval/results.json" --training-metrics "$OUT/final/final_metrics.json"
echo "results: $OUT/eval/results.json   report: $OUT/eval/report.html   card: $OUT/final/README.md"
