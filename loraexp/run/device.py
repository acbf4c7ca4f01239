"""Throughput settings: mixed precision on the device a run uses, the ``--fast`` preset, and
the check that each training setting can work on this machine (run by
:mod:`loraexp.sweep.preflight` before any model loads; docs/reliability.md, "Bad input").

The knobs themselves are ``TrainingArguments`` fields passed through ``training``
(``bf16``, ``torch_compile``, ``train_sampling_strategy: group_by_length``,
``dataloader_num_workers``) and the top-level ``pad_to_multiple_of``;
``benchmarks/throughput.py`` measures them side by side.

The checks were verified by trying each setting on a CPU-only machine (torch 2.13,
transformers 5.23, accelerate 1.15, bitsandbytes 0.50): without the check the run fails
(or, for fp16, silently trains in float32) only after the model has loaded. bf16 on a GPU
without bf16 could not be tried there; that check is transformers' own condition, evaluated
early. Settings that do work on the CPU are not refused: the paged and 8-bit bitsandbytes
optimizers (``paged_adamw_8bit``, ``adamw_bnb_8bit``, ``lion_8bit``, ...) train there with
bitsandbytes 0.50.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import types
import warnings
from typing import Any

logger = logging.getLogger(__name__)

def device_type(training: dict[str, Any]) -> str:
    """The device type the Trainer will train on: ``cpu`` with ``training.use_cpu`` or without
    an accelerator, else the accelerator's (``cuda``, ``mps``, ``xpu``; ``torch.accelerator``)."""
    import torch

    if training.get("use_cpu") or not torch.accelerator.is_available():
        return "cpu"
    return torch.accelerator.current_accelerator().type


def needs_use_cpu(training: dict[str, Any], accelerator_available: bool) -> bool:
    """Whether ``training`` asks for bf16 mixed precision (``bf16`` or ``bf16_full_eval``) on a
    machine without an accelerator (``torch.accelerator.is_available()``): transformers'
    ``TrainingArguments`` then refuses it unless ``use_cpu`` is set ("Your setup doesn't
    support bf16/gpu. You need to assign use_cpu", transformers 5.23 ``_validate_args``), and
    with it accelerate runs the forward under ``torch.autocast("cpu", torch.bfloat16)``."""
    return not accelerator_available and any(training.get(key) for key in ("bf16", "bf16_full_eval"))


