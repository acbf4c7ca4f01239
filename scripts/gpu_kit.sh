#!/usr/bin/env bash
# The GPU kit (docs/gpu.md, "The GPU kit"): what a lent GPU machine without network lacks to
# run loraexp, in the ignored folder .gpu-kit/, carried there next to the working tree.
#
#   bash scripts/gpu_kit.sh build [--clean]   build .gpu-kit/ (here, with .venv's python; PyPI reachable)
#   bash scripts/gpu_kit.sh run [--tiny]      THE command run on the device, from the repository root:
#                                             versions, then tests/gpu (pytest -m gpu), then benchmarks/gpu.py
#   bash scripts/gpu_kit.sh dry-run           here: a .gpu-kit-venv/ with only the device's packages,
#                                             then `run --tiny` with it (CPU)
#
# Device call: run(command="bash scripts/gpu_kit.sh run", carry=[".gpu-kit"], timeout_s=560)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
KIT="$ROOT/.gpu-kit"
VENV_DIR="$ROOT/.gpu-kit-venv"

log() { echo "[gpu-kit] $*"; }

cmd_build() {
  local py="$ROOT/.venv/bin/python"
  if [ ! -x "$py" ]; then
    echo "[gpu-kit] $py not found: run scripts/setup.sh first" >&2
    return 1
  fi
  "$py" "$ROOT/scripts/gpu_kit_build.py" --kit "$KIT" "$@"
}

kit_env() {
  export PYTHONPATH="$ROOT/.gpu-kit/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export LORAEXP_DATA_DIR="$ROOT/.gpu-kit/data"
  export LORAEXP_GPU_KIT="$ROOT/.gpu-kit"
  export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export PYTHONUNBUFFERED=1 LORAEXP_CACHE_DIR=/tmp/loraexp-cache
}

print_versions() {
  "$PY" - <<'EOF'
import importlib, platform, sys
print(f"python       {platform.python_version()} ({sys.executable})")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch        {torch.__version__}  CUDA {torch.version.cuda}  available={cuda}")
    if cuda:
        print(f"GPU          {torch.cuda.get_device_name(0)}  capability {torch.cuda.get_device_capability(0)}")
except Exception as exc:  # noqa: BLE001
    print(f"torch        FAILED: {type(exc).__name__}: {exc}")
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "omegaconf", "liger_kernel",
             "tokenizers", "safetensors", "huggingface_hub", "pyarrow", "fsspec", "dill", "multiprocess",
             "numpy", "triton"):
    try:
        mod = importlib.import_module(name)
        where = getattr(mod, "__file__", None) or "?"
        kit = " (kit)" if "/.gpu-kit/site/" in where else ""
        ver = getattr(mod, "__version__", None)
        if ver is None:
            from importlib import metadata
            try:
                ver = metadata.version(name.replace("_", "-"))
            except metadata.PackageNotFoundError:
                ver = "?"
        print(f"{name:<12} {ver}{kit}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name:<12} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
try:
    import bitsandbytes.cextension as ce
    print(f"bnb library  {getattr(ce.lib, 'compiled_with_cuda', '?') and 'CUDA' or 'CPU'}: "
          f"{sorted(p.name for p in ce.PACKAGE_DIR.glob('libbitsandbytes_*'))}")
except Exception as exc:  # noqa: BLE001
    print(f"bnb library  FAILED: {type(exc).__name__}: {exc}")
EOF
}

cmd_run() {
  local tiny=0
  for a in "$@"; do
    case "$a" in
      --tiny) tiny=1 ;;
      *) echo "usage: gpu_kit.sh run [--tiny]" >&2; return 2 ;;
    esac
  done
  PY="${LORAEXP_KIT_PYTHON:-python3}"
  if [ ! -f "$KIT/MANIFEST.json" ]; then
    echo "[gpu-kit] $KIT/MANIFEST.json missing: build the kit (gpu_kit.sh build) and carry .gpu-kit" >&2
    return 1
  fi
  kit_env
  if [ "$tiny" = 1 ]; then export LORAEXP_GPU_TINY=1; fi
  OUTDIR="${OUT:-$ROOT/.gpu-kit-out}"
  mkdir -p "$OUTDIR"
  log "python: $PY; output: $OUTDIR; tiny: $tiny"
  print_versions 2>&1 | tee "$OUTDIR/gpu-versions.log"

  local tests_rc bench_rc
  timeout 200 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUTDIR/gpu-tests.log"
  tests_rc=$?
  log "tests/gpu: exit $tests_rc"
  timeout 300 "$PY" benchmarks/gpu.py --kit .gpu-kit --out "$OUTDIR" 2>&1 | tee "$OUTDIR/gpu-bench.log"
  bench_rc=$?
  log "benchmarks/gpu.py: exit $bench_rc"
  if [ "$tests_rc" != 0 ] || [ "$bench_rc" != 0 ]; then
    log "FAILED (tests $tests_rc, benchmark $bench_rc; 124 = timed out)"
    return 1
  fi
  log "OK"
}

