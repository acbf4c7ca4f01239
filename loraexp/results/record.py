"""The typed record of one run: what ``metrics.json`` holds (docs/results.md).

Each section is a dataclass; the recipe fills them stage by stage, the store writes
:meth:`RunRecord.to_dict` atomically, and the sweep summary and W&B summary keys are derived
from the fields (:mod:`loraexp.results.summary`, :meth:`RunRecord.wandb_summary`). A check that could
not be observed has ``passed = None`` and never counts as passed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# 1: untyped (flat verification keys); 2: typed, LoRA checks only; 3: run types, reload check;
# 4: representation_drift; 5: convergence; 6: completion, interruption, data fingerprint;
# 7: rungs, pruning (statuses paused, pruned)
SCHEMA_VERSION = 7

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_FAILED_VERIFICATION = "failed_verification"
STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"  # stopped by SIGTERM/SIGINT after a checkpoint; --resume continues it
STATUS_SKIPPED = "skipped"  # completed earlier; not run again
STATUS_BUSY = "busy"  # being trained by another process right now; not run here
STATUS_PAUSED = "paused"  # trained to a pruning rung and evaluated there; the next rung continues its checkpoint
STATUS_PRUNED = "pruned"  # stopped at a rung by the sweep's pruner; a sweep without a pruner continues it


@dataclass
class FrozenBaseCheck:
    """Frozen-base invariant (docs/design.md, "Frozen base"): no base parameter requires grad
    or receives a gradient, and every base tensor is bit-identical at train end.

    ``base_tensors``: count of base parameters; the lists name the offending tensors."""

    passed: bool | None = None
    base_tensors: int = 0
    base_requires_grad: list[str] = field(default_factory=list)
    base_with_grad: list[str] = field(default_factory=list)
    changed_tensors: list[str] = field(default_factory=list)
    reference: str | None = None
    reason: str | None = None


@dataclass
class GradFlowCheck:
    """LoRA gradient flow in the first optimizer steps (see
    :class:`~loraexp.run.callbacks.grad_flow.GradFlowCallback`): gradient norms are L2 norms;
    ``lora_A_verified_step`` is the optimizer step (of this attempt) by which every module's
    ``lora_A`` had a non-zero gradient; ``carried_from_checkpoint`` the step of the checkpoint
    whose passed check a resumed attempt carried forward."""

    passed: bool | None = None
    init: str | None = None
    rule: str | None = None
    lora_B_min_grad_norm_step1: float | None = None
    lora_A_min_grad_norm: float | None = None
    lora_A_verified_step: int | None = None
    lora_B_verified_step: int | None = None
    magnitude_min_grad_norm_step1: float | None = None
    frozen_factors: list[str] = field(default_factory=list)
    carried_from_checkpoint: int | None = None
    reason: str | None = None


@dataclass
class FullTrainingCheck:
    """Full fine-tuning (see :class:`~loraexp.run.callbacks.full_training.FullTrainingCallback`):
    every parameter requires grad; in the first ``steps`` optimizer steps every parameter's
    gradient exists, is finite and is non-zero (L2 norm); at train end every tensor differs
    from its start. The lists name offending tensors (at most 20)."""

    passed: bool | None = None
    tensors: int = 0
    steps: int = 0
    not_trainable: list[str] = field(default_factory=list)
    without_grad: list[str] = field(default_factory=list)
    zero_grad: list[str] = field(default_factory=list)
    nonfinite_grad: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    min_grad_norm: float | None = None
    reason: str | None = None


@dataclass
class ReloadCheck:
    """The saved adapter, loaded onto a fresh copy of the *original* base
    (:func:`~loraexp.run.merge_check.check_adapter_reload`), reproduces the trained model's
    outputs: max |Δ| in ``space`` against ``atol``; ``base_max_abs_diff``: trained model vs the
    original base alone, a trained classification head included (must exceed the effect
    tolerance: a model that learned nothing would pass trivially);
    ``precision``: dtype the figures were computed in (float64 when float32 rounding alone
    exceeded ``atol``; ``float32_max_abs_diff`` then keeps the float32 figure)."""

    passed: bool | None = None
    space: str | None = None
    max_abs_diff: float | None = None
    base_max_abs_diff: float | None = None
    atol: float | None = None
    precision: str | None = None
    float32_max_abs_diff: float | None = None
    converted: bool | None = None
    checked_on: str | None = None
    reason: str | None = None


@dataclass
class MergeCheck:
    """Merge equivalence (:mod:`loraexp.run.merge_check`): max |Δ| between the adapter model
    and ``merge_and_unload()`` in ``space`` (``logits`` | ``probs``) over the check's eval
    batches, against ``atol``; latencies are seconds per batch. For a quantized base,
    ``quantization_gap_max_abs_diff`` compares the 4-bit adapter model with its full-precision
    reload (reported, not pass/fail)."""

    passed: bool | None = None
    space: str | None = None
    max_abs_diff: float | None = None
    max_abs_logit_diff: float | None = None
    adapter_vs_base_max_abs_diff: float | None = None
    atol: float | None = None
    adapter_latency_s: float | None = None
    merged_latency_s: float | None = None
    quantization_gap_max_abs_diff: float | None = None
    precision: str | None = None
    float32_max_abs_diff: float | None = None
    float32_rounding_max_abs_diff: float | None = None
    merged_into: str | None = None
    checked_on: str | None = None
    reason: str | None = None


@dataclass
class ConvergenceCheck:
    """Training-loss decrease (:func:`~loraexp.analysis.convergence.loss_decrease`): the mean
    training loss of the first logging window (``window_steps`` = ``training.logging_steps``
    optimizer steps, ending at ``first_step``) against that of the last (ending at
    ``last_step``); ``loss_decrease_pct`` = 100 · (first − last) / first. The figures are
    recorded for every run; pass/fail only with ``verification.min_loss_decrease`` (percent;
    the research plan asks for 30 over 100 steps)."""

    passed: bool | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    first_step: int | None = None
    last_step: int | None = None
    window_steps: int | None = None
    loss_decrease_pct: float | None = None
    min_loss_decrease: float | None = None
    checked_on: str | None = None
    reason: str | None = None


CHECK_NAMES = ("frozen_base", "grad_flow", "full_training", "merge", "reload", "convergence")


@dataclass
class Verification:
    """The run-time checks of one run (docs/verification.md). ``not_applicable`` maps the name
    of each check that does not apply to the run type to why (full fine-tuning has no frozen
    base, LoRA gradient flow, merge or adapter; a LoRA run has no full-training check).
    :attr:`passed` only when every applicable check passed: a check that applies but was not
    observed (``passed`` None) never counts as passed."""

    frozen_base: FrozenBaseCheck = field(default_factory=FrozenBaseCheck)
    grad_flow: GradFlowCheck = field(default_factory=GradFlowCheck)
    full_training: FullTrainingCheck = field(default_factory=FullTrainingCheck)
    merge: MergeCheck = field(default_factory=MergeCheck)
    reload: ReloadCheck = field(default_factory=ReloadCheck)
    convergence: ConvergenceCheck = field(default_factory=ConvergenceCheck)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def applicable(self) -> list[Any]:
        """The checks that apply to this run, in :data:`CHECK_NAMES` order."""
        return [getattr(self, n) for n in CHECK_NAMES if n not in self.not_applicable]

    @property
    def passed(self) -> bool:
        checks = self.applicable()
        return bool(checks) and all(check.passed is True for check in checks)

    @property
    def observed(self) -> bool:
        """Whether any check ran (False for a run that failed before training)."""
        return any(check.passed is not None for check in self.applicable())

    def failure_reasons(self) -> list[str]:
        """The recorded reason of every applicable check that failed or could not be observed."""
        return [c.reason for c in self.applicable() if c.reason and c.passed is not True]


@dataclass
class Completion:
    """The proof that a run finished (docs/reliability.md, "Completion is proven"): it trained
    ``trained_steps`` of its ``planned_steps`` optimizer steps (the Trainer's ``global_step`` and
    ``max_steps``), its evaluation ran (``evaluated``), and its adapter on disk is the one that
    was evaluated: ``adapter_sha256`` of ``adapter/adapter_model.safetensors`` (what a rerun checks
    before it skips the run) and ``adapter_verified_by``, the check that loaded that file and
    reproduced the evaluated model's outputs. ``problems`` lists what is missing; a run is
    ``completed`` only when it is empty."""

    planned_steps: int | None = None
    trained_steps: int | None = None
    evaluated: bool = False
    adapter_sha256: str | None = None
    adapter_verified_by: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Interruption:
    """A run stopped by a signal (SIGTERM from a preemption notice, SIGINT from Ctrl-C):
    ``signal`` its name, ``step`` the optimizer step the run reached (the step of
    ``checkpoint``, saved after the step in progress finished; None when the signal came before
    training), ``checkpoint`` the checkpoint ``--resume`` continues from, ``during`` the stage
    the signal arrived in."""

    signal: str
    signal_number: int
    step: int | None = None
    checkpoint: str | None = None
    during: str | None = None


@dataclass
class Pruning:
    """Why a run was stopped at a rung (:mod:`loraexp.sweep.pruning`): ``pruner`` (successive-halving
    | hyperband), the rung's index and ``step`` (optimizer steps), ``metric`` and this run's
    ``value`` there, ``configuration_value``: what the pruner compared (the mean over the
    configuration's seeds), ``trial``: the Optuna trial number, ``decided_at``: ISO 8601 time."""

    pruner: str
    rung: int
    step: int
    metric: str
    value: float | None
    configuration_value: float | None
    trial: int | None = None
    decided_at: str | None = None


@dataclass
class Resolved:
    """What the config resolved to when the run started: model path, objective (a
    ``peft.TaskType`` value), PEFT's target modules, data source, fingerprint
    (:mod:`loraexp.tasks.fingerprint`) and sizes (examples), the W&B mode actually used
    (``tracking``: e.g. ``offline (fallback: CommError: ...)`` when online failed), and the
    precision it trained in (``precision``)."""

    model_path: str = ""
    model_type: str = ""
    objective: str = ""
    target_modules: Any = None
    modules_to_save: list[str] = field(default_factory=list)
    data_dir: str = ""
    data_fingerprint: str | None = None
    tracking: str | None = None
    train_examples: int = 0
    eval_examples: int = 0
    optim: str = ""
    device: str = ""
    method: str = "lora"
    init_lora_weights: Any = None
    learning_rate: float | None = None
    # the precision the run trained in: model_dtype (the weights), autocast (bf16 | fp16 | None),
    # compute_dtype (a quantized base's matmuls), attn_implementation (sdpa, eager, ...);
    # docs/gpu.md, "Defaults on a GPU"
    precision: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """Everything ``metrics.json`` says about one run (``schema_version`` :data:`SCHEMA_VERSION`).

    ``efficiency``: :func:`~loraexp.analysis.params.parameter_report` (parameter counts);
    ``training_efficiency``: :class:`~loraexp.run.callbacks.efficiency.EfficiencyCallback` figures
    and weight bytes; ``eval``/``base_eval``: metrics of the trained / base model without
    the ``eval_`` prefix; ``lora_rank``: means over modules of the rank metrics;
    ``adapter_statistics``: per-module statistics at train end; ``rungs``: the evaluations at
    pruning rungs (``{"step": optimizer step, "eval": metrics}``); ``pruning``: why a ``pruned``
    run stopped (:class:`Pruning`); ``representation_drift``: linear
    CKA per layer between the base and the trained model on the probe examples
    (:mod:`loraexp.analysis.cka`; empty when not measured); ``wall_seconds``: the whole run,
    seconds.
    """

    run_id: str
    run_name: str
    sweep: str | None
    config: dict[str, Any]
    versions: dict[str, str]
    world_size: int = 1
    status: str = STATUS_RUNNING
    schema_version: int = SCHEMA_VERSION
    resolved: Resolved | None = None
    predictions_file: str | None = None
    efficiency: dict[str, Any] = field(default_factory=dict)
    training_efficiency: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    base_eval: dict[str, Any] | None = None
    verification: Verification = field(default_factory=Verification)
    lora_rank: dict[str, float] = field(default_factory=dict)
    adapter_statistics: dict[str, dict[str, Any]] = field(default_factory=dict)
    representation_drift: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    merged_dir: str | None = None
    error: str | None = None
    traceback: str | None = None
    failed_step: int | None = None
    last_checkpoint: str | None = None
    completion: Completion = field(default_factory=Completion)
    interruption: Interruption | None = None
    rungs: list[dict[str, Any]] = field(default_factory=list)
    pruning: Pruning | None = None
    wall_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``metrics.json`` (``verification.passed`` included)."""
        out = dataclasses.asdict(self)
        out["verification"]["passed"] = self.verification.passed
        return {"schema_version": out.pop("schema_version"), "status": out.pop("status"), **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Rebuild a record from :meth:`to_dict` output; keys this version does not know are
        dropped (a record of schema 1 keeps its status, config and eval metrics).

        Raises:
            KeyError: ``run_name`` is missing.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs.setdefault("run_id", "")
        kwargs.setdefault("sweep", None)
        kwargs.setdefault("config", {})
        kwargs.setdefault("versions", {})
        kwargs["resolved"] = _build(Resolved, data.get("resolved")) if data.get("resolved") else None
        kwargs["completion"] = _build(Completion, data.get("completion"))
        interruption = data.get("interruption")
        kwargs["interruption"] = (_build(Interruption, interruption)
                                  if isinstance(interruption, dict) and "signal" in interruption else None)
        pruning = data.get("pruning")
        kwargs["pruning"] = _build(Pruning, pruning) if isinstance(pruning, dict) and "step" in pruning else None
        kwargs["rungs"] = [r for r in data.get("rungs") or [] if isinstance(r, dict) and "step" in r]
        ver = data.get("verification") or {}
        if not isinstance(ver.get("merge"), dict):  # schema 1: one flat mapping of every check's figures
            ver = {"frozen_base": _legacy(ver, "frozen_base"), "grad_flow": _legacy(ver, "grad_flow"),
                   "merge": {**{k.removeprefix("merge_"): v for k, v in ver.items()},
                             "passed": ver.get("merge_equivalence")}}
        not_applicable = dict(ver.get("not_applicable") or {})
        if int(data.get("schema_version") or 1) < 3:  # LoRA runs only; these checks did not exist yet
            not_applicable.update(full_training="not recorded before schema 3 (LoRA run)",
                                  reload="not recorded before schema 3")
        if int(data.get("schema_version") or 1) < 5:
            not_applicable.setdefault("convergence", "not recorded before schema 5")
        kwargs["verification"] = Verification(
            frozen_base=check_from_dict(FrozenBaseCheck, ver.get("frozen_base")),
            grad_flow=check_from_dict(GradFlowCheck, ver.get("grad_flow")),
            full_training=check_from_dict(FullTrainingCheck, ver.get("full_training")),
            merge=check_from_dict(MergeCheck, ver.get("merge")),
            reload=check_from_dict(ReloadCheck, ver.get("reload")),
            convergence=check_from_dict(ConvergenceCheck, ver.get("convergence")),
            not_applicable=not_applicable)
        return cls(**kwargs)

    def wandb_summary(self) -> dict[str, Any]:
        """Flat W&B summary keys (docs/design.md, "Tracking"): ``status``, ``eval/<metric>``,
        ``base_eval/<metric>``, ``verification/<check>/<field>``, ``verification/passed``,
        ``training_efficiency/<figure>``, ``lora_rank/<metric>``, ``convergence/loss_decrease_pct``
        (recorded whether or not the check applies)."""
        out: dict[str, Any] = {"status": self.status, "verification/passed": self.verification.passed}
        for prefix, section in (("eval", self.eval), ("base_eval", self.base_eval or {}),
                                ("training_efficiency", self.training_efficiency), ("lora_rank", self.lora_rank)):
            out.update({f"{prefix}/{k}": v for k, v in section.items() if _scalar(v)})
        for name in CHECK_NAMES:
            if name in self.verification.not_applicable:
                continue
            check = dataclasses.asdict(getattr(self.verification, name))
            out.update({f"verification/{name}/{k}": v for k, v in check.items() if _scalar(v)})
        if self.verification.convergence.loss_decrease_pct is not None:
            out["convergence/loss_decrease_pct"] = self.verification.convergence.loss_decrease_pct
        return out


@dataclass
class RunResult:
    """Outcome of one run: ``status`` is completed | failed | failed_verification | interrupted
    (stopped by a signal) | paused (at a pruning rung) | pruned |
    skipped (completed earlier) | busy (being trained by another process); ``record`` what its
    ``metrics.json`` holds (None when there is none)."""

    run_name: str
    run_dir: Path
    status: str
    record: RunRecord | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        """The record as the JSON document of ``metrics.json`` (empty without a record)."""
        return self.record.to_dict() if self.record else {}


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, bool, str))


def _legacy(flat: dict[str, Any], name: str) -> dict[str, Any]:
    """A check's mapping from a schema-1 flat verification mapping, whose ``<name>`` key held
    the check's boolean."""
    return {**flat, "passed": flat.get(name)} if isinstance(flat.get(name), bool) else dict(flat)


def check_from_dict(cls: type, data: Any) -> Any:
    """A check (``FrozenBaseCheck`` ...) from its mapping; a schema-1 mapping or checkpoint
    record (``{"grad_flow": true, ...}``) keeps its result as ``passed``. None or a non-mapping
    gives the unobserved default."""
    if not isinstance(data, dict):
        return cls()
    legacy = {FrozenBaseCheck: "frozen_base", GradFlowCheck: "grad_flow"}.get(cls)
    if legacy and "passed" not in data:
        data = _legacy(data, legacy)
    return _build(cls, data)


def _build(cls: type, data: dict[str, Any] | None) -> Any:
    """``cls(**data)`` keeping only the fields ``cls`` has (None or a non-dict gives the default)."""
    if not isinstance(data, dict):
        return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


# The packages whose versions every record names (a result depends on them).
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "wandb", "loraexp")


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`VERSIONED_PACKAGES` (``not installed`` for a missing one)."""
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
