"""The experiment configuration schema: typed dataclasses, one field per setting, each with
its help text (``metadata["help"]``), as PEFT's ``LoraConfig`` does.

This module is the single source of the settings: :mod:`loraexp.config.load` loads and merges
them (OmegaConf structured configs), :mod:`loraexp.config.checks` checks their values, and the
CLI builds its flags and ``--help`` from the metadata here (``choices``: the allowed values;
``flag``: the command-line flag a field is promoted to; every field is reachable through
``--set``). It imports nothing heavy, so ``loraexp --help`` stays fast.

The ``lora`` and ``training`` mappings pass through to :class:`peft.LoraConfig` and
:class:`transformers.TrainingArguments`, so those libraries validate their own fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from loraexp.config.methods import METHODS, options_used

DATA_DIR_ENV = "LORAEXP_DATA_DIR"

# Fields of TrainingArguments that loraexp sets itself from the run's identity and layout.
RESERVED_TRAINING_KEYS = ("output_dir", "seed", "report_to", "run_name")
# Fields of TrainingArguments that only say when checkpoints are saved and kept: not part of a
# run's identity (adding --save-steps to a sweep with finished runs must not make them other runs).
CHECKPOINT_TRAINING_KEYS = ("save_strategy", "save_steps", "save_total_limit", "enable_jit_checkpoint",
                            "save_only_model", "save_on_each_node")
# Settings of the post-training checks that decide only what a check costs (how many batches it
# compares on, whether latency is timed), not what the run trains: each counts in a run's identity
# with the value run ids were first made with, whatever it is set to.
COST_VERIFICATION_KEYS: dict[str, Any] = {"merge_eval_batches": 2, "latency_repeats": 1}
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
DTYPES = ("float32", "bfloat16", "float16")

# The research protocol's seeds (sweep mode's default; ``--seeds`` replicates any sweep).
PROTOCOL_SEEDS = (42, 1337, 2024)

# The tasks (loraexp.tasks registers one or two forms of each; it refuses to import when its
# registry and this list differ) and the target-module presets (loraexp.model.target_modules maps
# each to module names per architecture): declared here, below both, so that the value checks
# (loraexp.config.checks) name them without importing a layer above the config.
TASK_NAMES = ("gsm8k", "lima", "mrpc", "rte", "shakespeare", "squad_v2", "sst2")
PRESET_NAMES = ("minimal", "standard", "attention", "mlp", "all-linear")

# What ``--fast`` turns on (docs/configuration.md): bf16 mixed precision, i.e. the model's
# forward under torch.autocast(bfloat16) with float32 weights and optimizer state.
FAST_HELP = ("Throughput preset: bf16 mixed precision (training.bf16: true; autocast, weights and optimizer state "
             "stay float32) on the CPU and on a GPU with bf16, fp16 (training.fp16: true) on an older GPU. "
             "Sets those keys as a flag does (--set wins); measured by benchmarks/throughput.py.")

# Run types: full fine-tuning (no PEFT) and the LoRA variants of loraexp.config.methods.
DEFAULT_METHOD_ABLATION = ("full", "lora", "rslora", "dora", "pissa", "olora", "lora-plus")


def lora_alpha_for_rank(r: int) -> int:
    """The research protocol's ``lora_alpha = 2r`` (so the LoRA scaling α/r stays 2, LoRA
    paper §4.1). Used by the default config, the rank ablation and the TPE search."""
    return 2 * r


DEFAULT_R = 8
# Research-protocol defaults: r = 8, lora_alpha = 2r, dropout 0.05, query/value.
DEFAULT_LORA: dict[str, Any] = {
    "r": DEFAULT_R,
    "lora_alpha": lora_alpha_for_rank(DEFAULT_R),
    "lora_dropout": 0.05,
    "target_modules": "standard",
}

# Tuned for all-MiniLM-L6-v2 on a 2-core CPU (benchmarks/README.md): one epoch over the
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


def _help(text: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field with its help text, its allowed values (``choices``) and, for the
    fields promoted to a command-line flag, the flag's name."""
    metadata: dict[str, Any] = {"help": text}
    if choices is not None:
        metadata["choices"] = choices
    if flag is not None:
        metadata["flag"] = flag
    return field(metadata=metadata, **kwargs)


