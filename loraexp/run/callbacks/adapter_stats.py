"""Adapter statistics and factor-space SVD rank analysis every N optimizer steps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import TrainerCallback

from loraexp.analysis.adapter_stats import adapter_statistics, aggregate_rank_metrics

ADAPTER_KEYS = ("A_norm", "B_norm", "A_mean", "A_std", "B_mean", "B_std", "delta_norm")
MAGNITUDE_KEYS = ("magnitude_rel_change", "magnitude_max_abs_change")  # DoRA
RANK_LOG_KEYS = ("effective_rank", "stable_rank", "k90", "k99", "utilization")


def flatten_statistics(stats: dict[str, dict]) -> dict[str, float]:
    """W&B keys (docs/design.md, "Tracking"): ``lora_adapters/<module>/<stat>``, ``lora_rank/<module>/<metric>``
    and the means over modules ``lora_rank/mean_<metric>``."""
    flat: dict[str, float] = {}
    for module, s in stats.items():
        flat.update({f"lora_adapters/{module}/{k}": s[k] for k in (*ADAPTER_KEYS, *MAGNITUDE_KEYS) if k in s})
        flat.update({f"lora_rank/{module}/{k}": s[k] for k in RANK_LOG_KEYS})
    flat.update({f"lora_rank/{k}": v for k, v in aggregate_rank_metrics(stats).items()})
    return flat


class AdapterStatsCallback(TrainerCallback):
    """Every ``every`` optimizer steps (``on_step_end``) and once at train end, on the main
    process only and under ``torch.no_grad()``: computes
    :func:`~loraexp.analysis.adapter_stats.adapter_statistics` and hands the flattened
    figures to ``log(metrics, step)``. Reads weights only; changes nothing.

    ``initial``: :func:`~loraexp.analysis.adapter_stats.initial_state` (ΔW against the original
    base for PiSSA/OLoRA, DoRA's magnitude change). ``final`` holds the per-module statistics
    at train end (with singular values).
    """

    def __init__(self, log: Callable[[dict, int], None], every: int = 50, initial: dict | None = None):
        self.log = log
        self.every = every
        self.initial = initial
        self.final: dict[str, dict] = {}

    def _record(self, step: int, model) -> dict[str, dict]:
        with torch.no_grad():
            stats = adapter_statistics(model, initial=self.initial)
        self.log(flatten_statistics(stats), step)
        return stats

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self._record(state.global_step, kwargs["model"])

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.final = self._record(state.global_step, kwargs["model"])

    def finish(self, step: int, model) -> None:
        """Record the final statistics at optimizer step ``step`` without a training loop (a
        run restored from its last checkpoint)."""
        self.final = self._record(step, model)
