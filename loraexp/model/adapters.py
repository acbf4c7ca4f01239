"""Load a saved LoRA adapter safely: safetensors only, checked before PEFT reads it.

A run's ``adapter/`` is written by ``PeftModel.save_pretrained`` (``adapter_config.json`` +
``adapter_model.safetensors``). A pickled ``adapter_model.bin`` is refused: unpickling runs
code, safetensors holds tensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

from loraexp.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(path: str | Path, field: str = "adapter") -> None:
    """Check that ``path`` holds a readable LoRA adapter without loading any model.

    ``adapter_config.json`` must parse as a PEFT config with ``peft_type`` LORA and
    ``adapter_model.safetensors`` must have a valid safetensors header with ``lora_A`` /
    ``lora_B`` tensors.

    Raises:
        ConfigError: naming ``field``, the path and what is wrong (missing, not JSON, not a
            LoRA config, pickled weights only, corrupted safetensors).
    """
    from safetensors import safe_open

    path = Path(path)
    where = f"`{field}` directory {str(path)!r}"
    config_path, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise ConfigError(f"{where} has no {ADAPTER_CONFIG}; expected a PEFT adapter saved by save_pretrained")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {ADAPTER_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"{where}: {ADAPTER_CONFIG} must describe a LoRA adapter (peft_type LORA), got {got!r}")
    if not weights.is_file():
        pickled = " (adapter_model.bin is refused: pickled weights can run code; re-save with safetensors)" \
            if (path / "adapter_model.bin").exists() else ""
        raise ConfigError(f"{where} has no {ADAPTER_WEIGHTS}{pickled}")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise ConfigError(f"{where}: {ADAPTER_WEIGHTS} is corrupted ({type(exc).__name__}: {exc})") from None
    if not any("lora_A" in k for k in keys) or not any("lora_B" in k for k in keys):
        raise ConfigError(f"{where}: {ADAPTER_WEIGHTS} holds no lora_A/lora_B tensors (keys: {keys[:5]})")


def load_adapter(base_model, path: str | Path, field: str = "adapter"):
    """``PeftModel.from_pretrained(base_model, path)`` after :func:`check_adapter_dir`, reading
    safetensors only (``use_safetensors=True``).

    Raises:
        ConfigError: see :func:`check_adapter_dir`; also when PEFT cannot apply the adapter to
            ``base_model`` (e.g. shapes of another model).
    """
    from peft import PeftModel

    check_adapter_dir(path, field)
    try:
        return PeftModel.from_pretrained(base_model, str(path), use_safetensors=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConfigError(f"`{field}` directory {str(path)!r} does not fit the base model "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None


def save_initial_adapter(peft_model, path: str | Path) -> None:
    """Save the adapter of a base-rewriting initialisation (PiSSA, OLoRA) right after
    ``get_peft_model``, as PEFT's weight conversion needs it: with ``init_lora_weights`` set
    to ``True`` while saving (PEFT's documented recipe), restored afterwards."""
    config = peft_model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        peft_model.save_pretrained(str(path))
    finally:
        config.init_lora_weights = init


def save_converted_adapter(peft_model, adapter_dir: str | Path, initial_dir: str | Path) -> None:
    """Save a base-rewriting adapter converted to apply to the original base
    (``save_pretrained(..., path_initial_model_for_weight_conversion=initial_dir)``, rank 2r),
    then add the trained ``modules_to_save`` tensors (a classification head) that PEFT 0.21's
    conversion leaves out of the file, under the keys ``get_peft_model_state_dict`` gives them."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    peft_model.save_pretrained(str(adapter_dir), path_initial_model_for_weight_conversion=str(initial_dir))
    path = Path(adapter_dir) / "adapter_model.safetensors"
    saved = load_file(path)
    missing = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()
               if k not in saved and "lora_" not in k}
    if missing:
        save_file({**saved, **missing}, str(path), metadata={"format": "pt"})


def warm_start(peft_model, path: str | Path, field: str = "warm_start") -> int:
    """Copy the adapter tensors (``lora_A``/``lora_B`` of shapes ``(r, in_features)`` /
    ``(out_features, r)``, a trained head of ``modules_to_save``) of ``path``'s
    ``adapter_model.safetensors`` into ``peft_model`` (``peft.set_peft_model_state_dict``), e.g.
    the last good checkpoint of a run stopped by a NaN loss. Returns the number of tensors
    copied.

    Raises:
        ConfigError: see :func:`check_adapter_dir`; or the file's tensors do not fit the model
            (another rank, other target modules, another model), or the file lacks a LoRA
            tensor the model has.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    check_adapter_dir(path, field)
    where = f"`{field}` directory {str(path)!r}"
    weights = load_file(Path(path) / ADAPTER_WEIGHTS)
    expected = get_peft_model_state_dict(peft_model)
    missing = sorted(k for k in expected if "lora_" in k and k not in weights)
    unexpected = sorted(k for k in weights if k not in expected)
    wrong = sorted(k for k in weights if k in expected and weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what} {keys[:2]}" for what, keys in (
            ("missing", missing), ("not in the model", unexpected), ("of another shape", wrong)) if keys)
        raise ConfigError(f"{where} does not fit this run's adapter (another r, target_modules or model?): {detail}")
    set_peft_model_state_dict(peft_model, weights)
    return len(weights)