@dataclass
class TrackingConfig:
    """Where metrics go besides the local results directory (always written)."""

    wandb: str = _help("W&B mode. offline and disabled need no network or login; online yields to "
                       "WANDB_MODE=offline|disabled in the environment.",
                       choices=("online", "offline", "disabled"), flag="--wandb", default="disabled")
    project: str = _help("W&B project name.", default="loraexp")
    entity: str | None = _help("W&B entity (team or user); None uses the login's default.", default=None)
    stats_every_steps: int = _help(
        "Cadence, in optimizer steps, of adapter statistics and factor-space SVD rank analysis "
        "(also computed once at the end of training).", default=50)
    cka_probe_examples: int = _help(
        "Representation drift: the first N eval examples (rank 0's share under DDP) on which linear CKA "
        "between the base model's and "
        "the trained model's hidden states is measured per layer at the end of training (Kornblith et al. "
        "2019); 0 turns it off. A measurement only: not part of a run's identity.", default=256)


@dataclass
class VerificationConfig:
    """Run-time verification settings (docs/design.md, "Run-time verification")."""

    grad_flow_steps: int = _help(
        "Number of first optimizer steps whose LoRA gradients are checked (>= 2: lora_A grads are "
        "only non-zero once lora_B has moved away from its zero init).", default=2)
    merge_atol: float = _help(
        "Max |difference| (in merge_space) allowed between adapter and merged model; 1e-4 is PEFT's "
        "fp32 merge tolerance.", default=1e-4)
    merge_space: str = _help(
        "Where merged and adapter outputs are compared: logits | probs | auto (logits for a classifier; "
        "next-token probabilities for a causal LM, whose logits over a large vocabulary after many layers "
        "differ by ~1e-4 from fp32 rounding alone).", choices=("auto", "logits", "probs"), default="auto")
    quantized_merge_atol: float = _help(
        "Quantized base: max |probability difference| between the merged full-precision model and the "
        "full-precision adapter model; 1e-2 is PEFT's tolerance for quantized merges.", default=1e-2)
    merge_eval_batches: int = _help(
        "Number of eval batches the reload and merge-equivalence checks compare on (each cut to the task's "
        "rows per check batch: 16 for classification, 16 windows for squad_v2, 8 blocks for a causal LM). Decides "
        "what the check costs, not the run's result: not part of a run's identity.", default=2)
    latency_repeats: int = _help(
        "Timed forward passes over those batches for merged-vs-adapter latency (adapter_latency_s, "
        "merged_latency_s); 0: not measured (null in metrics.json). Not part of a run's identity.", default=0)
    min_loss_decrease: float | None = _help(
        "Convergence check, percent: the mean training loss of the last logging window must be at least this much "
        "below that of the first (windows of training.logging_steps steps); null: off, loss_decrease_pct is "
        "still recorded. The research plan asks for 30 over 100 steps.", default=None)


@dataclass
class QuantizationConfig:
    """bitsandbytes quantization of the frozen base (QLoRA, Dettmers et al. 2023)."""

    method: str = _help("Quantize the frozen base: none | nf4 | fp4 (4-bit, QLoRA) | int8 (LLM.int8()).",
                        choices=("none", "nf4", "fp4", "int8"), flag="--quantization", default="none")
    double_quant: bool = _help("4-bit only: quantize the quantization constants too (QLoRA §3, "
                               "'double quantization'; ~0.37 bits/param saved).", flag="--double-quant",
                               default=False)
    compute_dtype: str = _help("dtype of the 4-bit matmuls; auto: on a GPU that computes in bf16, bfloat16 under bf16 "
                               "autocast and float16 under fp16, else float32 (loraexp.config.precision).",
                               choices=("auto", *DTYPES), default="auto")
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
class QAConfig:
    """Extractive question answering (squad_v2): windows, post-processing and the local split
    (defaults of transformers' run_qa.py where it has one; docs/tasks.md)."""

    doc_stride: int | None = _help(
        "Tokens shared by consecutive windows of a context longer than max_seq_length; null: a third of "
        "max_seq_length (run_qa.py's 128 of 384).", default=None)
    max_answer_length: int = _help("Longest answer span, in tokens.", default=30)
    n_best: int = _help("Start and end candidates per window in post-processing.", default=20)
    null_score_diff_threshold: float = _help(
        "Predict no answer when null score - best span score (logits) exceeds this.", default=0.0)
    local_train_articles: int = _help(
        "Local data (squad_v2/cs224n-dev-v2.0.json, 16 articles): the first N articles train, the rest "
        "evaluate, so no context is shared.", default=12)


