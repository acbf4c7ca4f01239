"""Rank advice: from the singular values of a trained adapter's ΔW per module, the rank each
module needs to keep a stated fraction of its update's energy, as a PEFT ``r`` and
``rank_pattern`` (docs/report.md, "Rank advice").

The energy rank k_f of a module is the smallest k with Σ_{i≤k} σ_i² ≥ f · Σ σ_i² (``k90`` for
f = 0.9, :func:`loraexp.analysis.svd.rank_metrics`): a rank-k_f adapter can represent that
much of the learned ΔW (Eckart–Young). Over seeds the largest k_f is kept, so the advice holds
for every replicate. The proposed ``r`` is the median of the modules' ranks (rounded up); the
modules that need another rank get it through ``rank_pattern``. The scaling s of every module
stays that of the source adapter (α/r, or α/√r with rsLoRA), so ``lora_alpha`` and
``alpha_pattern`` follow the ranks. That is a choice, loraexp's convention α = 2r (s = 2 at
every rank of a rank ablation), not the LoRA paper's (§4.1 keeps α fixed as r varies); whether
the smaller adapter trained this way is as good is what ``loraexp report --confirm`` measures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch


def energy_rank(singular_values: Sequence[float], energy: float) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ ``energy`` · Σ σ_i²; at least 1 (PEFT's smallest r),
    also for an all-zero update.

    Args:
        singular_values: σ, descending, non-negative.
        energy: the fraction f to keep, 0 < f ≤ 1.

    Raises:
        ValueError: ``energy`` outside (0, 1].
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    s = torch.as_tensor(list(singular_values), dtype=torch.float64)
    total = (s ** 2).sum()
    if s.numel() == 0 or total <= 0:
        return 1
    cumulative = torch.cumsum(s ** 2, 0) / total
    return max(1, int((cumulative < energy - 1e-12).sum()) + 1)  # slack: exactly f counts despite rounding


@dataclass
class ModuleSpectra:
    """One module of the source adapter: its ``r``, ``in_features``/``out_features``, the
    singular values of ΔW of each seed (``(r,)`` each, descending) and its scaling s (None: the
    adapter's, :func:`advise_ranks`' ``scaling``)."""

    r: int
    in_features: int
    out_features: int
    singular_values: list[list[float]]
    scaling: float | None = None

    @property
    def params_per_rank(self) -> int:
        """LoRA parameters per unit of rank: ``lora_A`` (r, in) plus ``lora_B`` (out, r)."""
        return self.in_features + self.out_features


@dataclass
class RankAdvice:
    """A proposed adapter and why.

    ``module_ranks``: k_f per module (max over seeds); ``r`` and ``lora_alpha``: the proposed
    defaults; ``rank_pattern``/``alpha_pattern``: PEFT's per-module overrides (module names as
    PEFT matches them, without ``base_model.model.``); ``source_lora_params`` /
    ``proposed_lora_params``: LoRA parameters (count) of the source and the proposal.
    """

    energy: float
    source_r: int
    scaling: float
    use_rslora: bool
    module_ranks: dict[str, int]
    r: int
    lora_alpha: float
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    source_lora_params: int = 0
    proposed_lora_params: int = 0

    @property
    def saving(self) -> float:
        """Fraction of the source's LoRA parameters the proposal saves."""
        return 1 - self.proposed_lora_params / self.source_lora_params if self.source_lora_params else 0.0

    def lora_overrides(self) -> dict[str, object]:
        """The ``lora.*`` config keys of the proposal (``--set`` / :func:`~loraexp.config.load.apply_overrides`)."""
        return {"lora.r": self.r, "lora.lora_alpha": self.lora_alpha, "lora.rank_pattern": dict(self.rank_pattern),
                "lora.alpha_pattern": dict(self.alpha_pattern)}


def alpha_for(rank: int, scaling: float, use_rslora: bool) -> float:
    """The ``lora_alpha`` that gives a rank-``rank`` adapter the scaling ``scaling``: s·r, or
    s·√r with rsLoRA (LoRA paper §4.1; Kalajdzievski 2023)."""
    return round(scaling * (math.sqrt(rank) if use_rslora else rank), 6)


def advise_ranks(modules: Mapping[str, ModuleSpectra], energy: float = 0.9, scaling: float = 1.0,
                 use_rslora: bool = False) -> RankAdvice:
    """The rank advice for an adapter whose modules have the spectra ``modules``.

    Args:
        modules: per module name, its :class:`ModuleSpectra` (one spectrum per seed).
        energy: fraction f of each module's ‖ΔW‖_F² to keep (default 0.9).
        scaling: the source adapter's s (α/r, or α/√r with ``use_rslora``), kept per module
            (a module's own :attr:`ModuleSpectra.scaling` wins, e.g. from an ``alpha_pattern``).

    Raises:
        ValueError: no modules, a module without spectra, or ``energy`` outside (0, 1].
    """
    if not modules:
        raise ValueError("no LoRA modules to advise on")
    ranks = {}
    for name, m in modules.items():
        if not m.singular_values:
            raise ValueError(f"module {name} has no singular values")
        ranks[name] = min(m.r, max(energy_rank(s, energy) for s in m.singular_values))
    ordered = sorted(ranks.values())
    r = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else math.ceil(
        (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2)
    pattern = {name: k for name, k in ranks.items() if k != r}
    own = {name: m.scaling if m.scaling is not None else scaling for name, m in modules.items()}
    source_r = max(m.r for m in modules.values())
    return RankAdvice(
        energy=energy, source_r=source_r, scaling=scaling, use_rslora=use_rslora, module_ranks=ranks, r=r,
        lora_alpha=alpha_for(r, scaling, use_rslora), rank_pattern=pattern,
        alpha_pattern={name: alpha_for(ranks[name], own[name], use_rslora) for name in modules
                       if name in pattern or own[name] != scaling},
        source_lora_params=sum(m.r * m.params_per_rank for m in modules.values()),
        proposed_lora_params=sum(ranks[name] * m.params_per_rank for name, m in modules.items()))


def reasoning(advice: RankAdvice, source: str, seeds: int) -> str:
    """One paragraph saying what the advice is based on and what it proposes."""
    counts: dict[int, int] = {}
    for k in advice.module_ranks.values():
        counts[k] = counts.get(k, 0) + 1
    spread = ", ".join(f"{n} module{'s' * (n > 1)} k = {k}" for k, n in sorted(counts.items()))
    pattern = (f"`rank_pattern` gives the {len(advice.rank_pattern)} modules that need another rank their own "
               f"(and `alpha_pattern` their α)" if advice.rank_pattern else "every module needs that rank, so no "
               "`rank_pattern` is needed")
    scale = "α/√r" if advice.use_rslora else "α/r"
    return (f"From the ΔW spectra of {source} (r = {advice.source_r}, {seeds} seed{'s' * (seeds != 1)}): the "
            f"smallest rank k that keeps {advice.energy:.0%} of each module's ‖ΔW‖_F² (Σσ², the largest k over "
            f"seeds) is {spread}. Proposed: r = {advice.r} (the median over modules) with lora_alpha = "
            f"{advice.lora_alpha:g}, keeping the scaling {scale} = {advice.scaling:g}; {pattern}. LoRA "
            f"parameters {advice.source_lora_params:,} -> {advice.proposed_lora_params:,} "
            f"({advice.saving:.0%} fewer). The energy a rank keeps is a property of the trained update, not of "
            f"the metric: whether the smaller adapter is as good is measured by `loraexp report --confirm`.")
