"""Per-module statistics of LoRA factors and of ΔW (through the factor-space SVD)."""

from __future__ import annotations

import statistics

import torch
from peft.tuners.lora import LoraLayer

from loraexp.analysis.svd import factor_singular_values, rank_metrics

RANK_KEYS = ("effective_rank", "stable_rank", "k90", "k99", "utilization")


def lora_layers(model: torch.nn.Module, adapter: str = "default") -> dict[str, LoraLayer]:
    """LoRA-wrapped modules of a PEFT model that hold ``adapter``, by module name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and adapter in getattr(m, "lora_A", {})}


def short_module_name(name: str) -> str:
    """Drop PEFT's wrapper prefixes: ``base_model.model.bert.encoder.layer.0...`` -> ``bert.encoder.layer.0...``."""
    return name.removeprefix("base_model.model.")


@torch.no_grad()
def adapter_statistics(model: torch.nn.Module, adapter: str = "default") -> dict[str, dict[str, float]]:
    """Norms, moments and rank metrics of every LoRA module.

    For each module (keys shortened by :func:`short_module_name`):
    ``A_norm``/``B_norm`` (Frobenius), ``A_mean``, ``A_std``, ``B_mean``, ``B_std``,
    ``delta_norm`` = ‖ΔW‖_F with ΔW = (α/r)·B·A, ``scaling``, ``r`` and the keys of
    :func:`~loraexp.analysis.svd.rank_metrics`, plus ``singular_values`` (list, descending).

    Cost: O((m + n) r²) per module; ΔW is never formed.
    """
    out: dict[str, dict[str, float]] = {}
    for name, layer in lora_layers(model, adapter).items():
        a = layer.lora_A[adapter].weight      # (r, in_features)
        b = layer.lora_B[adapter].weight      # (out_features, r)
        scaling = float(layer.scaling[adapter])
        sigma = factor_singular_values(a, b, scaling)
        metrics = rank_metrics(sigma, r=a.shape[0])
        af, bf = a.detach().float(), b.detach().float()
        out[short_module_name(name)] = {
            "r": a.shape[0], "scaling": scaling,
            "A_norm": float(af.norm()), "B_norm": float(bf.norm()),
            "A_mean": float(af.mean()), "A_std": float(af.std()),
            "B_mean": float(bf.mean()), "B_std": float(bf.std()),
            "delta_norm": metrics.pop("frobenius_norm"),
            **metrics,
            "singular_values": sigma.tolist(),
        }
    return out


def aggregate_rank_metrics(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over modules of each rank metric (``effective_rank``, ``stable_rank``, ``k90``,
    ``k99``, ``utilization``) and of ``delta_norm``; empty dict when there are no modules."""
    if not stats:
        return {}
    keys = (*RANK_KEYS, "delta_norm")
    return {f"mean_{k}": statistics.fmean(s[k] for s in stats.values()) for k in keys}
