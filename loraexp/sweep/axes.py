"""The ablation axes: each ablation defined once as a list of config overrides (``lora``
fields, or a ``quantization`` mapping), which :mod:`loraexp.sweep.expand` turns into run
configs. Pure functions; imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from loraexp.config.schema import PRESET_NAMES, QUANT_ABLATION_POINTS, SweepConfig, lora_alpha_for_rank
from loraexp.errors import ConfigError

# The defaults of the sweep section (loraexp.config.schema.SweepConfig), not repeated here.
DEFAULT_RANKS = tuple(SweepConfig().ranks)
DEFAULT_ALPHAS = tuple(SweepConfig().alphas)
DEFAULT_ALPHA_ABLATION_R = SweepConfig().alpha_ablation_r


def rank_axis(ranks=DEFAULT_RANKS) -> list[dict[str, Any]]:
    """Rank ablation: r in ``ranks`` with lora_alpha = 2r (:func:`~loraexp.config.schema.lora_alpha_for_rank`,
    so α/r stays 2)."""
    return [{"r": r, "lora_alpha": lora_alpha_for_rank(r)} for r in ranks]


def alpha_axis(alphas=DEFAULT_ALPHAS, r: int = DEFAULT_ALPHA_ABLATION_R) -> list[dict[str, Any]]:
    """Alpha ablation: lora_alpha in ``alphas`` at fixed r (scaling α/r varies)."""
    return [{"r": r, "lora_alpha": a} for a in alphas]


def module_axis(presets=PRESET_NAMES) -> list[dict[str, Any]]:
    """Module ablation: one entry per preset name (or explicit list of module names)."""
    return [{"target_modules": p} for p in presets]


def quantization_axis(points=("none", "nf4", "nf4-dq")) -> list[dict[str, Any]]:
    """Quantization ablation: one ``quantization`` mapping per point name (``none``, ``nf4``,
    ``nf4-dq`` = NF4 + double quantization, ``fp4``, ``fp4-dq``, ``int8``), same LoRA config.

    Raises:
        ConfigError: an unknown point name.
    """
    unknown = [p for p in points if p not in QUANT_ABLATION_POINTS]
    if unknown:
        raise ConfigError(f"`sweep.quantizations` values {unknown} are unknown; allowed: "
                          f"{', '.join(QUANT_ABLATION_POINTS)}")
    return [dict(QUANT_ABLATION_POINTS[p]) for p in points]
