"""Quantized bases for QLoRA: the ``quantization`` config section -> bitsandbytes.

NF4/FP4 4-bit and LLM.int8() quantization come from ``transformers.BitsAndBytesConfig``;
the k-bit training preparation (frozen base, float32 norms, gradient checkpointing with
input grads) from ``peft.prepare_model_for_kbit_training``. bitsandbytes >= 0.48 has a CPU
backend for 4-bit and 8-bit layers, so the same config runs here and on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch

from loraexp.config.schema import QuantizationConfig
from loraexp.errors import ConfigError

DTYPE_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype_name(q: QuantizationConfig) -> str:
    """``q.compute_dtype``, with ``auto`` resolved for this device as a run without a named
    mixed precision resolves it (:func:`loraexp.config.precision.auto_compute_dtype`)."""
    from loraexp.config.precision import AUTO, auto_compute_dtype

    return auto_compute_dtype({"bf16": True}, q.method) if q.compute_dtype == AUTO else q.compute_dtype


def bnb_config(q: QuantizationConfig):
    """``transformers.BitsAndBytesConfig`` for ``q``, or None when ``q.method`` is ``none``.

    nf4/fp4: ``load_in_4bit`` with ``bnb_4bit_quant_type`` = method,
    ``bnb_4bit_use_double_quant`` = ``double_quant`` and ``bnb_4bit_compute_dtype``;
    int8: ``load_in_8bit``.

    Raises:
        ConfigError: bitsandbytes is not installed.
    """
    if q.method == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"`quantization.method` {q.method!r} needs bitsandbytes: pip install bitsandbytes; "
                          "or set quantization.method: none") from None
    from transformers import BitsAndBytesConfig

    if q.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.method,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=DTYPE_BY_NAME[compute_dtype_name(q)])


def check_backend(q: QuantizationConfig, device: str) -> None:
    """Check that bitsandbytes can quantize on ``device`` (``"cpu"`` or ``"cuda"``) the way
    loading the base will: a ``(64, 64)`` tensor in ``q.compute_dtype`` goes through
    ``quantize_4bit``/``dequantize_4bit`` (nf4/fp4, with ``q.double_quant``) or
    ``int8_vectorwise_quant`` (int8, float16 input). No-op for ``method: none``.

    Raises:
        ConfigError: bitsandbytes is missing or its backend for ``device`` cannot do the
            method (naming the method, the device and the bitsandbytes version).
    """
    if q.method == "none":
        return
    bnb_config(q)  # raises if bitsandbytes is missing
    import bitsandbytes
    import bitsandbytes.functional as F

    try:
        if q.method == "int8":
            F.int8_vectorwise_quant(torch.randn(64, 64, dtype=torch.float16, device=device))
        else:
            x = torch.randn(64, 64, dtype=DTYPE_BY_NAME[compute_dtype_name(q)], device=device)
            packed, state = F.quantize_4bit(x, quant_type=q.method, compress_statistics=q.double_quant)
            F.dequantize_4bit(packed, state)
    except Exception as exc:  # NotImplementedError / RuntimeError from a backend without the kernel
        raise ConfigError(
            f"`quantization.method` {q.method!r} is not supported by bitsandbytes {bitsandbytes.__version__} on "
            f"{device} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no kernel'}); "
            "set quantization.method: none, or run on a device whose bitsandbytes backend has it (CUDA)") from None


def keep_cpu_4bit_layout_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes' CPU backend from repacking 4-bit weights for inference.

    On CPUs with AVX512-BF16, ``bnb.nn.Linear4bit.forward`` (bitsandbytes 0.50) converts the
    weight to an inference-only packed layout the first time it runs in eval mode without
    grad (``_convert_weight_packed_for_cpu``), and never converts it back; later training
    steps then go through ``gemv_4bit``, which has no autograd kernel, so gradients stop at
    every 4-bit layer (loraexp's gradient-flow check reports lora_B grads of exactly zero).
    Any evaluation before or during training triggers it. Clearing the layer's
    ``support_avx512bf16_for_cpu`` flag keeps the trainable layout.

    Returns:
        The number of 4-bit layers changed.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def prepare_for_training(model, q: QuantizationConfig):
    """``peft.prepare_model_for_kbit_training`` for a quantized ``model`` (no-op otherwise):
    freezes the base, casts norms to float32, and with ``q.gradient_checkpointing`` enables
    non-reentrant gradient checkpointing with input grads. On CPU also
    :func:`keep_cpu_4bit_layout_trainable`."""
    if q.method == "none":
        return model
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=q.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    keep_cpu_4bit_layout_trainable(model)
    return model


def default_optimizer(q: QuantizationConfig, cuda: bool) -> str | None:
    """``paged_adamw_8bit`` for a quantized base on CUDA (QLoRA's paged optimizer, 8-bit
    states), else None (keep TrainingArguments' default ``adamw_torch``): bitsandbytes' paged
    optimizers need CUDA unified memory."""
    return "paged_adamw_8bit" if q.method != "none" and cuda else None


def _quant_state_bytes(param: torch.nn.Parameter, seen: set[int]) -> int:
    """Bytes of a 4-bit weight's quantization constants (absmax, nested absmax, code books);
    tensors shared between layers (``seen`` data pointers) count once."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return 0
    total = 0
    for tensor in state.as_dict(packed=False).values():
        if torch.is_tensor(tensor) and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def weight_bytes(model: torch.nn.Module) -> dict[str, Any]:
    """Memory held by the model's weights, in bytes:

    ``base_weight_bytes``: frozen parameters (packed 4-bit/8-bit storage as stored, plus
    the 4-bit quantization constants ``absmax``/nested ``absmax``/``code``) and buffers;
    ``trainable_bytes``: parameters with ``requires_grad`` (the LoRA factors).
    Tied parameters count once.
    """
    base = trainable = 0
    seen: set[int] = set()
    seen_constants: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        size = param.numel() * param.element_size()
        if param.requires_grad:
            trainable += size
        else:
            base += size + _quant_state_bytes(param, seen_constants)
    base += sum(b.numel() * b.element_size() for b in model.buffers())
    return {"base_weight_bytes": int(base), "trainable_bytes": int(trainable)}