def fast_overrides() -> dict[str, Any]:
    """The dotted config keys ``--fast`` sets (:data:`loraexp.config.schema.FAST_HELP`): ``training.bf16`` on the CPU
    and on a GPU that computes in bf16 (``torch.cuda.is_bf16_supported``), else
    ``training.fp16``."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return {"training.fp16": True}
    return {"training.bf16": True}


def training_device_problems(training: dict[str, Any], model=None, builds_optimizer: bool = True) -> list[str]:
    """Every setting of ``training`` (the config's mapping, before loraexp's additions) that
    cannot work on this machine, one message each naming the field, the value and what is
    allowed:

    * ``fp16`` on the CPU: accelerate applies fp16 autocast only on an accelerator
      (``Accelerator``: ``native_amp`` needs ``device.type != "cpu"``), so the run would train
      in float32 while its config says fp16;
    * ``bf16``/``bf16_full_eval`` where transformers refuses it: a GPU without bf16, or the CPU
      with ``use_cpu: false`` (loraexp sets ``use_cpu`` for bf16 on a machine without a GPU);
    * ``tf32`` without an Ampere-or-newer NVIDIA GPU (transformers' ``is_torch_tf32_available``);
    * ``use_liger_kernel`` without liger-kernel installed (transformers' ``is_liger_kernel_available``);
    * ``torch_compile`` (or ``torch_compile_backend``/``_mode``) when compiling a one-line function
      with that backend fails on the device (no C++ compiler for inductor on the CPU, no
      triton on a GPU): :func:`compile_problem`, a few seconds, once per process;
    * ``optim`` that transformers cannot build here (its package is missing, or it is not an
      optimizer transformers knows): transformers' own ``Trainer.get_optimizer_cls_and_kwargs``
      on ``model`` (a weightless copy is enough), skipped when ``builds_optimizer`` is False
      (LoRA+ builds its own).

    Returns:
        The messages (empty when every setting can work).
    """
    import torch
    from transformers.utils import import_utils

    problems = []
    device = device_type(training)
    if training.get("fp16") and device == "cpu":
        problems.append("`training.fp16` true cannot work on the CPU: accelerate applies fp16 mixed precision only on "
                        "a GPU, so the run would train in float32 while its config says fp16; use `training.bf16: "
                        "true` (bf16 autocast on the CPU) or remove training.fp16")
    bf16 = next((key for key in ("bf16", "bf16_full_eval") if training.get(key)), None)
    accelerator = torch.accelerator.is_available()
    use_cpu = training.get("use_cpu", needs_use_cpu(training, accelerator))  # as training_arguments sets it
    refused = not (import_utils.is_torch_bf16_gpu_available() or import_utils.is_torch_xla_available())
    if bf16 and not use_cpu and refused:  # transformers' own condition (TrainingArguments._validate_args)
        if not accelerator:
            problems.append(f"`training.use_cpu` false with `training.{bf16}` true cannot work on a machine without "
                            "a GPU: transformers runs bf16 there only with use_cpu true; remove training.use_cpu "
                            "(loraexp sets it for bf16 on the CPU)")
        else:
            problems.append(f"`training.{bf16}` true needs a GPU that computes in bf16 (NVIDIA Ampere or newer); this "
                            f"{device} does not (transformers refuses it); use `training.fp16: true` instead, or "
                            "`training.use_cpu: true` to train on the CPU")
    if training.get("tf32") and not import_utils.is_torch_tf32_available():
        problems.append("`training.tf32` true needs an NVIDIA GPU of the Ampere generation or newer (TF32 matmuls), "
                        "which this machine lacks (transformers refuses it); remove training.tf32")
    if training.get("use_liger_kernel") and not import_utils.is_liger_kernel_available():
        problems.append("`training.use_liger_kernel` true needs liger-kernel >= 0.3.0 (pip install liger-kernel), "
                        "which is not installed; install it or remove training.use_liger_kernel")
    if any(training.get(key) for key in ("torch_compile", "torch_compile_backend", "torch_compile_mode")):
        backend = training.get("torch_compile_backend") or "inductor"
        failure = compile_problem(backend, training.get("torch_compile_mode"), device)
        if failure:
            problems.append(f"`training.torch_compile` true cannot work here: torch.compile(backend={backend!r}) "
                            f"of a one-line function failed on the {device} ({failure}); fix the compiler "
                            "toolchain (inductor needs a C++ compiler on the CPU, triton on a GPU) or remove "
                            "training.torch_compile")
    if builds_optimizer and training.get("optim") is not None:
        failure = optimizer_problem(training, model)
        if failure:
            problems.append(f"`training.optim` {training['optim']!r} cannot be used here: {failure} (transformers); "
                            "allowed: an optimizer transformers can build on this machine, e.g. adamw_torch")
    return problems


@functools.cache
def compile_problem(backend: str, mode: str | None, device: str) -> str | None:
    """Why ``torch.compile(backend=backend, mode=mode)`` cannot compile and run a one-line
    function on ``device`` (``ExceptionName: first line``), or None when it can. Inductor's
    caches are bypassed, so a compiler removed since an earlier compile is noticed; dynamo's
    state is reset afterwards. Cached per process: a sweep compiles it once.

    Takes seconds (5 to 9 s on a 2-core CPU with g++); only runs with ``torch_compile``.
    """
    import torch

    def probe(x):
        return torch.nn.functional.relu(x) * 2 + 1

    try:
        from torch._inductor import config as inductor_config

        caches_off = inductor_config.patch(force_disable_caches=True)
    except (ImportError, AttributeError):
        caches_off = contextlib.nullcontext()
    try:
        with caches_off, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*force_disable_caches")  # "dynamo_pgo force disabled by ..."
            torch.compile(probe, backend=backend, mode=mode, fullgraph=True)(torch.ones(4, device=device))
    except Exception as exc:  # noqa: BLE001 -- InductorError, BackendCompilerFailed, RuntimeError: all mean "cannot"
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    finally:
        torch._dynamo.reset()
    return None


def optimizer_problem(training: dict[str, Any], model=None) -> str | None:
    """Why transformers cannot build the optimizer ``training["optim"]`` names on this
    machine (its message), or None: ``Trainer.get_optimizer_cls_and_kwargs``, which imports
    the optimizer's package and checks its settings without building it, on the
    ``TrainingArguments`` defaults overlaid with ``training`` (no ``TrainingArguments`` is
    constructed, so no device or distributed state is set up)."""
    from transformers import Trainer, TrainingArguments

    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)
                if f.default is not dataclasses.MISSING}
    args = types.SimpleNamespace(**{**defaults, **training})
    try:
        Trainer.get_optimizer_cls_and_kwargs(args, model)
    except AttributeError as exc:  # a field this look-up did not anticipate: leave it to the Trainer
        logger.debug("training.optim %r not checked before training: %s", training.get("optim"), exc)
    except (ImportError, ValueError, TypeError, RuntimeError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None
