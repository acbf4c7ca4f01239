"""Parameter-efficiency report of a PEFT model."""

from __future__ import annotations

import re
from collections import Counter

import torch


def is_lora_parameter(name: str) -> bool:
    """True for LoRA factor weights (``...lora_A.default.weight``, ``lora_B``, ``lora_embedding_*``)."""
    return "lora_" in name


def is_saved_module_parameter(name: str) -> bool:
    """True for the trainable copies PEFT makes for ``modules_to_save`` (e.g. the classifier head)."""
    return ".modules_to_save." in name


def is_base_parameter(name: str) -> bool:
    """A parameter of the pretrained model: neither a LoRA factor nor a modules_to_save copy."""
    return not (is_lora_parameter(name) or is_saved_module_parameter(name))


def represented_elements(param: torch.Tensor) -> int:
    """The number of weights ``param`` stands for: its ``numel()``, except for a bitsandbytes
    4-bit weight (``Params4bit``), whose storage packs two values per byte and whose
    ``quant_state.shape`` keeps the original ``(out_features, in_features)``."""
    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def parameter_report(model: torch.nn.Module) -> dict[str, float | dict[str, int]]:
    """Counts of parameters (elements, not bytes; a 4-bit base weight counts the weights it
    stands for, :func:`represented_elements`, so a QLoRA run reports the model's real size).

    Returns:
        ``total`` (every parameter once, including the frozen originals that
        ``modules_to_save`` keeps), ``trainable`` (requires_grad), ``trainable_pct``
        (100·trainable/total), ``lora_params`` (LoRA factors only, as the LoRA paper counts),
        ``lora_pct``, ``head_params`` (trainable modules_to_save copies), and
        ``lora_params_by_module`` (LoRA elements per adapted module type, e.g.
        ``{"query": 36864, "value": 36864}``).
    """
    total = trainable = lora = head = 0
    by_type: Counter[str] = Counter()
    for name, p in model.named_parameters():
        n = represented_elements(p)
        total += n
        if p.requires_grad:
            trainable += n
        if is_lora_parameter(name):
            lora += n
            module = re.sub(r"\.lora_[AB]\..*$", "", name).split(".")[-1]
            by_type[module] += n
        elif is_saved_module_parameter(name) and p.requires_grad:
            head += n
    return {
        "total_params": total,
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
        "lora_params": lora,
        "lora_pct": 100.0 * lora / total if total else 0.0,
        "head_params": head,
        "lora_params_by_module": dict(by_type),
    }
