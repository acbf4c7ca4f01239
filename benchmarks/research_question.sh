#!/usr/bin/env bash
# The runs behind benchmarks/README.md, "Research question (issue 10)": method ablation and rank
# ablation against full fine-tuning on SST-2 (2,000 training examples, all 872 dev examples), and
# the rank ablation against full fine-tuning on MRPC (the whole training set), 3 seeds each.
# Usage: LORAEXP_DATA_DIR=../shared/data bash benchmarks/research_question.sh [OUTPUT_DIR]
set -uo pipefail  # no -e: a sweep with a failed run exits 1, and the next sweeps should still run
OUT=${1:-results/research_question}
PY=${PYTHON:-.venv/bin/python}
SEEDS=42,1337,2024
mkdir -p "$OUT"
# SST-2: the method ablation and the rank ablation share one sweep directory, so the full
# fine-tuning and plain LoRA (r = 8) runs they have in common train once.
"$PY" experiments/lora_finetune.py --task sst2 --mode ablation --ablation-type method --seeds $SEEDS \
    --max-train-samples 2000 --output-dir "$OUT" --set sweep.name=sst2-2k --no-progress \
    2>&1 | tee "$OUT/sst2-method.log"
cp "$OUT/sst2-2k/summary.md" "$OUT/sst2-2k/summary-method.md"
cp "$OUT/sst2-2k/configurations.csv" "$OUT/sst2-2k/configurations-method.csv"
"$PY" experiments/lora_finetune.py --task sst2 --mode ablation --ablation-type rank --seeds $SEEDS --baseline full \
    --max-train-samples 2000 --output-dir "$OUT" --set sweep.name=sst2-2k --no-progress \
    2>&1 | tee "$OUT/sst2-rank.log"
cp "$OUT/sst2-2k/summary.md" "$OUT/sst2-2k/summary-rank.md"
cp "$OUT/sst2-2k/configurations.csv" "$OUT/sst2-2k/configurations-rank.csv"
"$PY" experiments/lora_finetune.py --task mrpc --mode ablation --ablation-type rank --seeds $SEEDS --baseline full \
    --output-dir "$OUT" --no-progress 2>&1 | tee "$OUT/mrpc-rank.log"
