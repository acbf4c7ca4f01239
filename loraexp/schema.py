"""Experiment configuration: typed dataclasses, YAML loading, overrides and validation.

One :class:`ExperimentConfig` fully describes one run. The ``lora`` and ``training``
mappings are passed through to :class:`peft.LoraConfig` and
:class:`transformers.TrainingArguments`, so those libraries validate their own fields;
everything else is declared here with help text (``metadata["help"]``), as PEFT's
``LoraConfig`` does.

Loading order (later wins): dataclass defaults, the YAML file, CLI flags, ``--set key=value``.
Every problem is collected and raised once as a :class:`~loraexp.errors.ConfigError`; the
value checks are in :mod:`loraexp.validation`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraexp.errors import ConfigError

DATA_DIR_ENV = "LORAEXP_DATA_DIR"
WANDB_MODES = ("online", "offline", "disabled")
SWEEP_MODES = ("single", "sweep", "ablation")
SWEEP_BACKENDS = ("local", "optuna")
OPTUNA_SAMPLERS = ("grid", "tpe")
ABLATION_TYPES = ("rank", "alpha", "modules", "quantization", "grid")
QUANT_METHODS = ("none", "nf4", "fp4", "int8")
DTYPES = ("float32", "bfloat16", "float16")

# Fields of TrainingArguments that loraexp sets itself from the run's identity and layout.
RESERVED_TRAINING_KEYS = ("output_dir", "seed", "report_to", "run_name")
# Fields that would put a secret into config.yaml / metrics.json / W&B config.
SECRET_TRAINING_KEYS = ("hub_token",)

# sweep.quantizations value -> quantization overrides
QUANT_ABLATION_POINTS: dict[str, dict[str, Any]] = {
    "none": {"method": "none", "double_quant": False},
    "nf4": {"method": "nf4", "double_quant": False},
    "nf4-dq": {"method": "nf4", "double_quant": True},
    "fp4": {"method": "fp4", "double_quant": False},
    "fp4-dq": {"method": "fp4", "double_quant": True},
    "int8": {"method": "int8", "double_quant": False},
}

# Research-protocol defaults (brief, issue 2 §3): r=8, alpha=16, dropout 0.05, query/value.
DEFAULT_LORA: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": "standard",
}

# Tuned for all-MiniLM-L6-v2 on a 2-core CPU (README, "Measured"): one epoch over the
# training subset, batch 32, linear schedule with 6% warmup (``warmup_steps`` < 1 is a
# ratio of the total optimizer steps in transformers >= 5).
DEFAULT_TRAINING: dict[str, Any] = {
    "learning_rate": 2e-3,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "warmup_steps": 0.06,
    "lr_scheduler_type": "linear",
    "weight_decay": 0.0,
    "logging_steps": 10,
    "eval_strategy": "no",
    "save_strategy": "no",
}

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrackingConfig:
    """Where metrics go besides the local results directory (always written)."""

    wandb: str = _help("W&B mode: online | offline | disabled. offline/disabled need no network or login.",
                       default="disabled")
    project: str = _help("W&B project name.", default="loraexp")
    entity: str | None = _help("W&B entity (team or user); None uses the login's default.", default=None)
    stats_every_steps: int = _help(
        "Cadence, in optimizer steps, of adapter statistics and factor-space SVD rank analysis "
        "(also computed once at the end of training).", default=50)


@dataclass
class VerificationConfig:
    """Run-time verification settings (DESIGN.md, 'Run-time verification')."""

    grad_flow_steps: int = _help(
        "Number of first optimizer steps whose LoRA gradients are checked (>= 2: lora_A grads are "
        "only non-zero once lora_B has moved away from its zero init).", default=2)
    merge_atol: float = _help(
        "Max |difference| (in merge_space) allowed between adapter and merged model; 1e-4 is PEFT's "
        "fp32 merge tolerance.", default=1e-4)
    merge_space: str = _help(
        "Where merged and adapter outputs are compared: logits | probs | auto (logits for a classifier; "
        "next-token probabilities for a causal LM, whose logits over a large vocabulary after many layers "
        "differ by ~1e-4 from fp32 rounding alone).", default="auto")
    quantized_merge_atol: float = _help(
        "Quantized base: max |probability difference| between the merged full-precision model and the "
        "full-precision adapter model; 1e-2 is PEFT's tolerance for quantized merges.", default=1e-2)
    merge_eval_batches: int = _help("Number of eval batches used by the merge-equivalence check.",
                                    default=2)
    latency_repeats: int = _help("Timed forward passes over those batches for merged-vs-adapter latency.",
                                 default=1)


@dataclass
class QuantizationConfig:
    """bitsandbytes quantization of the frozen base (QLoRA, Dettmers et al. 2023)."""

    method: str = _help("none | nf4 | fp4 (4-bit, QLoRA) | int8 (LLM.int8()).", default="none")
    double_quant: bool = _help("4-bit only: quantize the quantization constants too (QLoRA §3, "
                               "'double quantization'; ~0.37 bits/param saved).", default=False)
    compute_dtype: str = _help("dtype of the 4-bit matmuls: float32 | bfloat16 | float16.", default="float32")
    gradient_checkpointing: bool = _help(
        "With a quantized base: gradient checkpointing with input grads enabled "
        "(peft.prepare_model_for_kbit_training).", default=True)


@dataclass
class EvaluationConfig:
    """Evaluation beyond the task's eval loss/metric (causal-LM tasks)."""

    base_model: bool = _help("Causal LM: also evaluate the base model (adapters disabled) before "
                             "training, reported as base_eval beside eval.", default=True)
    generation_samples: int = _help("Tasks scored by generation (gsm8k): number of eval questions "
                                    "(the first N of the split).", default=50)
    max_new_tokens: int = _help("Tasks scored by generation: greedy decoding budget, in tokens.", default=256)
    generation_batch_size: int = _help("Prompts generated together (left-padded).", default=8)


