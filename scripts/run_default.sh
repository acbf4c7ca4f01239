#!/usr/bin/env bash
# Quickstart 1: install, then run the main job on the embedded default
# (all-MiniLM-L6-v2 + SST-2, rank ablation r = 4, 8, 16). Extra arguments are passed on,
# e.g. `bash scripts/run_default.sh --mode single`.
# Data: LORAEXP_DATA_DIR if set, else ../shared/data when it exists, else the Hub.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${LORAEXP_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export LORAEXP_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/python experiments/lora_finetune.py --task sst2 --mode ablation --ablation-type rank "$@"