@dataclass
class MethodOptions:
    """Settings of the run types other than plain LoRA (docs/methods.md)."""

    full_learning_rate: float | None = _help(
        "Learning rate of method full (full fine-tuning replaces training.learning_rate, which is tuned for "
        "LoRA); None: the model family's default, 5e-5 for an encoder with a classification head (BERT paper, "
        "appendix A.3) and 2e-5 for a causal LM.", default=None)
    loraplus_lr_ratio: float = _help(
        "LoRA+: learning rate of lora_B over that of lora_A (peft.optimizers.create_loraplus_optimizer; "
        "2^4 = 16 is the LoRA+ paper's recommendation, Hayou et al. 2024, section 4).", default=16.0)
    loftq_bits: int = _help("LoftQ: bits of the quantized base the adapter compensates (4 or 8).", default=4)
    loftq_iter: int = _help("LoftQ: alternating quantization / SVD iterations.", default=1)
    eva_rho: float = _help("EVA: rank redistribution budget (peft.EvaConfig.rho; 1 = no redistribution).",
                           default=2.0)
    eva_batches: int = _help("EVA: training batches whose activations initialise lora_A.", default=8)


@dataclass
class SweepConfig:
    """How one base config expands into several runs."""

    mode: str = _help("single run | sweep (learning rates x seeds) | ablation (see ablation_type).",
                      choices=("single", "sweep", "ablation"), flag="--mode", default="single")
    ablation_type: str | None = _help("Which ablation, required when mode is ablation.",
                                      choices=("rank", "alpha", "modules", "quantization", "method", "grid"),
                                      flag="--ablation-type", default=None)
    name: str | None = _help("Sweep directory name under output_dir; default '<task>-<mode>[-<type>]'.",
                             default=None)
    ranks: list[int] = _help("Rank ablation: values of r, each with lora_alpha = 2r (lora_alpha_for_rank).",
                             default_factory=lambda: [4, 8, 16])
    alphas: list[Any] = _help("Alpha ablation: values of lora_alpha (numbers > 0) at r = alpha_ablation_r.",
                                default_factory=lambda: [8, 16, 32])
    alpha_ablation_r: int = _help("Rank used by the alpha ablation.", default=8)
    presets: list[str] = _help("Module ablation: target-module presets (or explicit lists) to compare.",
                               default_factory=lambda: ["minimal", "standard", "attention", "mlp", "all-linear"])
    learning_rates: list[float] = _help("Sweep mode: learning rates.", default_factory=lambda: [1e-4, 3e-4])
    seeds: list[int] | None = _help(
        "Seeds every point of the sweep, ablation or grid is run with (a replicate per seed); None: the "
        "config's `seed` alone, except in sweep mode, which then uses the research protocol's 42, 1337, 2024.",
        flag="--seeds", default=None)
    methods: list[str] = _help("Method ablation: run types to compare (" + " | ".join(METHODS) + ").",
                               default_factory=lambda: list(DEFAULT_METHOD_ABLATION))
    baseline: str | None = _help(
        "Add a baseline row to any sweep (one run per seed): full = full fine-tuning with the same task, data, "
        "batch size and budget. Every configuration is compared with it (sweep.max_drop).",
        choices=("full",), flag="--baseline", default=None)
    max_drop: float = _help(
        "Protocol verdict: the largest acceptable drop of the main metric from the baseline; 0.03 = 3%.",
        default=0.03)
    drop_unit: str = _help("relative: max_drop is a fraction of the baseline's mean (the protocol's '3% drop'); "
                           "absolute: in the metric's own units (0.03 = 3 accuracy points).",
                           choices=("relative", "absolute"), default="relative")
    confidence: float = _help("Confidence level of the seed (Student t) and bootstrap intervals.", default=0.95)
    bootstrap_resamples: int = _help("Resamples of the paired bootstrap of differences to the baseline.",
                                     default=10000)
    bootstrap_seed: int = _help("Seed of the bootstrap resampling (the intervals are reproducible).", default=0)
    quantizations: list[str] = _help(
        "Quantization ablation: none | nf4 | nf4-dq (nf4 + double quantization) | fp4 | fp4-dq | int8.",
        default_factory=lambda: ["none", "nf4", "nf4-dq"])
    grid: dict[str, Any] = _help(
        "Grid ablation: dotted config keys mapped to lists of values; runs are their cartesian product, "
        "e.g. {'lora.r': [4, 8], 'training.learning_rate': [1e-4, 3e-4]}.", default_factory=dict)
    backend: str = _help(
        "Who schedules the runs: local (this process, in order) | optuna (a shared Optuna study: start the same "
        "command on several processes or machines; needs sweep.storage and the optuna extra).",
        choices=("local", "optuna"), flag="--backend", default="local")
    storage: str | None = _help(
        "Optuna storage shared by the workers: a journal file path (on a disk every worker sees) or a database "
        "URL (postgresql://user:pass@host/db).", flag="--storage", default=None)
    sampler: str = _help("Optuna sampler: grid (exactly the runs the local backend would run, each once) | tpe "
                         "(TPE search over tpe_learning_rate and tpe_ranks, n_trials trials).", choices=("grid", "tpe"),
                         flag="--sampler", default="grid")
    n_trials: int = _help("TPE: trials in the study (all workers together).", flag="--n-trials", default=20)
    tpe_learning_rate: list[float] = _help("TPE: [low, high] of the log-uniform learning-rate range.",
                                           default_factory=lambda: [1e-5, 1e-2])
    tpe_ranks: list[int] = _help("TPE: candidate values of r (lora_alpha = 2r, as in the rank ablation).",
                                 default_factory=lambda: [4, 8, 16, 32])
    checkpoint_minutes: float | None = _help(
        "Save a Trainer checkpoint every this many minutes of training (as well as every save_steps steps), so a "
        "run killed without notice (SIGKILL, a lost VM) loses at most that much; None: off. A SIGTERM or SIGINT "
        "always saves one (docs/reliability.md). Not part of a run's identity.",
        flag="--checkpoint-minutes", default=10.0)
    stale_trial_s: float = _help(
        "Optuna: a RUNNING trial older than this (seconds) whose run is not being trained (its run lock is free) "
        "and never finished is taken over and resumed from its checkpoint (its worker was killed).",
        default=600.0)
    pruner: str = _help(
        "Stop configurations that are behind early: none | successive-halving | hyperband (Optuna's "
        "SuccessiveHalvingPruner / HyperbandPruner, asynchronous successive halving; docs/pruning.md). Runs are "
        "evaluated at rungs min_resource * reduction_factor**k optimizer steps, a configuration's value at a rung is "
        "its eval metric averaged over its seeds, and a pruned configuration's runs are recorded `pruned`.",
        choices=("none", "successive-halving", "hyperband"), flag="--prune", default="none")
    reduction_factor: int = _help(
        "Pruning: eta, the factor between rungs; at each rung about 1/eta of the configurations go on.",
        flag="--reduction-factor", default=3)
    min_resource: int | None = _help(
        "Pruning: the first rung, in optimizer steps; None: max_steps // reduction_factor**2 (three rungs).",
        flag="--min-resource", default=None)
    metric: str | None = _help("Metric the Optuna study and an exported W&B sweep optimise, an eval key "
                               "(accuracy, f1, loss, perplexity, exact_match, exact); None: accuracy for "
                               "classification, f1 for squad_v2, loss for causal LMs.", default=None)
    direction: str | None = _help("None: minimize for loss/perplexity, else maximize.",
                                  choices=("maximize", "minimize"),
                                  default=None)


