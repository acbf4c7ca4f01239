"""loraexp: LoRA / QLoRA fine-tuning experiments on Hugging Face PEFT."""

from loraexp.config import ExperimentConfig, build_config, load_config
from loraexp.errors import ConfigError, DataError, LoraexpError, ModelError, VerificationError
from loraexp.runner import RunResult, SweepResult, run_experiment, run_sweep
from loraexp.sweep import expand

__all__ = [
    "ConfigError", "DataError", "ExperimentConfig", "LoraexpError", "ModelError", "RunResult", "SweepResult",
    "VerificationError", "build_config", "expand", "load_config", "run_experiment", "run_sweep",
]