@dataclass
class SweepConfig:
    """How one base config expands into several runs."""

    mode: str = _help("single | sweep (learning rates x seeds) | ablation (see ablation_type).",
                      default="single")
    ablation_type: str | None = _help("rank | alpha | modules | quantization | grid; required when mode is "
                                      "ablation.",
                                      default=None)
    name: str | None = _help("Sweep directory name under output_dir; default '<task>-<mode>[-<type>]'.",
                             default=None)
    ranks: list[int] = _help("Rank ablation: values of r, each with lora_alpha = 2r.",
                             default_factory=lambda: [4, 8, 16])
    alphas: list[float] = _help("Alpha ablation: values of lora_alpha at r = alpha_ablation_r.",
                                default_factory=lambda: [8, 16, 32])
    alpha_ablation_r: int = _help("Rank used by the alpha ablation.", default=8)
    presets: list[str] = _help("Module ablation: target-module presets (or explicit lists) to compare.",
                               default_factory=lambda: ["minimal", "standard", "attention", "mlp", "all-linear"])
    learning_rates: list[float] = _help("Sweep mode: learning rates.", default_factory=lambda: [1e-4, 3e-4])
    seeds: list[int] = _help("Sweep mode: seeds.", default_factory=lambda: [42, 1337, 2024])
    quantizations: list[str] = _help(
        "Quantization ablation: none | nf4 | nf4-dq (nf4 + double quantization) | fp4 | fp4-dq | int8.",
        default_factory=lambda: ["none", "nf4", "nf4-dq"])
    grid: dict[str, list] = _help(
        "Grid ablation: dotted config keys mapped to lists of values; runs are their cartesian product, "
        "e.g. {'lora.r': [4, 8], 'training.learning_rate': [1e-4, 3e-4]}.", default_factory=dict)
    backend: str = _help(
        "Who schedules the runs: local (this process, in order) | optuna (a shared Optuna study: start the same "
        "command on several processes or machines; needs sweep.storage and the optuna extra).", default="local")
    storage: str | None = _help(
        "Optuna storage shared by the workers: a journal file path (on a disk every worker sees) or a database "
        "URL (postgresql://user:pass@host/db).", default=None)
    sampler: str = _help("Optuna sampler: grid (exactly the runs the local backend would run, each once) | tpe "
                         "(TPE search over tpe_learning_rate and tpe_ranks, n_trials trials).", default="grid")
    n_trials: int = _help("TPE: trials in the study (all workers together).", default=20)
    tpe_learning_rate: list[float] = _help("TPE: [low, high] of the log-uniform learning-rate range.",
                                           default_factory=lambda: [1e-5, 1e-2])
    tpe_ranks: list[int] = _help("TPE: candidate values of r (lora_alpha = 2r, as in the rank ablation).",
                                 default_factory=lambda: [4, 8, 16, 32])
    stale_trial_s: float = _help(
        "Optuna: a RUNNING trial older than this (seconds) whose run is not being trained (its run lock is free) "
        "and never finished is taken over and resumed from its checkpoint (its worker was killed).",
        default=600.0)
    metric: str | None = _help("Metric the Optuna study and an exported W&B sweep optimise, an eval key "
                               "(accuracy, f1, loss, perplexity, exact_match); None: accuracy for "
                               "classification, loss for causal LMs.", default=None)
    direction: str | None = _help("maximize | minimize; None: minimize for loss/perplexity, else maximize.",
                                  default=None)


