"""loraexp: LoRA / QLoRA fine-tuning experiments on Hugging Face PEFT.

The public API is imported lazily (PEP 562 ``__getattr__``): ``import loraexp`` loads no
torch, transformers or PEFT, so ``loraexp --help`` and config errors are instant; the heavy
libraries load when a run starts.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "loraexp.errors", "DataError": "loraexp.errors", "LoraexpError": "loraexp.errors",
    "ModelError": "loraexp.errors", "VerificationError": "loraexp.errors",
    "ExperimentConfig": "loraexp.config.schema",
    "build_config": "loraexp.config.load", "load_config": "loraexp.config.load",
    "expand": "loraexp.sweep.expand",
    "RunRecord": "loraexp.results.record", "RunResult": "loraexp.results.record",
    "run_experiment": "loraexp.run.recipe",
    "SweepResult": "loraexp.sweep.runner", "run_sweep": "loraexp.sweep.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'loraexp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
