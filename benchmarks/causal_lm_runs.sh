#!/usr/bin/env bash
# The measured runs of the causal-LM / QLoRA figures in the README (SmolLM2-135M, CPU).
# Results go to ${OUT:-results/causal_lm}; then `python benchmarks/causal_lm_figures.py` prints the figures.
#   LORAEXP_DATA_DIR=../shared/data bash benchmarks/causal_lm_runs.sh [shakespeare|qlora|sst2|quant|gsm8k ...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/causal_lm}
RUN=(python experiments/lora_finetune.py --output-dir "$OUT" --no-progress --wandb offline)
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(shakespeare qlora sst2 quant gsm8k)
for step in "${STEPS[@]}"; do
  start=$(date +%s)
  code=0
  case $step in
    shakespeare) "${RUN[@]}" --config configs/lora_full_attention.yaml || code=$? ;;  # LoRA r=8, q/k/v/o, 200 steps
    qlora) "${RUN[@]}" --config configs/qlora_nf4.yaml || code=$? ;;                     # same, NF4 + double quant
    sst2) "${RUN[@]}" --config configs/smollm2_sst2.yaml || code=$? ;;                   # verbalizer, 200 steps
    quant) "${RUN[@]}" --config configs/lora_full_attention.yaml --mode ablation --ablation-type quantization \
             --max-steps 20 --max-eval-samples 32 || code=$? ;;                         # none / nf4 / nf4 + dq
    gsm8k) "${RUN[@]}" --config configs/smollm2_gsm8k.yaml || code=$? ;;                 # SFT + 50-question exact match
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  echo "== $step: $(( $(date +%s) - start )) s, exit code $code (1: a run failed or failed verification)"
done
