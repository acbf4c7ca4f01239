#!/usr/bin/env bash
# Quickstart 2: install, then run the test suite (CPU, offline). Extra arguments go to pytest.
# Integration tests read real data from LORAEXP_DATA_DIR (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${LORAEXP_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export LORAEXP_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
