"""LoRA variants for ablations: pure functions from a base ``lora`` mapping to
:class:`peft.LoraConfig` objects.

Each ablation is defined once as an *axis* (a list of ``lora`` field overrides); the
``*_ablation`` functions turn an axis into LoraConfigs for direct use with
``get_peft_model``, and :mod:`loraexp.sweep` turns the same axes into run configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraexp.errors import ConfigError
from loraexp.schema import QUANT_ABLATION_POINTS, SweepConfig, lora_alpha_for_rank
from loraexp.target_modules import PRESET_NAMES, resolve_target_modules

if TYPE_CHECKING:
    from peft import LoraConfig

# The defaults of the sweep section (loraexp.schema.SweepConfig), not repeated here.
DEFAULT_RANKS = tuple(SweepConfig().ranks)
DEFAULT_ALPHAS = tuple(SweepConfig().alphas)
DEFAULT_ALPHA_ABLATION_R = SweepConfig().alpha_ablation_r


def rank_axis(ranks=DEFAULT_RANKS) -> list[dict[str, Any]]:
    """Rank ablation: r in ``ranks`` with lora_alpha = 2r (:func:`~loraexp.schema.lora_alpha_for_rank`,
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


def lora_config(lora: dict[str, Any], model_type: str, **extra: Any) -> LoraConfig:
    """Build a :class:`peft.LoraConfig` from a ``lora`` mapping, resolving a target-module
    preset for ``model_type`` (see :mod:`loraexp.target_modules`). ``extra`` (e.g.
    ``task_type``, ``modules_to_save``) is passed through.

    Raises:
        ConfigError: unknown preset or architecture without presets.
        ValueError / TypeError: from PEFT's own validation of the fields.
    """
    from peft import LoraConfig

    fields = {**lora, **extra}
    if "target_modules" in fields:
        fields["target_modules"] = resolve_target_modules(fields["target_modules"], model_type)
    return LoraConfig(**fields)


def _ablate(base: dict[str, Any], axis: list[dict[str, Any]], model_type: str, extra: dict) -> list[LoraConfig]:
    return [lora_config({**base, **point}, model_type, **extra) for point in axis]


def rank_ablation(base: dict[str, Any], model_type: str, ranks=DEFAULT_RANKS, **extra: Any) -> list[LoraConfig]:
    """LoraConfigs for r in ``ranks`` with lora_alpha = 2r; other fields from ``base``;
    ``extra`` (e.g. ``task_type="SEQ_CLS"``) goes to every config. Same for the two below."""
    return _ablate(base, rank_axis(ranks), model_type, extra)


def alpha_ablation(base: dict[str, Any], model_type: str, alphas=DEFAULT_ALPHAS, r: int = DEFAULT_ALPHA_ABLATION_R,
                   **extra: Any) -> list[LoraConfig]:
    """LoraConfigs for lora_alpha in ``alphas`` at rank ``r``; other fields from ``base``."""
    return _ablate(base, alpha_axis(alphas, r), model_type, extra)


def module_ablation(base: dict[str, Any], model_type: str, presets=PRESET_NAMES, **extra: Any) -> list[LoraConfig]:
    """LoraConfigs, one per target-module preset (resolved for ``model_type``) or explicit list."""
    return _ablate(base, module_axis(presets), model_type, extra)
