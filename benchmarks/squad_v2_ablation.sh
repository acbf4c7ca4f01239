#!/usr/bin/env bash
# SQuAD 2.0 rank ablation with MiniLM on the local article split (issue 12; benchmarks/README.md,
# "SQuAD 2.0 rank ablation"): r in {4, 8, 16}, configs/squad_v2.yaml (training subset, sequence
# length), then the per-run figures beside the no-answer baseline and the untrained head.
# Usage: LORAEXP_DATA_DIR=../shared/data bash benchmarks/squad_v2_ablation.sh [OUTPUT_DIR]
set -uo pipefail  # no -e: a sweep with a failed run exits 1, and the table should still print
OUT=${1:-results/squad_v2_ablation}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
start=$(date +%s)
"$PY" experiments/lora_finetune.py --task squad_v2 --mode ablation --ablation-type rank --config configs/squad_v2.yaml \
    --output-dir "$OUT" --no-progress 2>&1 | tee "$OUT/squad_v2-rank.log"
echo "wall seconds, whole ablation (3 runs + report): $(( $(date +%s) - start ))"
"$PY" benchmarks/squad_v2_table.py "$OUT/squad_v2-ablation-rank"
