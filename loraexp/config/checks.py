"""Value checks of an :class:`~loraexp.config.schema.ExperimentConfig`: every problem as one message
naming the field, the bad value and what is allowed.

Cheap: loads no model or data (the checks that need them are in :mod:`loraexp.sweep.preflight`),
and imports PEFT or transformers only to look up a ``lora``/``training`` key that is not one
of the common fields listed here (``tests/test_config.py`` checks these lists against
``peft.LoraConfig`` and ``transformers.TrainingArguments``), so a bad value is reported
without the seconds those imports take.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from loraexp.config.schema import (
    METHODS,
    PRESET_NAMES,
    QUANT_ABLATION_POINTS,
    RESERVED_TRAINING_KEYS,
    SECRET_TRAINING_KEYS,
    TASK_NAMES,
    ExperimentConfig,
)

# Common fields of peft.LoraConfig / transformers.TrainingArguments (a subset of each).
COMMON_LORA_KEYS = frozenset({
    "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "modules_to_save", "use_rslora", "use_dora",
    "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
    "fan_in_fan_out", "exclude_modules", "task_type"})
COMMON_TRAINING_KEYS = frozenset({
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "warmup_steps", "lr_scheduler_type", "weight_decay", "logging_steps",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "optim", "max_grad_norm",
    "bf16", "fp16", "use_cpu", "gradient_checkpointing", "torch_compile", "dataloader_num_workers",
    "adam_beta1", "adam_beta2", "adam_epsilon", "label_smoothing_factor", "tf32", "use_liger_kernel",
    "train_sampling_strategy"})


# numpy's legacy seeding (np.random.seed, which transformers.set_seed calls, and the RandomState
# of datasets' shuffle) takes seeds in [0, 2**32) and raises on any other.
SEED_LIMIT = 2**32
SEED_RULE = "an int in [0, 2**32) (numpy's seed range, used by transformers.set_seed)"
# TrainingArguments fields that size a batch: 0 or a fraction makes the DataLoader fail at the first step.
BATCH_KEYS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_number(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and value > 0


def _seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT


def _not_finite(value: Any) -> bool:
    """NaN or ±inf, as a float (YAML ``.nan``, ``.inf``, ``1e400``) or as the text YAML leaves
    ``nan`` and ``inf`` as."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return _number(value) and not math.isfinite(value)


def _positive_int_rule(value: Any) -> str | None:
    return None if _positive_int(value) else "a positive int"


def _positive_number_rule(value: Any) -> str | None:
    if _positive_number(value):
        return None
    return "a finite number > 0" if _not_finite(value) else "a number > 0"


def _seed_rule(value: Any) -> str | None:
    return None if _seed(value) else SEED_RULE


# Dotted key -> rule (None if the value is allowed, else what is allowed): the fields whose
# values a sweep axis (sweep.grid, sweep.learning_rates, sweep.alphas, sweep.seeds) can set too.
FIELD_RULES: dict[str, Callable[[Any], str | None]] = {
    "lora.r": _positive_int_rule,
    "lora.lora_alpha": _positive_number_rule,
    "training.learning_rate": _positive_number_rule,
    **{f"training.{key}": _positive_int_rule for key in BATCH_KEYS},
    "seed": _seed_rule,
    "data_seed": _seed_rule,
    "training.data_seed": _seed_rule,
    "max_seq_length": _positive_int_rule,
}


def field_problem(key: str, value: Any, where: str | None = None) -> str | None:
    """The problem of ``value`` for the dotted field ``key`` of :data:`FIELD_RULES` (None if
    allowed), naming ``where`` (default: the key): "`lora.r` must be a positive int, got 0"."""
    allowed = FIELD_RULES[key](value)
    return None if allowed is None else f"`{where or key}` must be {allowed}, got {value!r}"


def _lora_fields() -> set[str]:
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)}


