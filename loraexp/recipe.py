"""One run as a recipe: data -> model -> adapter -> trainer -> train or restore -> evaluate
-> save -> verify -> record (docs/design.md, "The run as a recipe").

:func:`run_experiment` reads top to bottom; each stage is a short method of
:class:`LoraRecipe`, which holds what the stages hand on. Every side effect (run files,
tracker, training) happens inside the failure handling: a failing run is recorded in its
``metrics.json`` and the caller goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from loraexp import data_cache
from loraexp.data_cache import select
from loraexp.errors import NonFiniteError, VerificationError
from loraexp.methods import is_lora as is_lora_method
from loraexp.record import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_FAILED_VERIFICATION,
    STATUS_INTERRUPTED,
    STATUS_PAUSED,
    STATUS_PRUNED,
    STATUS_RUNNING,
    ConvergenceCheck,
    FrozenBaseCheck,
    GradFlowCheck,
    Interruption,
    MergeCheck,
    ReloadCheck,
    Resolved,
    RunRecord,
    RunResult,
    check_from_dict,
)
from loraexp.schema import ExperimentConfig
from loraexp.storage import RunStore, free_bytes, is_disk_full, remove_temp_files

logger = logging.getLogger(__name__)

# Checkpoints kept per run unless training.save_total_limit says otherwise: the newest, and the
# one before it (a NaN stop's last good checkpoint may be the older one; docs/reliability.md).
DEFAULT_SAVE_TOTAL_LIMIT = 2
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "wandb", "loraexp")


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, run_name: str, resume: bool = False,
                   extra_callbacks: Sequence[Any] = (), start_over: bool = False,
                   until_step: int | None = None) -> RunResult:
    """Train, evaluate and verify one LoRA run; write its results under ``run_dir``.

    Args:
        resume: continue from the last complete Trainer checkpoint in ``run_dir/checkpoints``
            (adapter, optimizer, scheduler and RNG state; needs ``training.save_strategy:
            steps``); without one the run starts over. A checkpoint cut short by a kill is
            skipped (:func:`~loraexp.checkpoints.last_complete_checkpoint`).
        extra_callbacks: ``transformers.TrainerCallback`` objects added after loraexp's own.
        start_over: never continue an earlier attempt (``--rerun``), even an ``interrupted`` one.
        until_step: a pruning rung (optimizer steps, below ``max_steps``): train up to it, save a
            checkpoint, evaluate there and record the run ``paused`` with the evaluation appended
            to ``rungs`` (no adapter saved, nothing verified yet); a later call continues from
            that checkpoint (:mod:`loraexp.pruning`). None: train to the end.

    Under ``accelerate launch`` every process trains (DDP); only rank 0 writes files, logs to
    W&B and runs the merge check.

    Returns:
        The run's result and record. Never raises for a failing run: an exception is recorded
        with status ``failed`` (or ``failed_verification`` for a broken invariant); a NaN/inf loss or
        gradient stops training at that step, and the record holds ``failed_step`` and
        ``last_checkpoint`` (the last good one, kept on disk). A SIGTERM/SIGINT under an active
        :class:`~loraexp.preemption.PreemptionGuard` records ``interrupted`` (signal, step,
        checkpoint; :meth:`LoraRecipe.interrupt`). A full disk is recorded ``failed`` with
        ``error`` starting "disk full" after the partial checkpoint is removed
        (:meth:`LoraRecipe.fail`); the caller stops the sweep.
    """
    from loraexp.preemption import Preempted, deferred

    recipe = LoraRecipe(cfg, run_dir, run_name, extra_callbacks)
    recipe.start_over = start_over
    recipe.until_step = until_step
    started = time.time()
    stopped: BaseException | None = None
    trace = None
    try:
        recipe.start(resume)
        for stage in (recipe.load_data, recipe.load_model, recipe.attach_adapter, recipe.build_trainer,
                      recipe.evaluate_base_model, recipe.capture_probe_base, recipe.train_or_restore):
            recipe.stage = stage.__name__
            stage()
        for stage in ((recipe.pause_at_rung,) if recipe.at_rung else (
                recipe.evaluate, recipe.save_adapter, recipe.measure_drift, recipe.verify_merge, recipe.conclude)):
            recipe.stage = stage.__name__
            stage()
    except (Preempted, Exception) as exc:  # recorded below; a failing run does not stop the sweep
        stopped, trace = exc, traceback.format_exc()
    with deferred(recipe.guard):  # a signal now waits until the record is on disk
        if isinstance(stopped, Preempted):  # SIGTERM/SIGINT: the checkpoint is saved; a rerun continues
            recipe.interrupt(stopped)
        elif isinstance(stopped, NonFiniteError):
            recipe.fail(STATUS_FAILED, str(stopped), failed_step=stopped.step)
        elif isinstance(stopped, VerificationError):
            recipe.fail(STATUS_FAILED_VERIFICATION, str(stopped))
        elif stopped is not None:
            recipe.fail(STATUS_FAILED, f"{type(stopped).__name__}: {stopped}", trace=trace,
                        disk_full=is_disk_full(stopped) or recipe.store.low_on_space())
        recipe.record.wall_seconds = time.time() - started
        recipe.close()
    return RunResult(run_name, recipe.store.run_dir, recipe.record.status, recipe.record)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_base(cfg: ExperimentConfig, task_type: str, num_labels: int, quantized: bool = True):
    """``(model, tokenizer)``: the base in ``cfg.model_dtype``, quantized per
    ``cfg.quantization`` (and prepared for k-bit training) unless ``quantized`` is False. A
    full-precision base loaded before in this process is not loaded again
    (:mod:`loraexp.base_cache`).

    Raises:
        ModelError | ConfigError: see :func:`loraexp.models.load_model`.
    """
    from loraexp import base_cache
    from loraexp.quantization import DTYPE_BY_NAME, bnb_config, prepare_for_training

    quantization = bnb_config(cfg.quantization) if quantized else None
    model, tokenizer = base_cache.load(cfg.model, task_type, num_labels, cfg.trust_remote_code,
                                       dtype=DTYPE_BY_NAME[cfg.model_dtype], quantization_config=quantization)
    if quantization is not None:
        model = prepare_for_training(model, cfg.quantization)
    return model, tokenizer


def trim_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` without the trailing columns that are padding in every row
    (``attention_mask`` 0): rows cut from a batch padded to a longer row keep only what they
    need, so a check's forward passes cost less; no real position's output changes (its
    attention never reaches those columns). Left-padded batches and batches without an
    ``attention_mask`` are returned as they are.

    Args:
        batch: ``(rows, seq)`` tensors (and any others, left alone).
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or not mask.shape[1] or bool(mask[:, -1].any()):
        return batch
    real = mask.any(0).nonzero()
    length = int(real.max()) + 1 if len(real) else 1
    seq = mask.shape[1]
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == seq else v for k, v in batch.items()}


class LoraRecipe:
    """The stages of one run and the state they hand on (task, data, model, trainer,
    verification callbacks). Constructing it has no side effect; :meth:`start` is the
    first stage that writes."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, run_name: str,
                 extra_callbacks: Sequence[Any] = ()):
        from loraexp import preemption
        from loraexp.distributed import is_main_process, world_size
        from loraexp.tracking import NoOpTracker

        self.cfg = cfg
        self.main = is_main_process()
        self.store = RunStore(run_dir, writable=self.main)
        self.record = RunRecord(run_id=cfg.run_id, run_name=run_name, sweep=cfg.sweep.name, config=cfg.to_dict(),
                                versions=package_versions(), world_size=world_size())
        self.extra_callbacks = list(extra_callbacks)
        self.tracker = NoOpTracker()
        self.checkpoint: str | None = None
        self.prior: dict[str, Any] = {}  # verification recorded with that checkpoint
        self.callbacks: dict[str, Any] = {}
        self.initial: dict[str, Any] = {}  # initial factors / DoRA magnitudes (adapter_stats.initial_state)
        self.reference_logits = None  # the evaluated model's outputs on the check batches
        self._check_batches: list[dict[str, Any]] | None = None
        self.drift = None  # loraexp.representation_drift.DriftProbe, on rank 0 when measured
        self.guard = preemption.active()  # SIGTERM/SIGINT handling of the sweep, if any
        self.stage = "start"  # the stage running now (recorded when a signal stops the run)
        self.trainer = None
        self.start_over = False  # --rerun: never continue an earlier attempt
        self.until_step: int | None = None  # a pruning rung to stop at (run_experiment's until_step)
        self.at_rung = False  # training stopped at until_step

    # -- stages --------------------------------------------------------------------------
    def start(self, resume: bool) -> None:
        """Find the checkpoint to resume from (an ``interrupted`` run always resumes, unless
        :attr:`start_over`; a run whose data files changed since never does), or remove an
        earlier attempt's checkpoints; write ``config.yaml`` and a ``running`` record (with the
        data fingerprint), hold the disk reserve, start ``history.jsonl`` and the tracker."""
        from loraexp.checkpoints import checkpoint_step, last_complete_checkpoint, read_verification
        from loraexp.data_fingerprint import data_fingerprint
        from loraexp.tracking import make_tracker

        self.data_fingerprint = data_fingerprint(self.cfg.task, self.cfg.resolved_data_dir())
        self.record.resolved = Resolved(data_fingerprint=self.data_fingerprint)
        self.previous = self.store.read_record()
        if (self.previous is not None and self.previous.status in (STATUS_INTERRUPTED, STATUS_PAUSED, STATUS_PRUNED)
                and not self.start_over):
            resume = True  # stopped with a checkpoint (a signal, a pruning rung): continue from it
        elif self.previous is not None and self.previous.status == STATUS_RUNNING:
            logger.warning("run %s: an earlier attempt ended without a record (killed, or the disk was full)%s",
                           self.record.run_name, "; resuming from its last complete checkpoint" if resume else
                           "; starting over (--resume continues from its last complete checkpoint)")
        if resume and self.previous_data_changed():
            resume = False
        if resume:
            self.checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=self.main)
            self.prior = read_verification(self.checkpoint) if self.checkpoint else {}
        elif self.checkpoints_dir.is_dir() and self.main:  # a fresh start: no older attempt's files mix in
            logger.info("run %s: starting over, removing the checkpoints of an earlier attempt", self.record.run_name)
            shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
        self.record.resumed_from = self.checkpoint
        if self.checkpoint and self.previous is not None:  # the rungs up to the checkpoint stay evaluated
            self.record.rungs = [r for r in self.previous.rungs if r["step"] <= checkpoint_step(self.checkpoint)]
        logger.debug("training run %s in process %d%s", self.record.run_name, os.getpid(),
                     f", resuming from {self.checkpoint}" if self.checkpoint else "")
        self.store.write_config(self.record.config)
        self.store.write_record(self.record)
        self.store.reserve_space()  # given back to record the run if the disk fills up
        self.store.start_history(keep_until_step=checkpoint_step(self.checkpoint) if self.checkpoint else None)
        cfg = self.cfg
        self.tracker = make_tracker(cfg.tracking.wandb, project=cfg.tracking.project, entity=cfg.tracking.entity,
                                    group=cfg.sweep.name or self.store.run_dir.parent.name,
                                    name=self.record.run_name,
                                    config=self.record.config, directory=str(self.store.run_dir),
                                    is_main_process=self.main)

    def load_data(self) -> None:
        """Seed, pick the task's form for the model, and load both splits (the training split
        subsampled with ``data_seed``, the same examples for every run of a sweep; read once
        per process for the runs that share them, :mod:`loraexp.data_cache`)."""
        from transformers import set_seed

        from loraexp.models import load_model_config, model_task_type
        from loraexp.tasks import configured_task

        cfg = self.cfg
        set_seed(cfg.seed)
        self.task = configured_task(cfg, model_task_type(load_model_config(cfg.model, cfg.trust_remote_code)))
        self.data_dir = cfg.resolved_data_dir()
        self.train_split = data_cache.rows(self.task, "train", self.data_dir, self.data_fingerprint,
                                           cfg.max_train_samples, seed=cfg.data_seed)
        # max_eval_samples counts examples, not their windows
        self.eval_split = data_cache.rows(self.task, "validation", self.data_dir, self.data_fingerprint,
                                          cfg.max_eval_samples if self.task.windows_per_example else None)

    def load_model(self) -> None:
        """Load the base (quantized if asked; :mod:`loraexp.base_cache`) and tokenize both splits
        (once per process for the runs that share data and tokenizer, :mod:`loraexp.data_cache`)."""
        cfg = self.cfg
        self.model, self.tokenizer = load_base(cfg, self.task.task_type, self.task.num_labels)
        self.train_data = data_cache.tokenized(self.task, self.train_split, self.tokenizer, cfg.max_seq_length)
        self.eval_data = data_cache.tokenized(self.task, self.eval_split, self.tokenizer, cfg.max_seq_length)
        if not self.task.windows_per_example:
            self.eval_data = select(self.eval_data, cfg.max_eval_samples)

    def attach_adapter(self) -> None:
        """Wrap the base with the method's LoRA adapter (seeded right before the factors are
        initialised; docs/methods.md), or, for full fine-tuning, train the model itself; record
        the parameter report and which checks apply."""
        from loraexp.analysis.params import parameter_report
        from loraexp.methods import init_name, is_lora, lora_fields, not_applicable_checks
        from loraexp.models import attach_lora, resolve_model

        cfg, task = self.cfg, self.task
        lora_config = None
        if is_lora(cfg.method):
            lora = lora_fields(cfg.method, cfg.lora, cfg.method_options)
            self.tuned_model, lora_config = attach_lora(self.model, lora, seed=cfg.seed, task_type=task.task_type)
            self.initialise_adapter(lora_config)
            if cfg.warm_start:
                from loraexp.adapters import warm_start

                warm_start(self.tuned_model, cfg.warm_start)
        else:
            self.tuned_model = self.model.requires_grad_(True)
        self.training = self.training_settings()
        self.record.resolved = Resolved(
            model_path=resolve_model(cfg.model), model_type=self.model.config.model_type, objective=task.task_type,
            target_modules=lora_config.target_modules if lora_config else None,
            modules_to_save=sorted(set(lora_config.modules_to_save or [])) if lora_config else [],
            data_dir=self.data_dir or f"hub:{task.hub_dataset}/{task.hub_config}",
            data_fingerprint=self.data_fingerprint, tracking=getattr(self.tracker, "mode", None),
            train_examples=len(self.train_data), eval_examples=len(self.eval_data),
            optim=("peft create_loraplus_optimizer (torch AdamW)" if cfg.method == "lora-plus"
                   else self.training.get("optim", "adamw_torch")),
            device=str(self.tuned_model.device), method=cfg.method,
            init_lora_weights=init_name(lora_config.init_lora_weights) if lora_config else None,
            learning_rate=self.training["learning_rate"])
        self.record.verification.not_applicable = not_applicable_checks(
            cfg.method, lora_config.init_lora_weights if lora_config else None, cfg.quantization.method != "none")
        if cfg.verification.min_loss_decrease is None:
            self.record.verification.not_applicable["convergence"] = (
                "off: verification.min_loss_decrease is not set (loss_decrease_pct is recorded)")
        self.record.efficiency = parameter_report(self.tuned_model)
        self.tracker.summary({f"efficiency/{k}": v for k, v in self.record.efficiency.items()
                              if not isinstance(v, dict)})

    def initialise_adapter(self, lora_config) -> None:
        """What an initialisation needs after ``get_peft_model``: EVA's data-driven lora_A
        (``peft.initialize_lora_eva_weights`` on ``method_options.eva_batches`` training
        batches); for an initialisation that rewrites the base (PiSSA, OLoRA, CorDA), the
        initial adapter saved for PEFT's conversion at save time; the initial factors (ΔW
        against the original base) and DoRA magnitudes kept for the rank analysis."""
        from loraexp.adapters import save_initial_adapter
        from loraexp.analysis.adapter_stats import initial_state
        from loraexp.methods import convertible, init_name, rewrites_base

        init = lora_config.init_lora_weights
        if init_name(init) == "eva":
            self.initialise_eva()
        if convertible(init) and self.main:
            save_initial_adapter(self.tuned_model, self.initial_adapter_dir)
        self.initial = initial_state(self.tuned_model, factors=rewrites_base(init))

    def initialise_eva(self) -> None:
        """EVA: lora_A from the SVD of the target layers' input activations."""
        from peft import initialize_lora_eva_weights
        from torch.utils.data import DataLoader

        batches = []
        loader = DataLoader(self.train_data, batch_size=self.cfg.training.get("per_device_train_batch_size", 8),
                            collate_fn=self.task.collator(self.tokenizer, self.cfg.pad_to_multiple_of))
        for batch in loader:
            batches.append({k: v.to(self.tuned_model.device) for k, v in batch.items() if k != "labels"})
            if len(batches) == self.cfg.method_options.eva_batches:
                break
        initialize_lora_eva_weights(self.tuned_model, batches, show_progress_bar=False)

    def build_trainer(self) -> None:
        """``transformers.Trainer`` with loraexp's verification and tracking callbacks."""
        from transformers import Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from loraexp import callbacks as cb
        from loraexp.distributed import world_size
        from loraexp.methods import is_lora, loraplus_optimizer

        cfg, record = self.cfg, self.record
        self.callbacks = {"non_finite": cb.NonFiniteCallback()}
        if is_lora(cfg.method):
            frozen = cb.FrozenBaseCallback(reference=self.frozen_reference())
            grad_flow = cb.GradFlowCallback(cfg.verification.grad_flow_steps, prior=self.prior_grad_flow(),
                                            init=record.resolved.init_lora_weights)
            self.callbacks.update({
                "frozen": frozen, "grad_flow": grad_flow,
                "checkpoint_record": cb.CheckpointRecordCallback({"frozen_base": frozen.state_now,
                                                                  "grad_flow": lambda model: grad_flow.result}),
                "stats": cb.AdapterStatsCallback(self.log, every=cfg.tracking.stats_every_steps, initial=self.initial)})
        else:
            full = cb.FullTrainingCallback(cfg.verification.grad_flow_steps, prior=self.prior.get("full_training"))
            self.callbacks.update({"full_training": full,
                                   "checkpoint_record": cb.CheckpointRecordCallback({"full_training": full.state_now})})
        self.callbacks.update({"efficiency": cb.EfficiencyCallback(), "history": cb.HistoryCallback(self.log)})
        self.callbacks["final_checkpoint"] = cb.FinalCheckpointCallback()
        if cfg.sweep.checkpoint_minutes and world_size() == 1:  # ranks' clocks would disagree on the step
            self.callbacks["timed_checkpoint"] = cb.TimedCheckpointCallback(60.0 * cfg.sweep.checkpoint_minutes)
        if self.until_step is not None:
            self.callbacks["rung_stop"] = cb.RungStopCallback(self.until_step)
        if self.guard is not None:
            self.callbacks["stop_on_signal"] = cb.StopOnSignalCallback(self.guard)
            self.training = {**self.training, "enable_jit_checkpoint": False}  # loraexp's handler does its job
        optimizer = (loraplus_optimizer(self.tuned_model, self.training, cfg.method_options)
                     if cfg.method == "lora-plus" else None)
        args = TrainingArguments(output_dir=str(self.checkpoints_dir), seed=cfg.seed, report_to="none",
                                 run_name=record.run_name, include_num_input_tokens_seen="non_padding",
                                 **self.training)
        self.trainer = Trainer(model=self.tuned_model, args=args, train_dataset=self.train_data,
                               eval_dataset=self.eval_data,
                               data_collator=self.task.collator(self.tokenizer, cfg.pad_to_multiple_of),
                               callbacks=[*self.callbacks.values(), *self.extra_callbacks],
                               optimizers=(optimizer, None),
                               **self.task.trainer_metrics(self.tokenizer))
        for printer in (ProgressCallback, PrinterCallback):
            if self.trainer.pop_callback(printer) and printer is ProgressCallback:
                self.trainer.add_callback(cb.QuietProgressCallback())

    def evaluate_base_model(self) -> None:
        """Evaluate the base model (adapters disabled) before training, where that says
        something (:attr:`~loraexp.tasks.base.Task.scores_base_model`); a resumed attempt
        keeps the earlier attempt's figures."""
        if not (self.task.scores_base_model and self.cfg.evaluation.base_model):
            return
        if self.checkpoint and self.previous and self.previous.base_eval:
            self.record.base_eval = self.previous.base_eval
            return
        with self.base_model_view():
            self.record.base_eval = self.evaluate_as("base")

    def capture_probe_base(self) -> None:
        """On rank 0, before training: the base model's hidden states on the first
        ``tracking.cka_probe_examples`` eval examples (:class:`~loraexp.representation_drift.DriftProbe`),
        for :meth:`measure_drift`; the random state is restored afterwards, so the measurement
        leaves the training run unchanged."""
        from loraexp.representation_drift import DriftProbe

        wanted = self.cfg.tracking.cka_probe_examples
        if self.main and wanted:
            self.drift = DriftProbe.from_loader(self.trainer.get_eval_dataloader(), wanted, self.tuned_model.device)
            self.drift.capture_base(self.tuned_model, self.base_model_view())

    def train_or_restore(self) -> None:
        """``Trainer.train`` (from the checkpoint, if resuming), or -- when the checkpoint was
        saved at the last optimizer step -- load its adapter instead: resuming there would
        take one step past ``max_steps`` (transformers 5.23)."""
        import contextlib

        from loraexp.checkpoints import checkpoint_state, is_final, optimizer_state_bytes
        from loraexp.quantization import weight_bytes

        if self.checkpoint and is_final(self.checkpoint):
            self.restore_final_checkpoint()
            state = checkpoint_state(self.checkpoint)
            self.record.completion.planned_steps, self.record.completion.trained_steps = (
                state["max_steps"], state["global_step"])
            self.callbacks["efficiency"].result = {"optimizer_state_bytes": optimizer_state_bytes(self.checkpoint)}
        else:
            with self.guard.training() if self.guard is not None else contextlib.nullcontext():
                self.trainer.train(resume_from_checkpoint=self.checkpoint)
            if self.guard is not None:
                self.guard.raise_if_signalled()  # training stopped for it, after saving a checkpoint
            self.record.completion.planned_steps = self.trainer.state.max_steps
            self.record.completion.trained_steps = self.trainer.state.global_step
            self.at_rung = self.until_step is not None and self.until_step <= self.trainer.state.global_step < (
                self.trainer.state.max_steps)
        self.record.training_efficiency = {**self.callbacks["efficiency"].result, **weight_bytes(self.tuned_model)}

    def pause_at_rung(self) -> None:
        """Training stopped at the pruning rung :attr:`until_step` (a checkpoint saved there):
        evaluate on the eval split (no ``predictions.npz``), append ``{"step", "eval"}`` to
        ``rungs`` and record the run ``paused``, naming the checkpoint the next rung continues."""
        from loraexp.checkpoints import last_complete_checkpoint

        step = self.trainer.state.global_step
        self.record.rungs.append({"step": step, "eval": self.evaluate_as("eval")})
        self.collect_verification()
        self.record.last_checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=False)
        self.record.status = STATUS_PAUSED

    def evaluate(self) -> None:
        """Evaluate the trained model on the eval split, keeping its per-example scores in
        ``predictions.npz`` (:mod:`loraexp.statistics`); the trained model's drift-probe states
        are taken from this pass where it computes in the weights' precision
        (:meth:`~loraexp.representation_drift.DriftProbe.taken_from_evaluation`)."""
        import contextlib

        args = self.trainer.args
        # the base states were taken in the weights' precision, by one module (no DataParallel replicas)
        same_pass = not (args.bf16 or args.fp16 or args.bf16_full_eval or args.fp16_full_eval or args.torch_compile
                         or args.n_gpu > 1)
        with (self.drift.taken_from_evaluation(self.tuned_model) if self.drift is not None and same_pass
              else contextlib.nullcontext()):
            self.record.eval = self.evaluate_as("eval", keep_examples=True)

    def measure_drift(self) -> None:
        """Representation drift: linear CKA per layer between the base model's and the trained
        model's hidden states on the probe examples (docs/report.md, "Representation drift"),
        into ``metrics.json`` and the tracker. A failure is recorded, never raised."""
        if self.drift is None:
            return
        drift = self.record.representation_drift = self.drift.measure(self.tuned_model)
        if "error" in drift:
            logger.warning("run %s: representation drift not measured: %s", self.record.run_name, drift["error"])
            return
        self.tracker.table("representation_drift/cka", ["layer", "cka"], [[i, c] for i, c in enumerate(drift["cka"])],
                           line=("layer", "cka", "Linear CKA, base vs trained, per layer"))

    def save_adapter(self) -> None:
        """``save_pretrained`` the adapter (safetensors; an initialisation that rewrote the base
        is converted by PEFT to apply to the original base) and record the final adapter
        statistics and rank metrics. Full fine-tuning saves the model only with
        ``export_merged`` (to ``<run>/merged``)."""
        from loraexp.adapters import save_converted_adapter
        from loraexp.analysis.adapter_stats import aggregate_rank_metrics
        from loraexp.methods import is_lora

        if not is_lora(self.cfg.method):
            if self.cfg.export_merged and self.main:
                self.save_model(self.tuned_model)
            return
        if self.main:
            if "reload" not in self.record.verification.not_applicable:
                self.capture_reference_outputs()
            if self.initial_adapter_dir.is_dir():
                save_converted_adapter(self.tuned_model, self.store.adapter_dir, self.initial_adapter_dir)
            else:
                self.tuned_model.save_pretrained(str(self.store.adapter_dir))
        final = self.callbacks["stats"].final
        self.record.lora_rank = aggregate_rank_metrics(final)
        self.record.adapter_statistics = final
        self.tracker.table("lora_rank/singular_values", ["module", "index", "singular_value"],
                           [[module, i + 1, sigma] for module, stats in final.items()
                            for i, sigma in enumerate(stats["singular_values"])],
                           line=("index", "singular_value", "Singular values of ΔW per module", "module"))

    def verify_merge(self) -> None:
        """On rank 0, for a LoRA run: the reload check (the saved adapter on a fresh load of the
        original base reproduces the trained model's outputs), then the merge-equivalence check
        on a copy of the model; a quantized base is merged into a full-precision reload. With
        ``export_merged``, save the merged model once the check passed."""
        from loraexp.analysis.merge import check_adapter_reload, check_merge_equivalence, check_quantized_merge
        from loraexp.methods import is_lora

        verification = self.record.verification
        if not is_lora(self.cfg.method):
            return
        if not self.main:
            verification.merge = MergeCheck(passed=True, checked_on="rank 0")
            verification.reload = ReloadCheck(passed=True, checked_on="rank 0")
            return
        v, task = self.cfg.verification, self.task
        batches = self.check_batches()
        space = task.merge_space if v.merge_space == "auto" else v.merge_space
        if self.cfg.quantization.method == "none":
            if "reload" not in verification.not_applicable:
                original, _ = load_base(self.cfg, task.task_type, task.num_labels, quantized=False)
                verification.reload = check_adapter_reload(
                    self.tuned_model, original.to(self.tuned_model.device), self.store.adapter_dir, batches,
                    atol=v.merge_atol, space=space, converted=self.initial_adapter_dir.is_dir(),
                    reference_logits=self.reference_logits)
            # a passed reload check found the model still gives the reference logits, bit for bit
            merged, result = check_merge_equivalence(
                self.tuned_model, batches, atol=v.merge_atol, latency_repeats=v.latency_repeats, space=space,
                adapter_logits=self.reference_logits if verification.reload.passed else None)
        else:
            full_precision, _ = load_base(self.cfg, task.task_type, task.num_labels, quantized=False)
            merged, result = check_quantized_merge(self.tuned_model, full_precision.to(self.tuned_model.device),
                                                   self.store.adapter_dir, batches, atol=v.quantized_merge_atol,
                                                   latency_repeats=v.latency_repeats)
        verification.merge = result
        if self.cfg.export_merged and result.passed:
            self.save_model(merged)

    def conclude(self) -> None:
        """The convergence figures (:func:`~loraexp.analysis.convergence.loss_decrease`, from
        ``history.jsonl`` on rank 0); then ``completed`` when every check passed, else
        ``failed_verification`` with the reasons."""
        from loraexp.analysis.convergence import loss_decrease
        from loraexp.run_state import prove_completion

        v = self.cfg.verification
        self.record.verification.convergence = (
            loss_decrease(self.store.read_history(), self.training.get("logging_steps", 500), v.min_loss_decrease)
            if self.main else ConvergenceCheck(passed=True, checked_on="rank 0"))
        self.collect_verification()
        prove_completion(self.record, self.store, self.cfg, adapter_on_disk=self.main)  # rank 0 saved the adapter
        verification, completion = self.record.verification, self.record.completion
        if completion.problems:
            self.record.status = STATUS_FAILED
            self.record.error = "not complete: " + "; ".join(completion.problems)
        elif verification.passed:
            self.record.status = STATUS_COMPLETED
        else:
            self.record.status = STATUS_FAILED_VERIFICATION
            self.record.error = "; ".join(verification.failure_reasons()) or "a verification check failed"

    def fail(self, status: str, error: str, failed_step: int | None = None, trace: str | None = None,
             disk_full: bool = False) -> None:
        """Record a run that stopped on an exception. After a NaN/inf stop (``failed_step``),
        the record names the last good checkpoint and the command that continues from it with a
        lower learning rate (``--warm-start``). A full disk removes the partial checkpoint and
        temp files first (the space the record needs), and the error starts with "disk full"."""
        from loraexp.checkpoints import last_complete_checkpoint

        self.collect_verification()
        if disk_full:
            last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=self.main)
            remove_temp_files(self.store.run_dir)
            self.store.release_space()
            error = f"disk full ({free_bytes(self.store.run_dir)} bytes free): {error}"
        self.record.status, self.record.error, self.record.traceback = status, error, trace
        if failed_step is not None:
            self.record.failed_step = failed_step
            self.record.last_checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=False)
            if self.record.last_checkpoint and is_lora_method(self.cfg.method):
                lr = self.cfg.training["learning_rate"]
                sweep = self.cfg.sweep.name or self.store.run_dir.parent.name
                self.record.error += (f"; to continue from the last good checkpoint with a lower learning rate: "
                                      f"loraexp --config {self.store.config_path} "
                                      f"--warm-start {self.record.last_checkpoint} "
                                      f"--set training.learning_rate={lr / 2:g} --set sweep.name={sweep}-nan-recovery")
        if trace:
            logger.error("run %s failed: %s", self.record.run_name, error)

    def interrupt(self, exc) -> None:
        """Record a run stopped by a signal (``exc``: :class:`~loraexp.preemption.Preempted`):
        status ``interrupted``, the signal, the stage it arrived in, the optimizer step reached
        and the checkpoint a rerun continues from (saved after the step in progress when the
        signal came during training)."""
        from loraexp.checkpoints import checkpoint_step, last_complete_checkpoint

        self.collect_verification()
        checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=False)
        trained = self.trainer.state.global_step if self.trainer is not None else 0
        step = trained if self.stage == "train_or_restore" and trained else (
            checkpoint_step(checkpoint) if checkpoint else None)
        self.record.status = STATUS_INTERRUPTED
        self.record.interruption = Interruption(signal=exc.signal_name, signal_number=exc.signum, step=step,
                                                checkpoint=checkpoint, during=self.stage)
        self.record.error = (f"stopped by {exc.signal_name} during {self.stage}"
                             + (f" at optimizer step {step}" if step is not None else "")
                             + (f"; checkpoint {checkpoint}" if checkpoint else "; no checkpoint yet"))
        self.record.last_checkpoint = checkpoint
        logger.warning("run %s: %s", self.record.run_name, self.record.error)

    def close(self) -> None:
        """Write ``metrics.json`` and finish the tracker. Never raises: a full disk or a dead
        W&B connection is logged, and the record returned to the caller still says what
        happened."""
        try:
            self.store.write_record(self.record)
        except OSError as exc:
            if not self.write_record_on_full_disk(exc):
                logger.error("run %s: could not write %s: %s", self.record.run_name, self.store.metrics_path, exc)
                self.record.status = STATUS_FAILED
                self.record.error = f"{self.record.error or ''}; metrics.json not written: {exc}".lstrip("; ")
        self.store.release_space()
        try:
            self.tracker.summary(self.record.wandb_summary())
            self.tracker.finish(exit_code=0 if self.record.status in (STATUS_COMPLETED, STATUS_PAUSED) else 1)
        except Exception as exc:  # the tracker's own failure must not end the sweep
            logger.error("run %s: the tracker failed: %s", self.record.run_name, exc)

    # -- helpers -------------------------------------------------------------------------
    def previous_data_changed(self) -> bool:
        """Whether the earlier attempt's record names another data fingerprint than today's
        files: its checkpoints were trained on other data, so the run starts over (logged)."""
        recorded = self.previous.resolved.data_fingerprint if self.previous and self.previous.resolved else None
        now = self.data_fingerprint
        if recorded and recorded != now:
            logger.warning("run %s: the data files changed since its earlier attempt (%s, now %s): starting over "
                           "instead of resuming its checkpoint", self.record.run_name, recorded, now)
            return True
        return False

    def write_record_on_full_disk(self, exc: OSError) -> bool:
        """After ``metrics.json`` could not be written for a full disk: record the run as
        failed for it (which removes the partial checkpoint and temp files) and write again.
        True when the record is on disk; else the next start finds it ``running`` and says so."""
        if not is_disk_full(exc):
            return False
        if self.record.status != STATUS_FAILED or not (self.record.error or "").startswith("disk full"):
            self.fail(STATUS_FAILED, f"{type(exc).__name__}: {exc}", disk_full=True)
        try:
            self.store.write_record(self.record)
        except OSError:
            return False
        return True

    @property
    def checkpoints_dir(self) -> Path:
        return self.store.run_dir / "checkpoints"

    @property
    def initial_adapter_dir(self) -> Path:
        """The initial adapter of a base-rewriting initialisation, for PEFT's conversion."""
        return self.store.run_dir / "initial_adapter"

    def capture_reference_outputs(self) -> None:
        """The evaluated model's logits on the check batches, before anything is saved: what
        the reload check compares the saved adapter with."""
        from loraexp.analysis.merge import model_logits

        self.reference_logits = model_logits(self.tuned_model.eval(), self.check_batches())

    def save_model(self, model) -> None:
        """``save_pretrained`` ``model`` and the tokenizer to ``<run>/merged``."""
        model.save_pretrained(str(self.store.run_dir / "merged"))
        self.tokenizer.save_pretrained(str(self.store.run_dir / "merged"))
        self.record.merged_dir = str(self.store.run_dir / "merged")

    def frozen_reference(self) -> str:
        """What the frozen-base check fingerprints: the pretrained weights, or the residual an
        initialisation rewrote them to."""
        from loraexp.methods import rewrites_base

        init = self.record.resolved.init_lora_weights
        return f"residual base W - s*B0*A0 after {init} initialisation" if rewrites_base(init) else "pretrained weights"

    def base_model_view(self):
        """Context in which the model computes the base model: before training, full
        fine-tuning's model is the base, and a base-rewriting initialisation's adapter restores
        it (W − s·B0·A0 + s·B0·A0; LoftQ approximately); other adapters are disabled."""
        import contextlib

        from loraexp.methods import is_lora, rewrites_base

        if not is_lora(self.cfg.method) or rewrites_base(self.record.resolved.init_lora_weights):
            return contextlib.nullcontext()
        return self.tuned_model.disable_adapter()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One row of per-step metrics to ``history.jsonl`` and the tracker."""
        self.store.append_history({"step": step, **metrics})
        self.tracker.log(metrics, step=step)

    def prior_grad_flow(self) -> GradFlowCheck | None:
        """The gradient-flow check recorded with the checkpoint being resumed, if any."""
        from loraexp.checkpoints import checkpoint_step

        if not isinstance(self.prior.get("grad_flow"), dict):
            return None
        check = check_from_dict(GradFlowCheck, self.prior["grad_flow"])
        if check.passed:
            check.carried_from_checkpoint = checkpoint_step(self.checkpoint)
        return check

    def training_settings(self) -> dict[str, Any]:
        """``cfg.training`` plus what loraexp adds unless the config sets it (full fine-tuning
        replaces the learning rate by :func:`~loraexp.methods.full_learning_rate`): the Trainer's
        progress bar (``disable_tqdm: false``); ``save_total_limit``
        :data:`DEFAULT_SAVE_TOTAL_LIMIT`; the task's own defaults
        (:meth:`~loraexp.tasks.base.Task.training_defaults`); paged 8-bit AdamW for a quantized
        base on CUDA; ``use_cpu`` for DDP on CPU (else transformers runs each process alone) and
        for bf16 on a machine without a GPU (:func:`~loraexp.throughput.needs_use_cpu`: then bf16
        autocast on the CPU; else transformers refuses bf16)."""
        import torch

        from loraexp.distributed import needs_cpu_ddp
        from loraexp.methods import full_learning_rate, is_lora
        from loraexp.quantization import default_optimizer
        from loraexp.throughput import needs_use_cpu

        training = {"disable_tqdm": False,  # the Trainer's bar; without this it follows transformers' log level
                    **self.task.training_defaults(), **self.cfg.training}
        if not is_lora(self.cfg.method):
            training["learning_rate"] = full_learning_rate(self.cfg.method_options, self.task.task_type)
        optimizer = default_optimizer(self.cfg.quantization, torch.cuda.is_available())
        if optimizer:
            training.setdefault("optim", optimizer)
        if needs_cpu_ddp() or needs_use_cpu(training, torch.accelerator.is_available()):
            training.setdefault("use_cpu", True)
        training.setdefault("save_total_limit", DEFAULT_SAVE_TOTAL_LIMIT)
        return training

    def evaluate_as(self, label: str, keep_examples: bool = False) -> dict[str, Any]:
        """Evaluation metrics without the ``<label>_`` prefix, post-processed by the task, plus
        its generation metrics (per-example records to ``generations_<label>.jsonl``). With
        ``keep_examples`` (or for a task whose metrics need the examples), ``Trainer.predict``
        runs the same evaluation loop and the task scores each example
        (:meth:`~loraexp.tasks.base.Task.example_scores`); with ``keep_examples`` the
        per-example scores go to ``predictions.npz`` (:func:`~loraexp.statistics.save_predictions`)."""
        from loraexp.statistics import PREDICTIONS_FILE, record_scores, save_predictions

        columns: dict[str, Any] = {}
        scores: dict[str, Any] = {}
        if keep_examples or self.task.metrics_from_examples:
            output = self.trainer.predict(self.eval_data, metric_key_prefix=label)
            columns, scores, extra = self.task.example_scores(output.predictions, output.label_ids, self.tokenizer,
                                                              self.eval_split, self.eval_data)
            metrics = {**output.metrics, **{f"{label}_{k}": v for k, v in extra.items()}}
            self.trainer.log(metrics)
        else:
            metrics = self.trainer.evaluate(metric_key_prefix=label)
        out = self.task.postprocess_metrics({k.removeprefix(f"{label}_"): v for k, v in metrics.items()})
        generated = self.task.evaluate_generation(self.trainer.model, self.tokenizer, self.eval_split,
                                                  self.cfg.evaluation)
        if generated is not None:
            values, records = generated
            out.update(values)
            self.store.write_jsonl(f"generations_{label}.jsonl", records)
            if records and keep_examples:
                scores.update(record_scores(records, [k for k in values if k in records[0]]))
        if keep_examples and scores and self.main:
            save_predictions(self.store.run_dir / PREDICTIONS_FILE, columns, scores)
            self.record.predictions_file = PREDICTIONS_FILE
        return out

    def check_batches(self) -> list[dict[str, Any]]:
        """The eval batches the reload and merge checks compare on
        (``verification.merge_eval_batches``, cut to the task's ``merge_check_rows`` and to
        their longest row), taken once."""
        if self._check_batches is None:
            self._check_batches = self.eval_batches(self.cfg.verification.merge_eval_batches,
                                                    self.task.merge_check_rows)
        return self._check_batches

    def eval_batches(self, count: int, max_rows: int | None) -> list[dict[str, Any]]:
        """The first ``count`` eval batches without labels, each cut to ``max_rows`` rows
        (:func:`trim_padding`: and to the longest of those rows)."""
        batches = []
        for batch in self.trainer.get_eval_dataloader():
            rows = trim_padding({k: v[:max_rows] for k, v in batch.items() if k != "labels"})
            batches.append({k: v.to(self.tuned_model.device) for k, v in rows.items()})
            if len(batches) == count:
                break
        return batches

    def restore_final_checkpoint(self) -> None:
        """Load the adapter (and trained head) of the checkpoint saved at the last optimizer
        step into the PEFT model (``peft.set_peft_model_state_dict``) and take the frozen-base
        result recorded with it.

        Raises:
            VerificationError: the checkpoint's adapter does not fit the model.
        """
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from loraexp.checkpoints import checkpoint_step
        from loraexp.methods import is_lora

        if not is_lora(self.cfg.method):  # full fine-tuning: the checkpoint holds the whole model
            from safetensors.torch import load_model

            missing, unexpected = load_model(self.tuned_model, Path(self.checkpoint) / "model.safetensors",
                                             strict=False)
            if missing or unexpected:
                raise VerificationError(f"checkpoint {self.checkpoint} does not fit the model: missing "
                                        f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
            self.callbacks["full_training"].finish_restored(self.tuned_model)
            return
        weights = load_file(Path(self.checkpoint) / "adapter_model.safetensors")
        loaded = set_peft_model_state_dict(self.tuned_model, weights)
        if loaded.unexpected_keys:
            raise VerificationError(f"checkpoint {self.checkpoint} holds tensors the model lacks: "
                                    f"{loaded.unexpected_keys[:3]}")
        frozen = self.prior.get("frozen_base")
        self.callbacks["frozen"].result = check_from_dict(FrozenBaseCheck, frozen) if isinstance(frozen, dict) else (
            FrozenBaseCheck(passed=False, reason=f"checkpoint {self.checkpoint} has no verification record"))
        self.callbacks["stats"].finish(checkpoint_step(self.checkpoint), self.tuned_model)

    def collect_verification(self) -> None:
        """Take the frozen-base and gradient-flow results from their callbacks."""
        for name in ("frozen_base", "grad_flow", "full_training"):
            callback = self.callbacks.get({"frozen_base": "frozen"}.get(name, name))
            if callback is not None:
                setattr(self.record.verification, name, callback.result)