# The dry-run venv: only packages the device has, at its versions where known. Not
# bitsandbytes, datasets, omegaconf, optuna, wandb, gguf, dill, multiprocess, liger-kernel:
# those come from the kit only.
DEVICE_PACKAGES=(
  "transformers==5.17.0" "accelerate==1.15.0" "safetensors==0.8.0" "tokenizers==0.23.2"
  "huggingface-hub==1.33.0" "numpy==2.5.2" "sentencepiece==0.2.2"
  scipy pandas pyarrow matplotlib rich pyyaml filelock markdown scikit-learn tqdm requests jinja2
  psutil regex xxhash fsspec aiohttp pytest
)
KIT_ONLY="bitsandbytes datasets omegaconf optuna wandb gguf dill multiprocess liger-kernel liger_kernel antlr4-python3-runtime"

pick_python() {
  # A CPU torch 2.13.0 for CPython 3.12 is needed for a 3.12 venv. PyPI's torch 2.13.0 cp312 Linux
  # wheel is the CUDA 13.0 build (526.6 MB, libtorch_cuda.so, requires cuda-toolkit, nvidia-cudnn-cu13,
  # nvidia-nccl-cu13 ...: GBs), so only a local +cpu cp312 wheel counts; else python3.11.
  local py312=/root/.pyenv/versions/3.12.1/bin/python3.12 py311=/root/.pyenv/versions/3.11.7/bin/python3.11
  local tmp
  tmp="$(mktemp -d)"
  if [ -x "$py312" ] && "$ROOT/.venv/bin/python" -m pip download --no-index --no-deps --only-binary=:all: \
       --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp" torch==2.13.0 \
       >/dev/null 2>&1 && ls "$tmp" | grep -q '+cpu'; then
    VENV_PY="$py312"
  else
    VENV_PY="$py311"
    log "no CPU torch 2.13.0 wheel for CPython 3.12 here (the local one is cp311; PyPI's cp312 is the multi-GB"
    log "CUDA build): the dry-run venv uses Python 3.11 ($py311) instead of the device's 3.12"
  fi
  rm -rf "$tmp"
}

cmd_dry_run() {
  if [ ! -f "$KIT/MANIFEST.json" ]; then
    cmd_build || return 1
  fi
  local spec stamp="$VENV_DIR/.loraexp-dry-run-complete" pkgs=("${DEVICE_PACKAGES[@]}")
  pick_python
  if [ "$VENV_PY" != /root/.pyenv/versions/3.12.1/bin/python3.12 ]; then
    # numpy 2.5 needs Python >= 3.12: the newest numpy for 3.11 instead of the device's 2.5.2
    pkgs=("${pkgs[@]/numpy==2.5.2/numpy}")
    log "numpy: the newest for Python 3.11 (numpy 2.5.2, the device's, needs Python >= 3.12)"
  fi
  spec="torch==2.13.0 peft==$("$ROOT/.venv/bin/python" -c 'from importlib.metadata import version; print(version("peft"))') ${pkgs[*]}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VENV_PY $spec" ] && [ -x "$VENV_DIR/bin/python" ]; then
    log "reusing $VENV_DIR"
  else
    rm -rf "$VENV_DIR"
    log "creating $VENV_DIR with $VENV_PY"
    "$VENV_PY" -m venv "$VENV_DIR" || return 1
    local vpip=("$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
    # torch first: the local CPU wheel (2.13.0+cpu), never PyPI's CUDA build; the device has 2.11.0+cu130
    "${vpip[@]}" torch==2.13.0 || return 1
    local cons="$VENV_DIR/torch-constraint.txt"
    echo "torch==2.13.0" > "$cons"
    # shellcheck disable=SC2086
    "${vpip[@]}" -c "$cons" ${spec#torch==2.13.0 } || return 1
    local extra
    extra="$("$VENV_DIR/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 | tr 'A-Z_' 'a-z-' \
             | grep -x -E "$(echo "$KIT_ONLY" | tr 'A-Z_' 'a-z-' | sed 's/ /|/g')")"
    if [ -n "$extra" ]; then
      echo "[gpu-kit] the dry-run venv holds kit-only packages: $extra" >&2
      return 1
    fi
    echo "$VENV_PY $spec" > "$stamp"
  fi
  log "torch in the dry-run venv is 2.13.0+cpu (the local CPU wheel), not the device's 2.11.0+cu130:"
  log "PyPI's Linux torch 2.11 is a multi-GB CUDA build"
  "$VENV_DIR/bin/python" -m pip list --format=freeze 2>/dev/null \
    | grep -i -E '^(torch|transformers|peft|accelerate|tokenizers|safetensors|huggingface.hub|numpy|pyarrow|fsspec|pandas|scipy)==' \
    | tr '\n' ' '; echo
  # the dry run must not write __pycache__ into .gpu-kit/site (it would be carried)
  PYTHONDONTWRITEBYTECODE=1 LORAEXP_KIT_PYTHON="$VENV_DIR/bin/python" bash "$ROOT/scripts/gpu_kit.sh" run --tiny
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  dry-run) shift; cmd_dry_run "$@" ;;
  *) echo "usage: bash scripts/gpu_kit.sh build [--clean] | run [--tiny] | dry-run" >&2; exit 2 ;;
esac
