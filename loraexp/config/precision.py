"""Device-aware precision defaults (docs/gpu.md, "Defaults on a GPU").

``model_dtype: auto`` and ``quantization.compute_dtype: auto`` (the defaults) resolve on the
device the run trains on:

* a CUDA GPU that computes in bf16 natively (``torch.cuda.is_bf16_supported(including_emulation=False)``:
  NVIDIA Ampere or newer): bf16 autocast (``training.bf16: true``) unless ``training`` names
  ``bf16`` or ``fp16`` itself; the weights stay ``float32`` (mixed precision: autocast
  computes in bf16, the weights and optimizer state stay float32); a quantized base's 4-bit
  matmuls in ``bfloat16`` under bf16 autocast, ``float16`` under fp16;
* anywhere else (the CPU, an older GPU, ``training.use_cpu``): ``float32`` and ``training``
  unchanged -- so a CPU run's config, and its run id, are those loraexp gave before ``auto``.

Weights in ``bfloat16`` (half the memory) are an explicit ``model_dtype: bfloat16``, not the
default: merging a LoRA adapter into bf16 weights differs from the unmerged model by ~2e-3 in
logits (a 6-layer, 384-wide BERT; 3e-7 in float32), above the merge check's 1e-4, and the
check's float64 recomputation covers float32 weights only (docs/gpu.md, "Defaults on a GPU").

A run's ``config.yaml``, identity and record hold the resolved values (:func:`resolve_device_defaults`
runs when a sweep is expanded and when a run starts; a run id computed from an unresolved
config resolves first). An explicit dtype is never changed. Attention: transformers picks SDPA
where torch has it (its default ``attn_implementation``); the implementation a run used is in
``resolved.precision``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

AUTO = "auto"
# A GPU driver's files: without one there is no CUDA device, and torch (seconds to import) is not
# needed to say so, so config errors and --help stay instant (docs/design.md, "Configuration schema and library").
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


@functools.cache
def bf16_gpu() -> bool:
    """Whether a CUDA (or ROCm) GPU that computes in bf16 is present: False without a GPU
    driver's files (:data:`GPU_DRIVER_FILES`) unless torch is already imported, else
    ``torch.cuda.is_available() and torch.cuda.is_bf16_supported()``. Cached per process."""
    if "torch" not in sys.modules and not any(Path(f).exists() for f in GPU_DRIVER_FILES):
        return False
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))


def needs_resolution(cfg) -> bool:
    """Whether ``cfg`` (an :class:`~loraexp.config.schema.ExperimentConfig`) has an ``auto`` dtype."""
    return AUTO in (cfg.model_dtype, cfg.quantization.compute_dtype)


def auto_compute_dtype(training: dict[str, Any], method: str, gpu: bool | None = None) -> str:
    """What ``quantization.compute_dtype: auto`` is for a run with this ``training`` mapping and
    quantization ``method``: on a bf16 GPU (``gpu``; None: :func:`bf16_gpu`) a quantized base
    computes in ``bfloat16`` under bf16 autocast and ``float16`` under fp16; else ``float32``."""
    if gpu is None:
        gpu = not training.get("use_cpu") and bf16_gpu()
    if not gpu or method == "none":
        return "float32"
    return "bfloat16" if training.get("bf16") else "float16" if training.get("fp16") else "float32"


def resolve_device_defaults(cfg):
    """``cfg`` with its ``auto`` dtypes replaced by what this device runs (module docstring);
    ``cfg`` itself when nothing is ``auto``.

    Returns:
        An :class:`~loraexp.config.schema.ExperimentConfig` with a concrete ``model_dtype``
        (``float32`` for ``auto``) and ``quantization.compute_dtype`` (:func:`auto_compute_dtype`)
        and, on a bf16 GPU with an ``auto`` ``model_dtype``, ``training.bf16: true`` unless
        ``training`` names a precision.
    """
    if not needs_resolution(cfg):
        return cfg
    gpu = not cfg.training.get("use_cpu") and bf16_gpu()
    training: dict[str, Any] = dict(cfg.training)
    model_dtype = cfg.model_dtype
    if model_dtype == AUTO:
        model_dtype = "float32"  # mixed precision: the weights stay float32 (module docstring)
        if gpu and "bf16" not in training and "fp16" not in training:  # the config chose no precision itself
            training["bf16"] = True
    compute_dtype = cfg.quantization.compute_dtype
    if compute_dtype == AUTO:
        compute_dtype = auto_compute_dtype(training, cfg.quantization.method, gpu)
    return dataclasses.replace(cfg, model_dtype=model_dtype, training=training,
                               quantization=dataclasses.replace(cfg.quantization, compute_dtype=compute_dtype))
