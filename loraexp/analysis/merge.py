"""Merge-equivalence check: does the merged model compute what the adapter model computes?"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from loraexp.record import MergeCheck

SPACES = ("logits", "probs")


@torch.no_grad()
def _logits(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([model(**b).logits.float().flatten(0, -2) for b in batches])


def _in_space(logits: torch.Tensor, space: str) -> torch.Tensor:
    return logits.softmax(-1) if space == "probs" else logits


@torch.no_grad()
def _seconds_per_batch(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], repeats: int) -> float:
    model(**batches[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            model(**b)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * len(batches))


@torch.no_grad()
def check_merge_equivalence(peft_model, batches: Sequence[dict[str, torch.Tensor]], atol: float = 1e-4,
                            latency_repeats: int = 3, space: str = "logits", effect_atol: float = 1e-4):
    """Compare the adapter model with ``peft_model.merge_and_unload()`` on ``batches``.

    The check cannot pass vacuously: it first requires that the adapter changes the output
    (max |Δlogit| adapter vs base > ``effect_atol``, base = adapters disabled), as PEFT's
    ``_test_merge_layers`` does. Outputs are compared over every position: ``(batch, labels)``
    logits of a classifier, ``(batch, seq, vocab)`` of a causal LM.

    Args:
        peft_model: a ``PeftModel``; it is merged in place and **consumed**: save the
            adapter before calling this.
        batches: model inputs (dicts of ``(batch, seq)`` tensors on the model's device)
            without labels.
        atol: tolerance on max |Δ| in ``space``; 1e-4 is PEFT's fp32 merge tolerance on
            logits, 1e-2 its tolerance on probabilities for quantized models.
        latency_repeats: timed passes over ``batches`` for each model.
        space: ``logits`` or ``probs`` (softmax over the last dimension).
        effect_atol: the adapter must change some logit by more than this.

    Returns:
        ``(merged_model, result)``; ``result`` is a :class:`~loraexp.record.MergeCheck`:
        ``passed``, ``max_abs_diff`` (in ``space``), ``max_abs_logit_diff``,
        ``adapter_vs_base_max_abs_diff``, ``atol``, ``adapter_latency_s`` and
        ``merged_latency_s`` (seconds per batch), and ``reason`` when it failed.

    Raises:
        ValueError: ``space`` is not one of :data:`SPACES`.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    was_training = peft_model.training
    peft_model.eval()
    with peft_model.disable_adapter():
        base_logits = _logits(peft_model, batches)
    adapter_logits = _logits(peft_model, batches)
    adapter_latency = _seconds_per_batch(peft_model, batches, latency_repeats)
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged_logits = _logits(merged, batches)
    merged_latency = _seconds_per_batch(merged, batches, latency_repeats)
    if was_training:
        merged.train()

    effect = float((adapter_logits - base_logits).abs().max())
    logit_diff = float((adapter_logits - merged_logits).abs().max())
    diff = logit_diff if space == "logits" else float((_in_space(adapter_logits, space)
                                                       - _in_space(merged_logits, space)).abs().max())
    result = MergeCheck(passed=bool(effect > effect_atol and diff <= atol), space=space, max_abs_diff=diff,
                        max_abs_logit_diff=logit_diff, adapter_vs_base_max_abs_diff=effect, atol=atol,
                        adapter_latency_s=adapter_latency, merged_latency_s=merged_latency)
    if effect <= effect_atol:
        result.reason = (f"adapter does not change the output (max |adapter - base| = {effect:.3g} "
                         f"<= {effect_atol:g})")
    elif diff > atol:
        result.reason = f"merged {space} differ from adapter {space} by {diff:.3g} > atol {atol:g}"
    return merged, result


@torch.no_grad()
def check_quantized_merge(quantized_peft_model, full_precision_base, adapter_dir,
                          batches: Sequence[dict[str, torch.Tensor]], atol: float = 1e-2, latency_repeats: int = 1):
    """Merge a QLoRA adapter into a full-precision reload of its base and check it.

    Merging into 4-bit weights re-quantizes ΔW and loses precision (a known PEFT
    limitation), so the adapter saved in ``adapter_dir`` is loaded on ``full_precision_base``
    (:func:`loraexp.adapters.load_adapter`, safetensors only) and merged there. Two figures, both max |Δ| of the
    next-token probabilities over every position of ``batches``:

    * ``max_abs_diff``: merged model vs full-precision adapter model, passed when
      <= ``atol`` (1e-2: PEFT's tolerance for quantized merges) -- see
      :func:`check_merge_equivalence`, whose other fields are returned too;
    * ``quantization_gap_max_abs_diff``: the quantized adapter model (as trained) vs the
      full-precision adapter model; reported, not pass/fail.

    Args:
        quantized_peft_model: the trained ``PeftModel`` on the 4-bit/8-bit base (not changed).
        full_precision_base: the same base model loaded unquantized (consumed by the merge).
        adapter_dir: directory written by ``save_pretrained``.

    Returns:
        ``(merged_model, result)``.
    """
    from loraexp.adapters import load_adapter

    quantized_peft_model.eval()
    quantized = _logits(quantized_peft_model, batches).softmax(-1)
    full = load_adapter(full_precision_base, adapter_dir).eval()
    gap = float((_logits(full, batches).softmax(-1) - quantized).abs().max())
    merged, result = check_merge_equivalence(full, batches, atol=atol, latency_repeats=latency_repeats,
                                             space="probs")
    result.quantization_gap_max_abs_diff = gap
    result.merged_into = "full-precision reload of the base"
    return merged, result
