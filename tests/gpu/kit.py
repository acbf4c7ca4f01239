"""What the GPU tiers and ``benchmarks/gpu.py`` run on: randomly initialised models of real
shapes, built from the GPU kit's configs with SmolLM2-135M's real tokenizer (docs/gpu.md,
"The GPU kit"). Throughput, memory and the CUDA code paths do not depend on the weights'
values; a figure that does (a loss) is judged against the random model's own start.

The kit is ``$LORAEXP_GPU_KIT`` (``scripts/gpu_kit.sh run`` sets it); ``$LORAEXP_GPU_TINY=1``
(``run --tiny``, the CPU dry run) swaps every shape for the kit's ``tiny`` config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

KIT_ENV = "LORAEXP_GPU_KIT"
TINY_ENV = "LORAEXP_GPU_TINY"
SHAPES = ("smollm2-135m", "llama-3.2-1b", "llama-3.2-3b", "tiny")


def kit_dir() -> Path | None:
    """The kit folder, or None when ``$LORAEXP_GPU_KIT`` is unset or lacks its MANIFEST."""
    path = os.environ.get(KIT_ENV)
    return Path(path) if path and (Path(path) / "MANIFEST.json").is_file() else None


def tiny() -> bool:
    """Whether the dry run's tiny shapes stand in for the real ones (``$LORAEXP_GPU_TINY=1``)."""
    return os.environ.get(TINY_ENV) == "1"


def shape(name: str) -> str:
    """``name`` (one of :data:`SHAPES`), or ``tiny`` in the dry run."""
    return "tiny" if tiny() else name


def pretrained_dir() -> str | None:
    """The kit's pretrained causal LM (``models/pretrained/`` with a ``model.safetensors``), if
    it carries one; None otherwise (the default kit has none: see the convergence tier)."""
    kit = kit_dir()
    folder = kit / "models" / "pretrained" if kit else None
    return str(folder) if folder and (folder / "model.safetensors").is_file() else None


def random_model_dir(name: str, out: Path, dtype: str = "bfloat16", seed: int = 0) -> str:
    """Save a randomly initialised ``LlamaForCausalLM`` of the kit's ``name`` config (weights in
    ``dtype``, built on the GPU when there is one) with the kit's tokenizer into ``out/name``;
    return the folder (built once per ``out``).

    Raises:
        FileNotFoundError: no kit (``$LORAEXP_GPU_KIT``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kit = kit_dir()
    if kit is None:
        raise FileNotFoundError(f"${KIT_ENV} does not name a GPU kit (scripts/gpu_kit.sh build)")
    folder = out / f"{name}-{dtype}"
    if (folder / "config.json").is_file():
        return str(folder)
    config = AutoConfig.from_pretrained(kit / "models" / name)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    for f in (kit / "tokenizer").iterdir():
        shutil.copyfile(f, folder / f.name)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return str(folder)