def _training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def _check_choices(section: Any, prefix: str) -> list[str]:
    """Every field with ``choices`` metadata (recursing into sections) holds one of them."""
    problems = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            problems += _check_choices(value, f"{prefix}{f.name}.")
        elif "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
            problems.append(f"`{prefix}{f.name}` must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
    return problems


def _layer_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_lora(lora: dict[str, Any]) -> list[str]:
    problems = []
    unknown = set(lora) - COMMON_LORA_KEYS
    if unknown:
        unknown -= _lora_fields()
    for key in sorted(unknown, key=list(lora).index):
        problems.append(f"unknown key `lora.{key}`; allowed: the fields of peft.LoraConfig "
                        f"(e.g. r, lora_alpha, lora_dropout, target_modules, use_rslora, init_lora_weights)")
    for key in ("r", "lora_alpha"):
        problem = field_problem(f"lora.{key}", lora.get(key))
        if problem:
            problems.append(problem)
    for name, (ok, allowed) in {"rank_pattern": (_positive_int, "a positive int"),
                                "alpha_pattern": (_positive_number, "a finite number > 0")}.items():
        pattern = lora.get(name)
        if pattern is not None and not isinstance(pattern, dict):
            problems.append(f"`lora.{name}` must map module-name patterns to values, got {pattern!r}")
        for key, value in (pattern or {}).items() if isinstance(pattern, dict) else ():
            if not ok(value):
                problems.append(f"`lora.{name}` entry {key!r} must be {allowed}, got {value!r}")
    layers = lora.get("layers_to_transform")
    if layers is not None and not (_layer_index(layers) or isinstance(layers, list) and layers
                                   and all(map(_layer_index, layers))):
        problems.append("`lora.layers_to_transform` must be a layer index (an int >= 0), a non-empty list of them, "
                        f"or null (every layer), got {layers!r}")
    dropout = lora.get("lora_dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout < 1):
        problems.append(f"`lora.lora_dropout` must be in [0, 1), got {dropout!r}")
    targets = lora.get("target_modules")
    if targets is None:
        problems.append("`lora.target_modules` must be a preset name or a list of module names, got None")
    elif isinstance(targets, str) and targets not in PRESET_NAMES:
        problems.append(f"`lora.target_modules` preset {targets!r} is unknown; allowed presets: "
                        f"{', '.join(PRESET_NAMES)}, or an explicit list of module names")
    elif isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
        problems.append(f"`lora.target_modules` list must hold module names, got {targets!r}")
    elif targets is not None and not isinstance(targets, (str, list)):
        problems.append(f"`lora.target_modules` must be a preset name or a list of names, got {targets!r}")
    return problems


def _validate_training(training: dict[str, Any]) -> list[str]:
    problems = []
    unknown = set(training) - COMMON_TRAINING_KEYS - set(SECRET_TRAINING_KEYS) - set(RESERVED_TRAINING_KEYS)
    if unknown:
        unknown -= _training_fields()
    for key in training:
        if key in SECRET_TRAINING_KEYS:
            problems.append(f"`training.{key}` would store a secret in config.yaml and metrics.json; pass tokens "
                            "through the environment (HF_TOKEN, WANDB_API_KEY) instead")
        elif key in RESERVED_TRAINING_KEYS:
            problems.append(f"`training.{key}` is set by loraexp; use the top-level field instead "
                            "(output_dir, seed, tracking.wandb)")
        elif key in unknown:
            problems.append(f"unknown key `training.{key}`; allowed: the fields of "
                            "transformers.TrainingArguments (e.g. learning_rate, num_train_epochs, max_steps)")
    problem = field_problem("training.learning_rate", training.get("learning_rate"))
    if problem:
        problems.append(problem)
    for key in (*BATCH_KEYS, "data_seed"):
        if key in training and (key != "data_seed" or training[key] is not None):
            problem = field_problem(f"training.{key}", training[key])
            if problem:
                problems.append(problem)
    if training.get("fp16") and training.get("bf16"):
        problems.append("`training.fp16` and `training.bf16` are both true; allowed: at most one mixed precision "
                        "(bf16 on the CPU and on Ampere or newer GPUs, fp16 on older GPUs)")
    steps = training.get("max_steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or (steps <= 0 and steps != -1)):
        problems.append(f"`training.max_steps` must be a positive int (or -1 for epochs), got {steps!r}")
    epochs = training.get("num_train_epochs")
    by_epochs = steps in (None, -1)  # then the epochs decide how long training runs
    if "num_train_epochs" in training and not (_number(epochs) and math.isfinite(epochs)
                                               and (epochs > 0 or epochs == 0 and not by_epochs)):
        problems.append("`training.num_train_epochs` must be a finite number > 0 when `training.max_steps` is -1 or "
                        f"unset (the epochs decide how long training runs), got {epochs!r}" if by_epochs else
                        "`training.num_train_epochs` must be a finite number >= 0 (`training.max_steps` decides how "
                        f"long training runs), got {epochs!r}")
    return problems


def _validate_method(cfg: ExperimentConfig) -> list[str]:
    o = cfg.method_options
    problems = []
    if o.full_learning_rate is not None and not _positive_number(o.full_learning_rate):
        problems.append("`method_options.full_learning_rate` must be a number > 0 or null, "
                        f"got {o.full_learning_rate!r}")
    if not _positive_number(o.loraplus_lr_ratio):
        problems.append(f"`method_options.loraplus_lr_ratio` must be a number > 0, got {o.loraplus_lr_ratio!r}")
    if o.loftq_bits not in (4, 8):
        problems.append(f"`method_options.loftq_bits` must be 4 or 8, got {o.loftq_bits!r}")
    for name in ("loftq_iter", "eva_batches"):
        if not _positive_int(getattr(o, name)):
            problems.append(f"`method_options.{name}` must be a positive int, got {getattr(o, name)!r}")
    if not (_positive_number(o.eva_rho) and o.eva_rho >= 1):
        problems.append(f"`method_options.eva_rho` must be a number >= 1, got {o.eva_rho!r}")
    methods = set(cfg.sweep.methods) if cfg.sweep.mode == "ablation" and cfg.sweep.ablation_type == "method" else set()
    methods |= {cfg.method}  # a baseline always runs on a full-precision base (sweep.baseline_points)
    if cfg.warm_start is not None and "full" in methods:
        problems.append(f"`warm_start` {cfg.warm_start!r} starts a LoRA adapter from a checkpoint, but `method` full "
                        "trains no adapter; remove warm_start, or warm-start a LoRA method")
    if "full" in methods and cfg.quantization.method != "none":
        problems.append(f"`method` full trains every weight, which a quantized base cannot (quantization.method "
                        f"{cfg.quantization.method!r}); use quantization none for full fine-tuning")
    if {"loftq", "pissa", "olora"} & methods and cfg.quantization.method != "none":
        problems.append("`method` loftq, pissa and olora rewrite the base weights, which a quantized base cannot "
                        f"hold (quantization.method {cfg.quantization.method!r}); use quantization none")
    if "lora-plus" in methods and "optim" in cfg.training:
        problems.append(f"`method` lora-plus builds its own AdamW (peft.optimizers.create_loraplus_optimizer); "
                        f"remove `training.optim` ({cfg.training['optim']!r})")
    return problems


def _validate_sweep(cfg: ExperimentConfig) -> list[str]:
    s = cfg.sweep
    problems = []
    if s.mode == "ablation" and s.ablation_type is None:
        problems.append("`sweep.ablation_type` must be one of rank, alpha, modules, quantization, method, grid when "
                        "`sweep.mode` is ablation, got None")
    if s.mode == "ablation" and s.ablation_type == "grid" and not s.grid:
        problems.append("`sweep.grid` must map at least one dotted key to a list of values for a grid ablation, "
                        f"got {s.grid!r}")
    top_level = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for key, values in s.grid.items():
        if not isinstance(values, list) or not values:
            problems.append(f"`sweep.grid.{key}` must be a non-empty list, got {values!r}")
        elif key in FIELD_RULES:
            allowed = next(filter(None, map(FIELD_RULES[key], values)), None)
            if allowed:
                problems.append(f"`sweep.grid.{key}` must list values that are each {allowed}, got {values!r}")
        if key.split(".")[0] not in top_level:
            problems.append(f"`sweep.grid` key {key!r} is not a config field")
    bad = [q for q in s.quantizations if q not in QUANT_ABLATION_POINTS]
    if bad or not s.quantizations:
        problems.append(f"`sweep.quantizations` must list values from {', '.join(QUANT_ABLATION_POINTS)}, "
                        f"got {s.quantizations!r}")
    for name in ("alphas", "learning_rates"):  # an empty axis would expand to zero runs
        values = getattr(s, name)
        if not values or not all(map(_positive_number, values)):
            finite = "finite " if any(map(_not_finite, values)) else ""
            problems.append(f"`sweep.{name}` must be a non-empty list of {finite}numbers > 0, got {values!r}")
    if not s.ranks or not all(_positive_int(x) for x in s.ranks):
        problems.append(f"`sweep.ranks` must be a non-empty list of positive ints, got {s.ranks!r}")
    if not s.presets:
        problems.append("`sweep.presets` must be a non-empty list, got []")
    if s.seeds is not None and (not s.seeds or not all(map(_seed, s.seeds))):
        problems.append(f"`sweep.seeds` must be a non-empty list of ints in [0, 2**32) (numpy's seed range, used by "
                        f"transformers.set_seed), or null, got {s.seeds!r}")
    elif s.seeds is not None and len(set(s.seeds)) != len(s.seeds):
        problems.append(f"`sweep.seeds` lists a seed twice: {s.seeds!r}")
    bad = [m for m in s.methods if m not in METHODS]
    if not s.methods or bad:
        problems.append(f"`sweep.methods` must list run types from {', '.join(METHODS)}, got {s.methods!r}")
    elif len(set(s.methods)) != len(s.methods):
        problems.append(f"`sweep.methods` lists a method twice: {s.methods!r}")
    if not (isinstance(s.max_drop, (int, float)) and not isinstance(s.max_drop, bool) and 0 <= s.max_drop < 1
            or s.drop_unit == "absolute" and _positive_number(s.max_drop)):
        problems.append(f"`sweep.max_drop` must be a number in [0, 1) for a relative drop (0.03 = 3%), or > 0 "
                        f"with drop_unit absolute, got {s.max_drop!r}")
    if not (isinstance(s.confidence, float) and 0.5 <= s.confidence < 1):
        problems.append(f"`sweep.confidence` must be a level in [0.5, 1), e.g. 0.95, got {s.confidence!r}")
    if not isinstance(s.bootstrap_seed, int) or isinstance(s.bootstrap_seed, bool) or s.bootstrap_seed < 0:
        problems.append(f"`sweep.bootstrap_seed` must be an int >= 0, got {s.bootstrap_seed!r}")
    if not _positive_int(s.bootstrap_resamples) or s.bootstrap_resamples < 100:
        problems.append(f"`sweep.bootstrap_resamples` must be an int >= 100, got {s.bootstrap_resamples!r}")
    if s.backend == "optuna" and not s.storage:
        problems.append("`sweep.storage` must name an Optuna storage (a journal file path or a database URL) "
                        "when `sweep.backend` is optuna, got None")
    if s.stale_trial_s < 0:
        problems.append(f"`sweep.stale_trial_s` must be a number >= 0 (seconds), got {s.stale_trial_s!r}")
    if s.checkpoint_minutes is not None and not _positive_number(s.checkpoint_minutes):
        problems.append("`sweep.checkpoint_minutes` must be a finite number > 0 (minutes of training between "
                        f"checkpoints) or null (off), got {s.checkpoint_minutes!r}")
    if not _positive_int(s.n_trials):
        problems.append(f"`sweep.n_trials` must be a positive int, got {s.n_trials!r}")
    low_high = s.tpe_learning_rate
    if len(low_high) != 2 or not 0 < low_high[0] < low_high[1] < math.inf:
        problems.append(f"`sweep.tpe_learning_rate` must be [low, high] with 0 < low < high < inf, got {low_high!r}")
    if not s.tpe_ranks or not all(_positive_int(x) for x in s.tpe_ranks):
        problems.append(f"`sweep.tpe_ranks` must be a non-empty list of positive ints, got {s.tpe_ranks!r}")
    problems += _validate_pruning(cfg)
    if s.name is not None and (not s.name or "/" in s.name or s.name in (".", "..")):
        problems.append(f"`sweep.name` must be a plain directory name, got {s.name!r}")
    return problems


def _validate_pruning(cfg: ExperimentConfig) -> list[str]:
    """``sweep.reduction_factor``/``min_resource``, and what a pruner needs: a step budget
    (``training.max_steps``; rungs are optimizer steps) with room for a rung below it."""
    s, problems = cfg.sweep, []
    if not _positive_int(s.reduction_factor) or s.reduction_factor < 2:
        problems.append(f"`sweep.reduction_factor` must be an int >= 2 (eta: about 1/eta of the configurations "
                        f"go on at each rung), got {s.reduction_factor!r}")
        return problems
    if s.min_resource is not None and not _positive_int(s.min_resource):
        problems.append(f"`sweep.min_resource` must be a positive int (optimizer steps) or null, "
                        f"got {s.min_resource!r}")
        return problems
    if s.pruner == "none":
        return problems
    max_steps = cfg.training.get("max_steps", -1)
    if not _positive_int(max_steps):
        problems.append(f"`sweep.pruner` {s.pruner!r} needs `training.max_steps` > 0 (rungs are optimizer steps), got "
                        f"{max_steps!r}; set --max-steps or `--prune none`")
        return problems
    first = s.min_resource if s.min_resource is not None else max_steps // s.reduction_factor ** 2
    if not 1 <= first < max_steps:
        problems.append(f"`sweep.min_resource` (the first rung) must be in [1, training.max_steps) = [1, {max_steps}), "
                        f"got {first!r}" + ("" if s.min_resource is not None else
                                            f" (max_steps // reduction_factor**2 = {max_steps} // "
                                            f"{s.reduction_factor}**2); set sweep.min_resource"))
    return problems


def _validate_qa(cfg: ExperimentConfig) -> list[str]:
    """The ``qa`` section (checked for ``squad_v2`` only): positive sizes, a finite threshold,
    and a document stride that leaves room for new context in each window (below half of
    ``max_seq_length``)."""
    qa, problems = cfg.qa, []
    if cfg.task != "squad_v2":
        return problems
    for name in ("max_answer_length", "n_best", "local_train_articles"):
        if not _positive_int(getattr(qa, name)):
            problems.append(f"`qa.{name}` must be a positive int, got {getattr(qa, name)!r}")
    stride = qa.doc_stride
    if stride is None:
        pass
    elif not (isinstance(stride, int) and not isinstance(stride, bool) and stride >= 0):
        problems.append(f"`qa.doc_stride` must be an int >= 0 or null, got {stride!r}")
    elif _positive_int(cfg.max_seq_length) and stride >= cfg.max_seq_length // 2:
        problems.append(f"`qa.doc_stride` must be below half of max_seq_length ({cfg.max_seq_length // 2}), so that "
                        f"a window holds the question and new context, got {stride!r}")
    threshold = qa.null_score_diff_threshold
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)):
        problems.append(f"`qa.null_score_diff_threshold` must be a finite number, got {threshold!r}")
    return problems


def validate(cfg: ExperimentConfig) -> list[str]:
    """Return every problem of ``cfg`` (empty if valid). Cheap: loads no model or data."""
    problems: list[str] = []
    if cfg.task not in TASK_NAMES:
        problems.append(f"`task` {cfg.task!r} is unknown; allowed: {', '.join(TASK_NAMES)}")
    if not isinstance(cfg.model, str) or not cfg.model.strip():
        problems.append(f"`model` must be an alias, Hub id or path, got {cfg.model!r}")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg, name)
        if value is not None and not _positive_int(value):
            problems.append(f"`{name}` must be a positive int or null, got {value!r}")
    for key in ("max_seq_length", "seed", "data_seed"):
        problem = field_problem(key, getattr(cfg, key))
        if problem:
            problems.append(problem)
    pad = cfg.pad_to_multiple_of
    if pad is not None and not (_positive_int(pad) and _positive_int(cfg.max_seq_length)
                                and cfg.max_seq_length % pad == 0):
        problems.append(f"`pad_to_multiple_of` must be a positive int that divides `max_seq_length` "
                        f"({cfg.max_seq_length!r}), so that no padded batch is longer than max_seq_length, or null "
                        f"(pad to the longest row), got {pad!r}")
    problems += _check_choices(cfg, "")
    problems += _validate_lora(cfg.lora)
    q = cfg.quantization
    if q.double_quant and q.method in ("none", "int8"):
        problems.append(f"`quantization.double_quant` applies to nf4/fp4 only, got it with method {q.method!r}")
    e = cfg.evaluation
    for name in ("generation_samples", "max_new_tokens", "generation_batch_size"):
        if not _positive_int(getattr(e, name)):
            problems.append(f"`evaluation.{name}` must be a positive int, got {getattr(e, name)!r}")
    problems += _validate_qa(cfg)
    problems += _validate_training(cfg.training)
    problems += _validate_method(cfg)
    if not _positive_int(cfg.tracking.stats_every_steps):
        problems.append(f"`tracking.stats_every_steps` must be a positive int, got {cfg.tracking.stats_every_steps!r}")
    probe = cfg.tracking.cka_probe_examples
    if not (_positive_int(probe) and probe >= 2) and not (isinstance(probe, int) and not isinstance(probe, bool)
                                                            and probe == 0):
        problems.append(f"`tracking.cka_probe_examples` must be 0 (off) or an int >= 2 (CKA compares examples), "
                        f"got {probe!r}")
    v = cfg.verification
    if v.grad_flow_steps < 2:
        problems.append(f"`verification.grad_flow_steps` must be an int >= 2, got {v.grad_flow_steps!r}")
    for name in ("merge_atol", "quantized_merge_atol"):
        if not _positive_number(getattr(v, name)):
            problems.append(f"`verification.{name}` must be a number > 0, got {getattr(v, name)!r}")
    if not _positive_int(v.merge_eval_batches):
        problems.append(f"`verification.merge_eval_batches` must be a positive int, got {v.merge_eval_batches!r}")
    if not (_positive_int(v.latency_repeats) or v.latency_repeats == 0 and type(v.latency_repeats) is int):
        problems.append(f"`verification.latency_repeats` must be 0 (latency not measured) or a positive int, "
                        f"got {v.latency_repeats!r}")
    drop = v.min_loss_decrease
    if drop is not None and not (isinstance(drop, (int, float)) and not isinstance(drop, bool)
                                 and math.isfinite(drop) and drop < 100):
        problems.append(f"`verification.min_loss_decrease` must be null (off) or a number of percent below 100 "
                        f"(30 = the loss falls by 30%), got {drop!r}")
    return problems + _validate_sweep(cfg)
