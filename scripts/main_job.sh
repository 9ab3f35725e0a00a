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
"$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/eval/results.json"))
test = json.load(open(f"{out}/final/final_metrics.json"))["test"]
print(f"\n{r['attn_impl']} MiniLM on MR: test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} "
      f"({test['n_examples']} test sentences); evaluated {r['n_examples']} of them (accuracy {r['accuracy']:.3f})")
for row in r.get("per_layer", []):
    s = row["attention_sparsity"]
    value = f"{s['mean']:.1%} [{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}]" if s["defined"] else "undefined"
    print(f"  layer {row['layer']}: [CLS] attention sparsity over content tokens {value} "
          f"({row['n_heads_defined']} of {row['n_heads']} heads defined)")
print(f"results: {out}/eval/results.json   card: {out}/final/README.md")
PYEOF
