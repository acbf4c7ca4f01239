"""Value checks of an :class:`~loraexp.config.ExperimentConfig`: every problem as one message
naming the field, the bad value and what is allowed. Cheap: loads no model or data (the
checks that need them are in :mod:`loraexp.preflight`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from loraexp.config import (
    ABLATION_TYPES,
    DTYPES,
    OPTUNA_SAMPLERS,
    QUANT_ABLATION_POINTS,
    QUANT_METHODS,
    RESERVED_TRAINING_KEYS,
    SECRET_TRAINING_KEYS,
    SWEEP_BACKENDS,
    SWEEP_MODES,
    WANDB_MODES,
    ExperimentConfig,
    QuantizationConfig,
)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _validate_lora(lora: dict[str, Any]) -> list[str]:
    from peft import LoraConfig

    from loraexp.target_modules import PRESET_NAMES

    problems = []
    allowed = {f.name for f in dataclasses.fields(LoraConfig)}
    for key in lora:
        if key not in allowed:
            problems.append(f"unknown key `lora.{key}`; allowed: the fields of peft.LoraConfig "
                            f"(e.g. r, lora_alpha, lora_dropout, target_modules, use_rslora, init_lora_weights)")
    if "r" in lora and not _positive_int(lora["r"]):
        problems.append(f"`lora.r` must be a positive int, got {lora['r']!r}")
    alpha = lora.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        problems.append(f"`lora.lora_alpha` must be a number > 0, got {alpha!r}")
    dropout = lora.get("lora_dropout")
    if dropout is not None and (not isinstance(dropout, (int, float)) or not 0 <= dropout < 1):
        problems.append(f"`lora.lora_dropout` must be in [0, 1), got {dropout!r}")
    targets = lora.get("target_modules")
    if isinstance(targets, str) and targets not in PRESET_NAMES:
        problems.append(f"`lora.target_modules` preset {targets!r} is unknown; allowed presets: "
                        f"{', '.join(PRESET_NAMES)}, or an explicit list of module names")
    elif isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
        problems.append(f"`lora.target_modules` list must hold module names, got {targets!r}")
    elif targets is not None and not isinstance(targets, (str, list)):
        problems.append(f"`lora.target_modules` must be a preset name or a list of names, got {targets!r}")
    return problems


def _validate_quantization(q: QuantizationConfig) -> list[str]:
    problems = []
    if q.method not in QUANT_METHODS:
        problems.append(f"`quantization.method` must be one of {', '.join(QUANT_METHODS)}, got {q.method!r}")
    if q.compute_dtype not in DTYPES:
        problems.append(f"`quantization.compute_dtype` must be one of {', '.join(DTYPES)}, got {q.compute_dtype!r}")
    if q.double_quant and q.method in ("none", "int8"):
        problems.append(f"`quantization.double_quant` applies to nf4/fp4 only, got it with method {q.method!r}")
    return problems


def _validate_training(training: dict[str, Any]) -> list[str]:
    from transformers import TrainingArguments

    problems = []
    allowed = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in training:
        if key in SECRET_TRAINING_KEYS:
            problems.append(f"`training.{key}` would store a secret in config.yaml and metrics.json; pass tokens "
                            "through the environment (HF_TOKEN, WANDB_API_KEY) instead")
        elif key in RESERVED_TRAINING_KEYS:
            problems.append(f"`training.{key}` is set by loraexp; use the top-level field instead "
                            "(output_dir, seed, tracking.wandb)")
        elif key not in allowed:
            problems.append(f"unknown key `training.{key}`; allowed: the fields of "
                            "transformers.TrainingArguments (e.g. learning_rate, num_train_epochs, max_steps)")
    lr = training.get("learning_rate")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        problems.append(f"`training.learning_rate` must be a number > 0, got {lr!r}")
    steps = training.get("max_steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or (steps <= 0 and steps != -1)):
        problems.append(f"`training.max_steps` must be a positive int (or -1 for epochs), got {steps!r}")
    return problems


def validate(cfg: ExperimentConfig) -> list[str]:
    """Return every problem of ``cfg`` (empty if valid). Cheap: loads no model or data."""
    from loraexp.tasks import TASKS

    problems: list[str] = []
    if cfg.task not in TASKS:
        problems.append(f"`task` {cfg.task!r} is unknown; allowed: {', '.join(sorted(TASKS))}")
    if not isinstance(cfg.model, str) or not cfg.model.strip():
        problems.append(f"`model` must be an alias, Hub id or path, got {cfg.model!r}")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg, name)
        if value is not None and not _positive_int(value):
            problems.append(f"`{name}` must be a positive int or null, got {value!r}")
    if not _positive_int(cfg.max_seq_length):
        problems.append(f"`max_seq_length` must be a positive int, got {cfg.max_seq_length!r}")
    if cfg.model_dtype not in DTYPES:
        problems.append(f"`model_dtype` must be one of {', '.join(DTYPES)}, got {cfg.model_dtype!r}")
    problems += _validate_lora(cfg.lora)
    problems += _validate_quantization(cfg.quantization)
    e = cfg.evaluation
    for name in ("generation_samples", "max_new_tokens", "generation_batch_size"):
        if not _positive_int(getattr(e, name)):
            problems.append(f"`evaluation.{name}` must be a positive int, got {getattr(e, name)!r}")
    problems += _validate_training(cfg.training)
    if cfg.tracking.wandb not in WANDB_MODES:
        problems.append(f"`tracking.wandb` must be one of {', '.join(WANDB_MODES)}, got {cfg.tracking.wandb!r}")
    if not _positive_int(cfg.tracking.stats_every_steps):
        problems.append(f"`tracking.stats_every_steps` must be a positive int, got {cfg.tracking.stats_every_steps!r}")
    v = cfg.verification
    if not isinstance(v.grad_flow_steps, int) or v.grad_flow_steps < 2:
        problems.append(f"`verification.grad_flow_steps` must be an int >= 2, got {v.grad_flow_steps!r}")
    if v.merge_space not in ("auto", "logits", "probs"):
        problems.append(f"`verification.merge_space` must be one of auto, logits, probs, got {v.merge_space!r}")
    if not v.quantized_merge_atol > 0:
        problems.append(f"`verification.quantized_merge_atol` must be > 0, got {v.quantized_merge_atol!r}")
    if not v.merge_atol > 0:
        problems.append(f"`verification.merge_atol` must be > 0, got {v.merge_atol!r}")
    if not _positive_int(v.merge_eval_batches):
        problems.append(f"`verification.merge_eval_batches` must be a positive int, got {v.merge_eval_batches!r}")
    if not _positive_int(v.latency_repeats):
        problems.append(f"`verification.latency_repeats` must be a positive int, got {v.latency_repeats!r}")
    s = cfg.sweep
    if s.mode not in SWEEP_MODES:
        problems.append(f"`sweep.mode` must be one of {', '.join(SWEEP_MODES)}, got {s.mode!r}")
    if s.mode == "ablation" and s.ablation_type not in ABLATION_TYPES:
        problems.append(f"`sweep.ablation_type` must be one of {', '.join(ABLATION_TYPES)} when "
                        f"`sweep.mode` is ablation, got {s.ablation_type!r}")
    if s.ablation_type is not None and s.ablation_type not in ABLATION_TYPES:
        problems.append(f"`sweep.ablation_type` must be one of {', '.join(ABLATION_TYPES)}, got {s.ablation_type!r}")
    if s.mode == "ablation" and s.ablation_type == "grid" and not s.grid:
        problems.append("`sweep.grid` must map at least one dotted key to a list of values for a grid ablation")
    for key, values in s.grid.items():
        if not isinstance(values, list) or not values:
            problems.append(f"`sweep.grid.{key}` must be a non-empty list, got {values!r}")
        if key.split(".")[0] not in {f.name for f in dataclasses.fields(ExperimentConfig)}:
            problems.append(f"`sweep.grid` key {key!r} is not a config field")
    bad = [q for q in s.quantizations if q not in QUANT_ABLATION_POINTS]
    if bad or not s.quantizations:
        problems.append(f"`sweep.quantizations` must list values from {', '.join(QUANT_ABLATION_POINTS)}, "
                        f"got {s.quantizations!r}")
    if not all(_positive_int(x) for x in s.ranks):
        problems.append(f"`sweep.ranks` must be a list of positive ints, got {s.ranks!r}")
    if s.backend not in SWEEP_BACKENDS:
        problems.append(f"`sweep.backend` must be one of {', '.join(SWEEP_BACKENDS)}, got {s.backend!r}")
    if s.backend == "optuna" and not s.storage:
        problems.append("`sweep.storage` must name an Optuna storage (a journal file path or a database URL) "
                        "when `sweep.backend` is optuna, got None")
    if s.sampler not in OPTUNA_SAMPLERS:
        problems.append(f"`sweep.sampler` must be one of {', '.join(OPTUNA_SAMPLERS)}, got {s.sampler!r}")
    if isinstance(s.stale_trial_s, bool) or s.stale_trial_s < 0:
        problems.append(f"`sweep.stale_trial_s` must be a number >= 0 (seconds), got {s.stale_trial_s!r}")
    if not _positive_int(s.n_trials):
        problems.append(f"`sweep.n_trials` must be a positive int, got {s.n_trials!r}")
    low_high = s.tpe_learning_rate
    if len(low_high) != 2 or not 0 < low_high[0] < low_high[1]:
        problems.append(f"`sweep.tpe_learning_rate` must be [low, high] with 0 < low < high, got {low_high!r}")
    if not s.tpe_ranks or not all(_positive_int(x) for x in s.tpe_ranks):
        problems.append(f"`sweep.tpe_ranks` must be a non-empty list of positive ints, got {s.tpe_ranks!r}")
    if s.direction not in (None, "maximize", "minimize"):
        problems.append(f"`sweep.direction` must be maximize, minimize or null, got {s.direction!r}")
    if s.name is not None and (not s.name or "/" in s.name or s.name in (".", "..")):
        problems.append(f"`sweep.name` must be a plain directory name, got {s.name!r}")
    return problems
