"""Merge-equivalence check: does the merged model compute what the adapter model computes?"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch


@torch.no_grad()
def _logits(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([model(**b).logits.float() for b in batches])


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
                            latency_repeats: int = 3):
    """Compare the adapter model with ``peft_model.merge_and_unload()`` on ``batches``.

    The check cannot pass vacuously: it first requires that the adapter changes the output
    (max |adapter − base| > ``atol``, base = adapters disabled), as PEFT's
    ``_test_merge_layers`` does.

    Args:
        peft_model: a ``PeftModel``; it is merged in place and **consumed**: save the
            adapter before calling this.
        batches: model inputs (dicts of ``(batch, seq)`` tensors on the model's device)
            without labels.
        atol: tolerance on max |Δlogit|; 1e-4 is PEFT's fp32 merge tolerance.
        latency_repeats: timed passes over ``batches`` for each model.

    Returns:
        ``(merged_model, result)``; ``result`` has ``passed`` (bool),
        ``merge_max_abs_diff``, ``adapter_vs_base_max_abs_diff``, ``atol``,
        ``adapter_latency_s`` and ``merged_latency_s`` (seconds per batch), and
        ``reason`` when it failed.
    """
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
    diff = float((adapter_logits - merged_logits).abs().max())
    result = {
        "merge_max_abs_diff": diff,
        "adapter_vs_base_max_abs_diff": effect,
        "atol": atol,
        "adapter_latency_s": adapter_latency,
        "merged_latency_s": merged_latency,
        "passed": bool(effect > atol and diff <= atol),
    }
    if effect <= atol:
        result["reason"] = f"adapter does not change the output (max |adapter - base| = {effect:.3g} <= {atol:g})"
    elif diff > atol:
        result["reason"] = f"merged logits differ from adapter logits by {diff:.3g} > atol {atol:g}"
    return merged, result
