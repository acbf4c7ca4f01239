#!/usr/bin/env bash
# The runs behind docs/report.md and benchmarks/README.md, "Sweep reports (issue 11)": the SST-2
# rank ablation with three seeds and a full fine-tuning baseline, and the method ablation
# (2,000 training examples, all 872 dev examples, 63 optimizer steps per run), each ending with
# its report; then the rank advice's --confirm run and a screenshot of each report.html.
# Usage: LORAEXP_DATA_DIR=../shared/data bash benchmarks/report_sweeps.sh [OUTPUT_DIR]
set -uo pipefail  # no -e: a sweep with a failed run exits 1, and the next steps should still run
OUT=${1:-results/report_sweeps}
PY=${PYTHON:-.venv/bin/python}
SEEDS=42,1337,2024
mkdir -p "$OUT"
"$PY" experiments/lora_finetune.py --task sst2 --mode ablation --ablation-type rank --seeds $SEEDS --baseline full \
    --max-train-samples 2000 --output-dir "$OUT" --set sweep.name=sst2-rank --no-progress 2>&1 | tee "$OUT/sst2-rank.log"
# The method ablation's full fine-tuning and plain LoRA (r = 8) runs are the rank ablation's, same
# configs: copied, they are skipped as completed (as in a shared sweep directory) and not trained twice.
mkdir -p "$OUT/sst2-method"
for run in "$OUT"/sst2-rank/sst2-minilm-full-s* "$OUT"/sst2-rank/sst2-minilm-r8-a16-standard-lr2e-3-s*; do
  cp -r "$run" "$OUT/sst2-method/"
done
"$PY" experiments/lora_finetune.py --task sst2 --mode ablation --ablation-type method --seeds $SEEDS \
    --max-train-samples 2000 --output-dir "$OUT" --set sweep.name=sst2-method --no-progress 2>&1 | tee "$OUT/sst2-method.log"
"$PY" -m loraexp.cli.main report "$OUT/sst2-rank" --confirm 2>&1 | tee "$OUT/sst2-rank-confirm.log"
for sweep in sst2-rank sst2-method; do
  bash scripts/screenshot_report.sh "$OUT/$sweep"
done