@dataclass
class ExperimentConfig:
    """Everything that defines one run (and, through ``sweep``, how to expand it)."""

    task: str = _help("Task name: sst2 | mrpc | rte (classification); shakespeare | lima | gsm8k "
                      "(causal LM; sst2 with a causal LM is scored with a verbalizer).", default="sst2")
    model: str = _help("Model alias ('minilm', 'smollm2-135m'), Hub id or local directory. A model whose "
                       "architecture is *ForCausalLM is trained as a causal LM, others with a "
                       "classification head.", default="minilm")
    model_dtype: str = _help("dtype the base model's weights are loaded in: float32 | bfloat16 | float16.",
                             default="float32")
    data_dir: str | None = _help(
        f"Directory with local task files (layout of shared/data); None reads ${DATA_DIR_ENV}, "
        "and if that is unset too, the Hugging Face Hub.", default=None)
    output_dir: str = _help("Root directory of results: <output_dir>/<sweep>/<run>/.", default="results")
    seed: int = _help("Seed for data order, LoRA init and dropout (set before get_peft_model).", default=42)
    max_train_samples: int | None = _help(
        "Train on a seeded random subset of this many examples; None = the whole split.", default=10000)
    data_seed: int = _help("Seed of the training-subset selection; fixed across run seeds so that every "
                           "run of a sweep sees the same examples.", default=0)
    max_eval_samples: int | None = _help("Evaluate on the first N dev examples; None = the whole split.",
                                         default=None)
    max_seq_length: int = _help("Tokenizer truncation length, in tokens (block length of packed language "
                                "modelling).", default=128)
    export_merged: bool = _help("Save the merged model (save_pretrained) to <run>/merged when the merge check "
                                "passes.", default=False)
    trust_remote_code: bool = _help("Allow models with custom code from the Hub (off unless asked).",
                                    default=False)
    lora: dict[str, Any] = _help(
        "Passed to peft.LoraConfig. target_modules is a preset (minimal | standard | attention | mlp | "
        "all-linear) or an explicit list of module names.", default_factory=lambda: dict(DEFAULT_LORA))
    training: dict[str, Any] = _help(
        "Passed to transformers.TrainingArguments (except output_dir, seed, report_to, run_name, which "
        "loraexp sets).", default_factory=lambda: dict(DEFAULT_TRAINING))
    quantization: QuantizationConfig = _help("Quantized base (QLoRA).", default_factory=QuantizationConfig)
    evaluation: EvaluationConfig = _help("Base-model and generation evaluation.", default_factory=EvaluationConfig)
    tracking: TrackingConfig = _help("W&B and statistics cadence.", default_factory=TrackingConfig)
    verification: VerificationConfig = _help("Run-time verification.", default_factory=VerificationConfig)
    sweep: SweepConfig = _help("Expansion into several runs.", default_factory=SweepConfig)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable) of the whole config."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The part of the config that defines the run's result: everything except where files
        go and how they are logged (``output_dir``, ``data_dir``, ``tracking``, ``sweep``)."""
        d = self.to_dict()
        for key in ("output_dir", "data_dir", "tracking", "sweep"):
            d.pop(key)
        return d

    @property
    def run_id(self) -> str:
        """Short (10 hex chars) SHA-1 of :meth:`identity`; equal configs give equal ids."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def resolved_data_dir(self) -> str | None:
        """``data_dir``, else ``$LORAEXP_DATA_DIR``, else None (meaning: the Hub)."""
        return self.data_dir or os.environ.get(DATA_DIR_ENV) or None


