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
def initial_state(model: torch.nn.Module, factors: bool,
                  adapter: str = "default") -> dict[str, dict[str, torch.Tensor]]:
    """Copies, per LoRA module (short names), of what :func:`adapter_statistics` compares
    against: the initial ``lora_A`` ``(r, in_features)`` and ``lora_B`` ``(out_features, r)``
    when ``factors`` (an initialisation that rewrote the base to W − s·B0·A0, so the update
    against the original base is s·(B·A − B0·A0)), and DoRA's initial magnitude vector
    ``(out_features,)``."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, layer in lora_layers(model, adapter).items():
        state = {}
        if factors:
            state["lora_A"] = layer.lora_A[adapter].weight.detach().clone()
            state["lora_B"] = layer.lora_B[adapter].weight.detach().clone()
        magnitude = getattr(layer, "lora_magnitude_vector", {})
        if adapter in magnitude:
            state["magnitude"] = magnitude[adapter].weight.detach().clone()
        if state:
            out[short_module_name(name)] = state
    return out


@torch.no_grad()
def adapter_statistics(model: torch.nn.Module, adapter: str = "default",
                       initial: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, dict[str, float]]:
    """Norms, moments and rank metrics of every LoRA module.

    For each module (keys shortened by :func:`short_module_name`):
    ``A_norm``/``B_norm`` (Frobenius), ``A_mean``, ``A_std``, ``B_mean``, ``B_std``,
    ``delta_norm`` = ‖ΔW‖_F, ``scaling`` (PEFT's: α/r, or α/√r with rsLoRA), ``r``,
    ``in_features``, ``out_features`` and the keys
    of :func:`~loraexp.analysis.svd.rank_metrics`, plus ``singular_values`` (list, descending).

    ΔW is the update the adapter makes to the *original* base: s·B·A, or, when ``initial``
    holds a module's initial factors (PiSSA, OLoRA: the base was rewritten to W − s·B0·A0),
    s·(B·A − B0·A0) = s·[B, −B0]·[A; A0], whose rank can reach 2r (``delta_form``
    ``BA - B0A0``). With DoRA, ΔW is the direction update and the magnitude vector's change
    is reported beside it: ``magnitude_rel_change`` = ‖m − m0‖/‖m0‖ and
    ``magnitude_max_abs_change`` = max |m − m0| (m0 from ``initial``).

    Cost: O((m + n) r²) per module; ΔW is never formed.
    """
    initial = initial or {}
    out: dict[str, dict[str, float]] = {}
    for name, layer in lora_layers(model, adapter).items():
        short = short_module_name(name)
        start = initial.get(short, {})
        a = layer.lora_A[adapter].weight      # (r, in_features)
        b = layer.lora_B[adapter].weight      # (out_features, r)
        scaling = float(layer.scaling[adapter])
        if "lora_A" in start:
            sigma = factor_singular_values(torch.cat([a, start["lora_A"].to(a.device)]),
                                           torch.cat([b, -start["lora_B"].to(b.device)], dim=1), scaling)
        else:
            sigma = factor_singular_values(a, b, scaling)
        metrics = rank_metrics(sigma, r=a.shape[0])
        af, bf = a.detach().float(), b.detach().float()
        out[short] = {
            "r": a.shape[0], "in_features": a.shape[1], "out_features": b.shape[0], "scaling": scaling,
            "delta_form": "BA - B0A0" if "lora_A" in start else "BA",
            "A_norm": float(af.norm()), "B_norm": float(bf.norm()),
            "A_mean": float(af.mean()), "A_std": float(af.std()),
            "B_mean": float(bf.mean()), "B_std": float(bf.std()),
            "delta_norm": metrics.pop("frobenius_norm"),
            **metrics,
            "singular_values": sigma.tolist(),
        }
        if "magnitude" in start:
            m0 = start["magnitude"].float()
            change = layer.lora_magnitude_vector[adapter].weight.detach().float().to(m0.device) - m0
            out[short]["magnitude_rel_change"] = float(change.norm() / m0.norm())
            out[short]["magnitude_max_abs_change"] = float(change.abs().max())
    return out


def aggregate_rank_metrics(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over modules of each rank metric (``effective_rank``, ``stable_rank``, ``k90``,
    ``k99``, ``utilization``), of ``delta_norm`` and, for DoRA, of ``magnitude_rel_change``;
    empty dict when there are no modules."""
    if not stats:
        return {}
    keys = [*RANK_KEYS, "delta_norm"]
    if all("magnitude_rel_change" in s for s in stats.values()):
        keys.append("magnitude_rel_change")  # DoRA
    return {f"mean_{k}": statistics.fmean(s[k] for s in stats.values()) for k in keys}