@dataclass
class ExperimentConfig:
    """Everything that defines one run (and, through ``sweep``, how to expand it)."""

    task: str = _help("Task name: sst2 | mrpc | rte (classification); squad_v2 (extractive QA, encoders only); "
                      "shakespeare | lima | gsm8k (causal LM; sst2 with a causal LM is scored with a verbalizer).",
                      flag="--task", default="sst2")
    model: str = _help("Model alias ('minilm', 'smollm2-135m'), Hub id or local directory. A model whose "
                       "architecture is *ForCausalLM is trained as a causal LM, others with a "
                       "classification head.", flag="--model", default="minilm")
    method: str = _help(
        "Run type: lora | full (full fine-tuning, no PEFT) | rslora | dora | pissa | olora | lora-plus | loftq | "
        "eva (LoRA variants through PEFT; docs/methods.md).", choices=METHODS, flag="--method", default="lora")
    method_options: MethodOptions = _help("Settings of full fine-tuning and the LoRA variants.",
                                          default_factory=MethodOptions)
    model_dtype: str = _help(
        "dtype the base model's weights are loaded in; auto: float32, and on a GPU that computes in bf16 "
        "natively bf16 autocast too (training.bf16: true unless training names bf16 or fp16); bfloat16 weights are "
        "an explicit choice (loraexp.config.precision, docs/gpu.md; the resolved value is in config.yaml and the "
        "run id).", choices=("auto", *DTYPES), default="auto")
    data_dir: str | None = _help(
        f"Directory with local task files (layout of shared/data); None reads ${DATA_DIR_ENV}, "
        "and if that is unset too, the Hugging Face Hub.", flag="--data-dir", default=None)
    output_dir: str = _help("Root directory of results: <output_dir>/<sweep>/<run>/.", flag="--output-dir",
                            default="results")
    seed: int = _help("Seed for data order, LoRA init and dropout (set before get_peft_model).", flag="--seed",
                      default=42)
    max_train_samples: int | None = _help(
        "Train on a seeded random subset of this many examples; None = the whole split.", flag="--max-train-samples",
        default=10000)
    data_seed: int = _help("Seed of the training-subset selection; fixed across run seeds so that every "
                           "run of a sweep sees the same examples.", default=0)
    max_eval_samples: int | None = _help("Evaluate on the first N dev examples; None = the whole split.",
                                         flag="--max-eval-samples", default=None)
    max_seq_length: int = _help("Tokenizer truncation length, in tokens (block length of packed language "
                                "modelling).", default=128)
    pad_to_multiple_of: int | None = _help(
        "Pad each batch to its longest row rounded up to a multiple of this many tokens (it must divide "
        "max_seq_length); null: to the longest row. Fewer distinct batch shapes let training.torch_compile reuse "
        "its compiled graphs instead of recompiling. The attention mask hides the padding (same outputs), but "
        "dropout draws its random masks over the padded shape, so training takes another path.", default=None)
    warm_start: str | None = _help(
        "Start the adapter (lora_A, lora_B and a trained head) from the adapter_model.safetensors of this "
        "checkpoint or adapter directory instead of PEFT's initialisation; the optimizer and the schedule start "
        "fresh. The recovery after a NaN stop: the last good checkpoint with a lower learning rate "
        "(docs/reliability.md). LoRA runs only. Part of the run's identity as the path given (not the file's "
        "content).", flag="--warm-start", default=None)
    export_merged: bool = _help("Save the merged model (save_pretrained) to <run>/merged when the merge check "
                                "passes.", flag="--export-merged", default=False)
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
    qa: QAConfig = _help("Extractive question answering (task squad_v2).", default_factory=QAConfig)
    tracking: TrackingConfig = _help("W&B and statistics cadence.", default_factory=TrackingConfig)
    verification: VerificationConfig = _help("Run-time verification.", default_factory=VerificationConfig)
    sweep: SweepConfig = _help("Expansion into several runs.", default_factory=SweepConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable) of the whole config."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The part of the config that defines the run's result: everything except where files
        go and how they are logged (``output_dir``, ``data_dir``, ``tracking``, ``sweep``); the
        ``qa`` section only for ``squad_v2``; ``verification.min_loss_decrease``,
        ``warm_start`` and ``pad_to_multiple_of`` only when set (padding changes dropout's
        masks). When checkpoints are saved does not change the result: the
        :data:`CHECKPOINT_TRAINING_KEYS` count with their default values whatever they are
        (the data files' fingerprint is compared separately, :mod:`loraexp.run.run_state`); nor
        does what the post-training checks cost: the :data:`COST_VERIFICATION_KEYS` count with
        the values run ids were first made with (``latency_repeats`` 1, the default before
        latency timing became opt-in).

        Only what the method uses counts: full fine-tuning drops ``lora`` (so the baseline of a
        rank ablation is the same run as that of a method ablation); ``method`` and
        ``method_options`` appear only for methods other than plain LoRA, so the run ids of
        LoRA runs are those of loraexp before methods existed."""
        from loraexp.config.precision import resolve_device_defaults  # imports torch only for an 'auto' dtype

        d = resolve_device_defaults(self).to_dict()
        for key in ("output_dir", "data_dir", "tracking", "sweep"):
            d.pop(key)
        if self.task != "squad_v2":
            d.pop("qa")
        if self.verification.min_loss_decrease is None:  # off: the run ids of loraexp before the check
            d["verification"].pop("min_loss_decrease")
        d["verification"].update(COST_VERIFICATION_KEYS)
        if self.warm_start is None:
            d.pop("warm_start")
        if self.pad_to_multiple_of is None:  # off: the run ids of loraexp before the field
            d.pop("pad_to_multiple_of")
        for key in CHECKPOINT_TRAINING_KEYS:
            if key in d["training"]:
                if key in DEFAULT_TRAINING:
                    d["training"][key] = DEFAULT_TRAINING[key]
                else:
                    d["training"].pop(key)
        options = d.pop("method_options")
        if self.method == "lora":
            d.pop("method")
        else:
            d["method_options"] = {k: options[k] for k in options_used(self.method)}
        if self.method == "full":
            d.pop("lora")
            d.pop("quantization")
        return d

    @property
    def run_id(self) -> str:
        """Short (10 hex chars) SHA-1 of :meth:`identity`; equal configs give equal ids."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def resolved_data_dir(self) -> str | None:
        """``data_dir``, else ``$LORAEXP_DATA_DIR``, else None (meaning: the Hub)."""
        return self.data_dir or os.environ.get(DATA_DIR_ENV) or None