# ---------------------------------------------------------------------------------------
# Building and validating
# ---------------------------------------------------------------------------------------


def _coerce_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; turn such strings into floats."""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()) and any(c in value for c in ".eE"):
        return float(value)
    return value


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from YAML) fits the field annotation ``hint`` (int is a float; bool is not an int)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, appending every problem to ``problems``."""
    if not isinstance(data, dict):
        problems.append(f"`{prefix.rstrip('.') or 'config'}` must be a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            problems.append(f"unknown key `{prefix}{key}`; allowed keys: {', '.join(names)}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", problems)
            continue
        if isinstance(value, dict) and typing.get_origin(hint) is dict:
            value = {k: _coerce_number(v) for k, v in value.items()}
        elif isinstance(value, list):
            value = [_coerce_number(v) for v in value]
        else:
            value = _coerce_number(value)
        if not _type_ok(value, hint):
            problems.append(f"`{prefix}{key}` must be of type {_type_name(hint)}, got {value!r}")
            continue
        kwargs[key] = value
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        # a later sweep.grid replaces an earlier one: merging two grids would silently add axes
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "grid":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``key = 'a.b'``, creating mappings on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` strings; values are YAML scalars/lists (``lora.r=32``,
    ``lora.target_modules=[query,value]``).

    Raises:
        ConfigError: an item has no ``=`` or an empty key.
    """
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"`--set` expects key=value, got {item!r}")
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    if problems:
        raise ConfigError(problems)
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``.

    Raises:
        ConfigError: the file is missing, is not valid YAML (the message gives line and
            column) or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"`--config` file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"`--config` file {str(path)!r} is not valid YAML{where}: "
                          f"{getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"`--config` file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def build_config(*layers: dict[str, Any], overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Merge ``layers`` (dicts, later wins) over the defaults, apply dotted ``overrides``,
    build and validate an :class:`ExperimentConfig`.

    Raises:
        ConfigError: listing every unknown key, wrong type and bad value at once.
    """
    data = ExperimentConfig().to_dict()
    for layer in layers:
        data = _deep_merge(data, layer)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    from loraexp.validation import validate  # imports this module's types

    problems: list[str] = []
    cfg = _build(ExperimentConfig, data, "", problems)  # unknown keys / wrong types are left out...
    problems.extend(validate(cfg))                      # ...and every value that was kept is checked
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                cli: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load ``path`` (optional YAML), apply CLI flag values ``cli`` (dotted keys, None = not
    given) and then ``overrides`` (from ``--set``).

    Raises:
        ConfigError: see :func:`read_yaml` and :func:`build_config`.
    """
    layers = [read_yaml(path)] if path else []
    merged = {k: v for k, v in (cli or {}).items() if v is not None}
    merged.update(overrides or {})
    return build_config(*layers, overrides=merged)


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A new validated config: ``cfg`` with dotted ``overrides`` applied (used by sweeps)."""
    return build_config(cfg.to_dict(), overrides=overrides)
