"""Logical target-module presets, mapped per architecture family (docs/design.md, "Target modules").

Users say what they mean (``standard`` = query and value projections); this module maps
the preset to the model's module names and lets PEFT do the matching
(``peft.tuners.tuners_utils.check_target_module_exists``). An explicit list of names is
always accepted as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loraexp.config.schema import PRESET_NAMES
from loraexp.errors import ConfigError

if TYPE_CHECKING:
    from peft import LoraConfig

# model_type (transformers config) -> family
FAMILIES: dict[str, str] = {
    **{t: "llama" for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "gemma", "gemma2",
                            "phi3", "olmo", "olmo2", "smollm3")},
    **{t: "bert" for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet")},
    "gpt2": "gpt2",
}

# family -> preset -> PEFT target_modules. A list matches by name suffix; a string is a
# full-match regex (PEFT semantics), used where a suffix would be ambiguous: in BERT
# ``output.dense`` is both the FFN output and the end of ``attention.output.dense``.
PRESETS: dict[str, dict[str, list[str] | str]] = {
    "llama": {
        "minimal": ["q_proj"],
        "standard": ["q_proj", "v_proj"],
        "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "mlp": ["gate_proj", "up_proj", "down_proj"],
    },
    "bert": {
        "minimal": ["query"],
        "standard": ["query", "value"],
        "attention": ["query", "key", "value", "attention.output.dense"],
        "mlp": r".*\.layer\.\d+\.(intermediate|output)\.dense",
    },
    "gpt2": {
        "minimal": ["c_attn"],
        "standard": ["c_attn"],
        "attention": ["c_attn", "attn.c_proj"],
        "mlp": ["mlp.c_fc", "mlp.c_proj"],
    },
}


def family_of(model_type: str) -> str:
    """Architecture family (``llama`` | ``bert`` | ``gpt2``) of a transformers ``model_type``.

    Raises:
        ConfigError: the model type has no preset table (use an explicit list instead).
    """
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ConfigError(
            f"`lora.target_modules` presets are not defined for model_type {model_type!r}; known model types: "
            f"{', '.join(sorted(FAMILIES))}. Give an explicit list of module names instead") from None


def resolve_target_modules(spec: str | list[str], model_type: str) -> list[str] | str:
    """Map a preset name or explicit list to PEFT ``target_modules``.

    Args:
        spec: a name from :data:`PRESET_NAMES` or a list of module names.
        model_type: ``config.model_type`` of the model, e.g. ``"bert"``.

    Returns:
        A sorted list of names, a full-match regex string, or ``"all-linear"`` (PEFT's own
        preset: every Linear except the output head).

    Raises:
        ConfigError: unknown preset, or presets unknown for this architecture.
    """
    if isinstance(spec, list):
        return sorted(spec)
    if spec == "all-linear":
        return "all-linear"
    if spec not in PRESET_NAMES:
        raise ConfigError(f"`lora.target_modules` preset {spec!r} is unknown; allowed: {', '.join(PRESET_NAMES)}")
    value = PRESETS[family_of(model_type)][spec]
    return sorted(value) if isinstance(value, list) else value


def adaptable_module_names(model) -> list[str]:
    """Names of the modules of ``model`` (a ``torch.nn.Module``) LoRA can adapt (``nn.Linear``
    and GPT-2's ``Conv1D``), in model order."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"]


def matched_module_names(model, target_modules: list[str] | str) -> list[str]:
    """Module names of ``model`` that PEFT would adapt for ``target_modules`` (``all-linear``
    returns every adaptable module; PEFT excludes the output head itself).

    Raises:
        ConfigError: nothing matches; the message lists the model's Linear module names.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    candidates = adaptable_module_names(model)
    if target_modules == "all-linear":
        return candidates
    probe = lora_config({"target_modules": target_modules})
    matched = [n for n in candidates if check_target_module_exists(probe, n)]
    if not matched:
        raise ConfigError(
            f"`lora.target_modules` {target_modules!r} matches no module of the model; its Linear modules are: "
            f"{summarise_module_names(candidates)}")
    return matched


def summarise_module_names(names: Iterable[str]) -> str:
    """Distinct names with layer indices collapsed (``encoder.layer.*.attention.self.query``)."""
    seen: dict[str, None] = {}
    for n in names:
        seen[re.sub(r"\.\d+\.", ".*.", n)] = None
    return ", ".join(seen)


def lora_config(lora: dict[str, Any], model_type: str | None = None, **extra: Any) -> LoraConfig:
    """The one place loraexp builds a :class:`peft.LoraConfig`: from a ``lora`` mapping plus
    ``extra`` (e.g. ``task_type``, ``modules_to_save``), a target-module preset resolved for
    ``model_type`` (:func:`resolve_target_modules`; left as given without a ``model_type``).
    PEFT validates the fields itself (``LoraConfig.__post_init__``).

    Raises:
        ConfigError: an unknown preset or an architecture without presets, or fields
            ``peft.LoraConfig`` rejects (its message, prefixed ``lora`` was rejected by
            peft.LoraConfig).
    """
    from peft import LoraConfig

    fields = {**lora, **extra}
    if model_type is not None and "target_modules" in fields:
        fields["target_modules"] = resolve_target_modules(fields["target_modules"], model_type)
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError, ImportError) as exc:
        raise ConfigError(f"`lora` was rejected by peft.LoraConfig: {exc}") from None
