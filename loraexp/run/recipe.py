"""One run as a recipe: data -> model -> adapter -> trainer -> train or restore -> evaluate
-> save -> verify -> record (docs/design.md, "The run as a recipe").

:func:`run_experiment` reads top to bottom; each stage is a short method of
:class:`LoraRecipe` that takes what earlier stages handed on and returns what later ones need
(:class:`~loraexp.run.resume.ResumePlan`, :class:`RunData`, :class:`Base`,
:class:`~loraexp.run.strategies.Tuned`, :class:`Trained`). What differs between LoRA and full
fine-tuning is the run's strategy (:mod:`loraexp.run.strategies`). Every side effect (run files,
tracker, training) happens inside the failure handling: a failing run is recorded in its
``metrics.json`` and the caller goes on; the record's status is set by :meth:`LoraRecipe.settle`
alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import NonFiniteError, VerificationError
from loraexp.model.load import load_base
from loraexp.results.record import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_FAILED_VERIFICATION,
    STATUS_INTERRUPTED,
    STATUS_PAUSED,
    ConvergenceCheck,
    Interruption,
    Resolved,
    RunRecord,
    RunResult,
    package_versions,
)
from loraexp.results.storage import RunStore, free_bytes, is_disk_full, remove_temp_files
from loraexp.run.resume import ResumePlan
from loraexp.run.strategies import Tuned
from loraexp.run.training_args import training_arguments
from loraexp.tasks import data_cache
from loraexp.tasks.data_cache import select

logger = logging.getLogger(__name__)



@dataclass
class RunData:
    """What :meth:`LoraRecipe.load_data` hands on: the task in its form for the model, the data
    directory (None: the Hub), and both splits' rows (the training split subsampled)."""

    task: Any
    data_dir: str | None
    train_split: Any
    eval_split: Any


@dataclass
class Base:
    """What :meth:`LoraRecipe.load_model` hands on: the base model, its tokenizer, and both
    splits tokenized."""

    model: Any
    tokenizer: Any
    train_data: Any
    eval_data: Any


@dataclass
class Trained:
    """What :meth:`LoraRecipe.train_or_restore` hands on: whether training stopped at the
    pruning rung ``until_step`` (then the run pauses there)."""

    at_rung: bool


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, run_name: str, resume: bool = False,
                   extra_callbacks: Sequence[Any] = (), start_over: bool = False,
                   until_step: int | None = None) -> RunResult:
    """Train, evaluate and verify one LoRA run; write its results under ``run_dir``.

    Args:
        resume: continue from the last complete Trainer checkpoint in ``run_dir/checkpoints``
            (adapter, optimizer, scheduler and RNG state; needs ``training.save_strategy:
            steps``); without one the run starts over. A checkpoint cut short by a kill is
            skipped (:func:`~loraexp.run.checkpoints.last_complete_checkpoint`).
        extra_callbacks: ``transformers.TrainerCallback`` objects added after loraexp's own.
        start_over: never continue an earlier attempt (``--rerun``), even an ``interrupted`` one.
        until_step: a pruning rung (optimizer steps, below ``max_steps``): train up to it, save a
            checkpoint, evaluate there and record the run ``paused`` with the evaluation appended
            to ``rungs`` (no adapter saved, nothing verified yet); a later call continues from
            that checkpoint (:mod:`loraexp.sweep.pruning`). None: train to the end.

    Under ``accelerate launch`` every process trains (DDP); only rank 0 writes files, logs to
    W&B and runs the merge check.

    Returns:
        The run's result and record. Never raises for a failing run: an exception is recorded
        with status ``failed`` (or ``failed_verification`` for a broken invariant); a NaN/inf loss or
        gradient stops training at that step, and the record holds ``failed_step`` and
        ``last_checkpoint`` (the last good one, kept on disk). A SIGTERM/SIGINT under an active
        :class:`~loraexp.run.preemption.PreemptionGuard` records ``interrupted`` (signal, step,
        checkpoint; :meth:`LoraRecipe.interrupt`). A full disk is recorded ``failed`` with
        ``error`` starting "disk full" after the partial checkpoint is removed
        (:meth:`LoraRecipe.fail`); the caller stops the sweep.
    """
    from loraexp.config.precision import resolve_device_defaults
    from loraexp.run.preemption import Preempted, deferred

    cfg = resolve_device_defaults(cfg)  # the dtypes this device trains in (config.yaml and the record hold them)
    recipe = LoraRecipe(cfg, run_dir, run_name, extra_callbacks, start_over=start_over, until_step=until_step)
    stage = recipe.run_stage
    started = time.time()
    stopped: BaseException | None = None
    trace = None
    try:
        plan = stage(recipe.start, resume)
        data = stage(recipe.load_data)
        base = stage(recipe.load_model, data)
        tuned = stage(recipe.attach_adapter, data, base)
        stage(recipe.build_trainer, data, base, tuned, plan)
        stage(recipe.evaluate_base_model, data, base, tuned, plan)
        stage(recipe.capture_probe_base, tuned)
        trained = stage(recipe.train_or_restore, tuned, plan)
        if trained.at_rung:
            stage(recipe.pause_at_rung, data, base)
        else:
            stage(recipe.evaluate, data, base, tuned)
            stage(recipe.save_adapter, data, base, tuned)
            stage(recipe.measure_drift, tuned)
            stage(recipe.verify_merge, data, base, tuned)
            stage(recipe.conclude)
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


class LoraRecipe:
    """The stages of one run. It keeps only what the failure handling and :meth:`close` need
    whatever stage a run stopped in (config, store, record, tracker, strategy, trainer,
    callbacks); each stage takes what earlier stages returned. Constructing it has no side
    effect; :meth:`start` is the first stage that writes."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, run_name: str,
                 extra_callbacks: Sequence[Any] = (), start_over: bool = False, until_step: int | None = None):
        from loraexp.run import preemption
        from loraexp.run.distributed import is_main_process, world_size
        from loraexp.run.strategies import strategy_for
        from loraexp.run.tracking import NoOpTracker

        self.cfg = cfg
        self.main = is_main_process()
        self.store = RunStore(run_dir, writable=self.main)
        self.record = RunRecord(run_id=cfg.run_id, run_name=run_name, sweep=cfg.sweep.name, config=cfg.to_dict(),
                                versions=package_versions(), world_size=world_size())
        self.strategy = strategy_for(cfg, self.store.run_dir, self.main)
        self.extra_callbacks = list(extra_callbacks)
        self.start_over = start_over  # --rerun: never continue an earlier attempt
        self.until_step = until_step  # a pruning rung to stop at (run_experiment's until_step)
        self.guard = preemption.active()  # SIGTERM/SIGINT handling of the sweep, if any
        self.tracker = NoOpTracker()
        self.stage = "start"  # the stage running now (recorded when a signal stops the run)
        self.data_fingerprint: str | None = None
        self.training: dict[str, Any] = {}  # the TrainingArguments fields (training_arguments)
        self.trainer = None
        self.callbacks: dict[str, Any] = {}
        self.drift = None  # loraexp.run.representation_drift.DriftProbe, on rank 0 when measured
        self.reference_logits = None  # the evaluated model's outputs on the check batches
        self._check_batches: list[dict[str, Any]] | None = None

    def run_stage(self, stage: Callable[..., Any], *handed_on: Any) -> Any:
        """Run ``stage`` with what earlier stages handed on, recording its name first."""
        self.stage = stage.__name__
        return stage(*handed_on)

    # -- stages --------------------------------------------------------------------------
    def start(self, resume: bool) -> ResumePlan:
        """Plan where this attempt starts (:func:`~loraexp.run.resume.plan_resume`); write
        ``config.yaml`` and a ``running`` record (with the data fingerprint), hold the disk
        reserve, start ``history.jsonl`` and the tracker."""
        from loraexp.run.checkpoints import checkpoint_step
        from loraexp.run.resume import plan_resume
        from loraexp.run.tracking import make_tracker
        from loraexp.tasks.fingerprint import data_fingerprint

        cfg = self.cfg
        self.data_fingerprint = data_fingerprint(cfg.task, cfg.resolved_data_dir())
        self.record.resolved = Resolved(data_fingerprint=self.data_fingerprint)
        plan = plan_resume(self.store.read_record(), self.checkpoints_dir, self.data_fingerprint,
                           self.record.run_name, resume, self.start_over, self.main)
        self.record.resumed_from = plan.checkpoint
        if plan.checkpoint and plan.previous is not None:
            self.record.rungs = plan.rungs
        logger.debug("training run %s in process %d%s", self.record.run_name, os.getpid(),
                     f", resuming from {plan.checkpoint}" if plan.checkpoint else "")
        self.store.write_config(self.record.config)
        self.store.write_record(self.record)
        self.store.reserve_space()  # given back to record the run if the disk fills up
        self.store.start_history(keep_until_step=checkpoint_step(plan.checkpoint) if plan.checkpoint else None)
        self.tracker = make_tracker(cfg.tracking.wandb, project=cfg.tracking.project, entity=cfg.tracking.entity,
                                    group=cfg.sweep.name or self.store.run_dir.parent.name,
                                    name=self.record.run_name, config=self.record.config,
                                    directory=str(self.store.run_dir), is_main_process=self.main)
        return plan

    def load_data(self) -> RunData:
        """Seed, pick the task's form for the model, and load both splits (the training split
        subsampled with ``data_seed``, the same examples for every run of a sweep; read once
        per process for the runs that share them, :mod:`loraexp.tasks.data_cache`)."""
        from transformers import set_seed

        from loraexp.model.load import load_model_config, model_task_type
        from loraexp.tasks import configured_task

        cfg = self.cfg
        set_seed(cfg.seed)
        task = configured_task(cfg, model_task_type(load_model_config(cfg.model, cfg.trust_remote_code)))
        data_dir = cfg.resolved_data_dir()
        train = data_cache.rows(task, "train", data_dir, self.data_fingerprint, cfg.max_train_samples,
                                seed=cfg.data_seed)
        # max_eval_samples counts examples, not their windows
        evaluation = data_cache.rows(task, "validation", data_dir, self.data_fingerprint,
                                     cfg.max_eval_samples if task.windows_per_example else None)
        return RunData(task, data_dir, train, evaluation)

    def load_model(self, data: RunData) -> Base:
        """Load the base (quantized if asked; :func:`~loraexp.model.load.load_base`) and tokenize both splits
        (once per process for the runs that share data and tokenizer, :mod:`loraexp.tasks.data_cache`)."""
        cfg, task = self.cfg, data.task
        model, tokenizer = load_base(cfg, task.task_type, task.num_labels)
        train = data_cache.tokenized(task, data.train_split, tokenizer, cfg.max_seq_length)
        evaluation = data_cache.tokenized(task, data.eval_split, tokenizer, cfg.max_seq_length)
        if not task.windows_per_example:
            evaluation = select(evaluation, cfg.max_eval_samples)
        return Base(model, tokenizer, train, evaluation)

    def attach_adapter(self, data: RunData, base: Base) -> Tuned:
        """What trains: the method's LoRA adapter on the frozen base, or for full fine-tuning
        the model itself (:meth:`~loraexp.run.strategies.LoraStrategy.attach`); record the
        resolved settings, the parameter report and which checks apply."""
        from loraexp.analysis.params import parameter_report
        from loraexp.config.methods import init_name, not_applicable_checks
        from loraexp.model.load import resolve_model

        cfg, task = self.cfg, data.task
        tuned = self.strategy.attach(base.model, task, base.train_data, base.tokenizer)
        self.training = training_arguments(self.cfg, task, self.strategy)
        lora_config = tuned.lora_config
        self.record.resolved = Resolved(
            model_path=resolve_model(cfg.model), model_type=base.model.config.model_type, objective=task.task_type,
            target_modules=lora_config.target_modules if lora_config else None,
            modules_to_save=sorted(set(lora_config.modules_to_save or [])) if lora_config else [],
            data_dir=data.data_dir or f"hub:{task.hub_dataset}/{task.hub_config}",
            data_fingerprint=self.data_fingerprint, tracking=getattr(self.tracker, "mode", None),
            train_examples=len(base.train_data), eval_examples=len(base.eval_data),
            optim=("peft create_loraplus_optimizer (torch AdamW)" if cfg.method == "lora-plus"
                   else self.training.get("optim", "adamw_torch")),
            device=str(tuned.model.device), method=cfg.method,
            init_lora_weights=init_name(lora_config.init_lora_weights) if lora_config else None,
            learning_rate=self.training["learning_rate"], precision=self.precision(base.model))
        self.record.verification.not_applicable = not_applicable_checks(
            cfg.method, tuned.init_lora_weights, cfg.quantization.method != "none")
        if cfg.verification.min_loss_decrease is None:
            self.record.verification.not_applicable["convergence"] = (
                "off: verification.min_loss_decrease is not set (loss_decrease_pct is recorded)")
        self.record.efficiency = parameter_report(tuned.model)
        self.tracker.summary({f"efficiency/{k}": v for k, v in self.record.efficiency.items()
                              if not isinstance(v, dict)})
        return tuned

    def build_trainer(self, data: RunData, base: Base, tuned: Tuned, plan: ResumePlan) -> None:
        """``transformers.Trainer`` with loraexp's verification and tracking callbacks (the
        strategy's checks among them)."""
        from transformers import Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from loraexp.config.methods import loraplus_optimizer
        from loraexp.run import callbacks as cb
        from loraexp.run.distributed import world_size

        cfg = self.cfg
        self.callbacks = {"non_finite": cb.NonFiniteCallback(),
                          **self.strategy.callbacks(tuned, plan.prior, plan.checkpoint, self.log),
                          "efficiency": cb.EfficiencyCallback(), "history": cb.HistoryCallback(self.log),
                          "final_checkpoint": cb.FinalCheckpointCallback()}
        if cfg.sweep.checkpoint_minutes and world_size() == 1:  # ranks' clocks would disagree on the step
            self.callbacks["timed_checkpoint"] = cb.TimedCheckpointCallback(60.0 * cfg.sweep.checkpoint_minutes)
        if self.until_step is not None:
            self.callbacks["rung_stop"] = cb.RungStopCallback(self.until_step)
        if self.guard is not None:
            self.callbacks["stop_on_signal"] = cb.StopOnSignalCallback(self.guard)
            self.training = {**self.training, "enable_jit_checkpoint": False}  # loraexp's handler does its job
        optimizer = (loraplus_optimizer(tuned.model, self.training, cfg.method_options)
                     if cfg.method == "lora-plus" else None)
        args = TrainingArguments(output_dir=str(self.checkpoints_dir), seed=cfg.seed, report_to="none",
                                 run_name=self.record.run_name, include_num_input_tokens_seen="non_padding",
                                 **self.training)
        self.trainer = Trainer(model=tuned.model, args=args, train_dataset=base.train_data,
                               eval_dataset=base.eval_data,
                               data_collator=data.task.collator(base.tokenizer, cfg.pad_to_multiple_of),
                               callbacks=[*self.callbacks.values(), *self.extra_callbacks],
                               optimizers=(optimizer, None),
                               **data.task.trainer_metrics(base.tokenizer))
        for printer in (ProgressCallback, PrinterCallback):
            if self.trainer.pop_callback(printer) and printer is ProgressCallback:
                self.trainer.add_callback(cb.QuietProgressCallback())

    def evaluate_base_model(self, data: RunData, base: Base, tuned: Tuned, plan: ResumePlan) -> None:
        """Evaluate the base model (:meth:`~loraexp.run.strategies.LoraStrategy.base_model_view`)
        before training, where that says something
        (:attr:`~loraexp.tasks.base.Task.scores_base_model`); a resumed attempt keeps the
        earlier attempt's figures."""
        if not (data.task.scores_base_model and self.cfg.evaluation.base_model):
            return
        if plan.checkpoint and plan.previous and plan.previous.base_eval:
            self.record.base_eval = plan.previous.base_eval
            return
        with self.strategy.base_model_view(tuned):
            self.record.base_eval = self.evaluate_as("base", data, base)

    def capture_probe_base(self, tuned: Tuned) -> None:
        """On rank 0, before training: the base model's hidden states on the first
        ``tracking.cka_probe_examples`` eval examples (:class:`~loraexp.run.representation_drift.DriftProbe`),
        for :meth:`measure_drift`; the random state is restored afterwards, so the measurement
        leaves the training run unchanged."""
        from loraexp.run.representation_drift import DriftProbe

        wanted = self.cfg.tracking.cka_probe_examples
        if self.main and wanted:
            self.drift = DriftProbe.from_loader(self.trainer.get_eval_dataloader(), wanted, tuned.model.device)
            self.drift.capture_base(tuned.model, self.strategy.base_model_view(tuned))

    def train_or_restore(self, tuned: Tuned, plan: ResumePlan) -> Trained:
        """``Trainer.train`` (from the checkpoint, if resuming), or -- when the checkpoint was
        saved at the last optimizer step -- load it instead
        (:meth:`~loraexp.run.strategies.LoraStrategy.restore`): resuming there would take one
        step past ``max_steps`` (transformers 5.23)."""
        from loraexp.model.quantization import weight_bytes
        from loraexp.run.checkpoints import checkpoint_state, is_final, optimizer_state_bytes

        completion = self.record.completion
        at_rung = False
        if plan.checkpoint and is_final(plan.checkpoint):
            self.strategy.restore(tuned, plan.checkpoint, self.callbacks, plan.prior)
            state = checkpoint_state(plan.checkpoint)
            completion.planned_steps, completion.trained_steps = state["max_steps"], state["global_step"]
            self.callbacks["efficiency"].result = {"optimizer_state_bytes": optimizer_state_bytes(plan.checkpoint)}
        else:
            with self.guard.training() if self.guard is not None else contextlib.nullcontext():
                self.trainer.train(resume_from_checkpoint=plan.checkpoint)
            if self.guard is not None:
                self.guard.raise_if_signalled()  # training stopped for it, after saving a checkpoint
            state = self.trainer.state
            completion.planned_steps, completion.trained_steps = state.max_steps, state.global_step
            at_rung = self.until_step is not None and self.until_step <= state.global_step < state.max_steps
        self.record.training_efficiency = {**self.callbacks["efficiency"].result, **weight_bytes(tuned.model)}
        return Trained(at_rung)

    def pause_at_rung(self, data: RunData, base: Base) -> None:
        """Training stopped at the pruning rung ``until_step`` (a checkpoint saved there):
        evaluate on the eval split (no ``predictions.npz``), append ``{"step", "eval"}`` to
        ``rungs`` and record the run ``paused``, naming the checkpoint the next rung continues."""
        from loraexp.run.checkpoints import last_complete_checkpoint

        self.record.rungs.append({"step": self.trainer.state.global_step, "eval": self.evaluate_as("eval", data, base)})
        self.collect_verification()
        self.record.last_checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=False)
        self.settle(STATUS_PAUSED)

    def evaluate(self, data: RunData, base: Base, tuned: Tuned) -> None:
        """Evaluate the trained model on the eval split, keeping its per-example scores in
        ``predictions.npz`` (:mod:`loraexp.results.statistics`); the trained model's drift-probe states
        are taken from this pass where it computes in the weights' precision
        (:meth:`~loraexp.run.representation_drift.DriftProbe.taken_from_evaluation`)."""
        args = self.trainer.args
        # the base states were taken in the weights' precision, by one module (no DataParallel replicas)
        same_pass = not (args.bf16 or args.fp16 or args.bf16_full_eval or args.fp16_full_eval or args.torch_compile
                         or args.n_gpu > 1)
        with (self.drift.taken_from_evaluation(tuned.model) if self.drift is not None and same_pass
              else contextlib.nullcontext()):
            self.record.eval = self.evaluate_as("eval", data, base, keep_examples=True)

    def measure_drift(self, tuned: Tuned) -> None:
        """Representation drift: linear CKA per layer between the base model's and the trained
        model's hidden states on the probe examples (docs/report.md, "Representation drift"),
        into ``metrics.json`` and the tracker. A failure is recorded, never raised."""
        if self.drift is None:
            return
        drift = self.record.representation_drift = self.drift.measure(tuned.model)
        if "error" in drift:
            logger.warning("run %s: representation drift not measured: %s", self.record.run_name, drift["error"])
            return
        self.tracker.table("representation_drift/cka", ["layer", "cka"], [[i, c] for i, c in enumerate(drift["cka"])],
                           line=("layer", "cka", "Linear CKA, base vs trained, per layer"))

    def save_adapter(self, data: RunData, base: Base, tuned: Tuned) -> None:
        """Keep the evaluated model's outputs on the check batches for the reload check, then
        save what the run trained (:meth:`~loraexp.run.strategies.LoraStrategy.save`: the
        adapter, converted by PEFT after a base-rewriting initialisation; full fine-tuning with
        ``export_merged``: the model) and record the final adapter statistics and rank metrics."""
        from loraexp.analysis.adapter_stats import aggregate_rank_metrics
        from loraexp.run.merge_check import model_logits

        if self.main and "reload" not in self.record.verification.not_applicable:
            self.reference_logits = model_logits(tuned.model.eval(), self.check_batches(data, tuned))
        exporting = self.cfg.export_merged and self.main
        export = (lambda model: self.save_merged(model, base.tokenizer)) if exporting else None
        self.strategy.save(tuned, self.store.adapter_dir, export)
        final = self.strategy.final_statistics(self.callbacks)
        if final is None:
            return
        self.record.lora_rank = aggregate_rank_metrics(final)
        self.record.adapter_statistics = final
        self.tracker.table("lora_rank/singular_values", ["module", "index", "singular_value"],
                           [[module, i + 1, sigma] for module, stats in final.items()
                            for i, sigma in enumerate(stats["singular_values"])],
                           line=("index", "singular_value", "Singular values of ΔW per module", "module"))

    def verify_merge(self, data: RunData, base: Base, tuned: Tuned) -> None:
        """The reload and merge-equivalence checks on rank 0
        (:meth:`~loraexp.run.strategies.LoraStrategy.verify`; nothing for full fine-tuning).
        With ``export_merged``, save the merged model to ``<run>/merged`` once the check passed."""
        task = data.task
        merged = self.strategy.verify(
            tuned, self.record.verification, self.store.adapter_dir, lambda: self.check_batches(data, tuned), task,
            lambda: load_base(self.cfg, task.task_type, task.num_labels, quantized=False)[0], self.reference_logits)
        if self.cfg.export_merged and self.main:
            model = self.strategy.exported(tuned, merged, self.record.verification)
            if model is not None:
                self.save_merged(model, base.tokenizer)

    def conclude(self) -> None:
        """The convergence figures (:func:`~loraexp.analysis.convergence.loss_decrease`, from
        ``history.jsonl`` on rank 0); then ``completed`` when every check passed and the run
        proved complete, else ``failed`` or ``failed_verification`` with the reasons."""
        from loraexp.analysis.convergence import loss_decrease
        from loraexp.run.run_state import prove_completion

        v = self.cfg.verification
        self.record.verification.convergence = (
            loss_decrease(self.store.read_history(), self.training.get("logging_steps", 500), v.min_loss_decrease)
            if self.main else ConvergenceCheck(passed=True, checked_on="rank 0"))
        self.collect_verification()
        prove_completion(self.record, self.store, self.cfg, adapter_on_disk=self.main)  # rank 0 saved the adapter
        verification, completion = self.record.verification, self.record.completion
        if completion.problems:
            self.settle(STATUS_FAILED, "not complete: " + "; ".join(completion.problems))
        elif verification.passed:
            self.settle(STATUS_COMPLETED)
        else:
            self.settle(STATUS_FAILED_VERIFICATION,
                        "; ".join(verification.failure_reasons()) or "a verification check failed")

    def fail(self, status: str, error: str, failed_step: int | None = None, trace: str | None = None,
             disk_full: bool = False) -> None:
        """Record a run that stopped on an exception. After a NaN/inf stop (``failed_step``),
        the record names the last good checkpoint and, for LoRA, the command that continues from
        it with a lower learning rate (``--warm-start``). A full disk removes the partial
        checkpoint and temp files first (the space the record needs), and the error starts with
        "disk full"."""
        from loraexp.run.checkpoints import last_complete_checkpoint

        self.collect_verification()
        if disk_full:
            last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=self.main)
            remove_temp_files(self.store.run_dir)
            self.store.release_space()
            error = f"disk full ({free_bytes(self.store.run_dir)} bytes free): {error}"
        self.record.traceback = trace
        if failed_step is not None:
            self.record.failed_step = failed_step
            self.record.last_checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=False)
            if self.record.last_checkpoint:
                error += self.strategy.recovery_hint(self.store.config_path, self.record.last_checkpoint,
                                                     self.cfg.sweep.name or self.store.run_dir.parent.name)
        self.settle(status, error)
        if trace:
            logger.error("run %s failed: %s", self.record.run_name, error)

    def interrupt(self, exc) -> None:
        """Record a run stopped by a signal (``exc``: :class:`~loraexp.run.preemption.Preempted`):
        status ``interrupted``, the signal, the stage it arrived in, the optimizer step reached
        and the checkpoint a rerun continues from (saved after the step in progress when the
        signal came during training)."""
        from loraexp.run.checkpoints import checkpoint_step, last_complete_checkpoint

        self.collect_verification()
        checkpoint = last_complete_checkpoint(self.checkpoints_dir, remove_incomplete=False)
        trained = self.trainer.state.global_step if self.trainer is not None else 0
        step = trained if self.stage == "train_or_restore" and trained else (
            checkpoint_step(checkpoint) if checkpoint else None)
        self.record.interruption = Interruption(signal=exc.signal_name, signal_number=exc.signum, step=step,
                                                checkpoint=checkpoint, during=self.stage)
        self.record.last_checkpoint = checkpoint
        self.settle(STATUS_INTERRUPTED, f"stopped by {exc.signal_name} during {self.stage}"
                    + (f" at optimizer step {step}" if step is not None else "")
                    + (f"; checkpoint {checkpoint}" if checkpoint else "; no checkpoint yet"))
        logger.warning("run %s: %s", self.record.run_name, self.record.error)

    def settle(self, status: str, error: str | None = None) -> None:
        """Set the record's status (and error): the one place a run's outcome is decided
        (``running`` is the record's default until then)."""
        self.record.status, self.record.error = status, error

    def close(self) -> None:
        """Write ``metrics.json`` and finish the tracker. Never raises: a full disk or a dead
        W&B connection is logged, and the record returned to the caller still says what
        happened."""
        try:
            self.store.write_record(self.record)
        except OSError as exc:
            if not self.write_record_on_full_disk(exc):
                logger.error("run %s: could not write %s: %s", self.record.run_name, self.store.metrics_path, exc)
                self.settle(STATUS_FAILED, f"{self.record.error or ''}; metrics.json not written: {exc}".lstrip("; "))
        self.store.release_space()
        try:
            self.tracker.summary(self.record.wandb_summary())
            self.tracker.finish(exit_code=0 if self.record.status in (STATUS_COMPLETED, STATUS_PAUSED) else 1)
        except Exception as exc:  # the tracker's own failure must not end the sweep
            logger.error("run %s: the tracker failed: %s", self.record.run_name, exc)

    # -- helpers -------------------------------------------------------------------------
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

    def precision(self, model) -> dict[str, Any]:
        """What the run trains in: the weights' dtype, the autocast, a quantized base's compute
        dtype, and the attention implementation transformers chose (``config._attn_implementation``)."""
        training, q = self.training, self.cfg.quantization
        return {"model_dtype": self.cfg.model_dtype,
                "autocast": "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else None,
                "compute_dtype": q.compute_dtype if q.method != "none" else None,
                "attn_implementation": getattr(model.config, "_attn_implementation", None)}

    def save_merged(self, model, tokenizer) -> None:
        """``save_pretrained`` ``model`` and the tokenizer to ``<run>/merged`` (``export_merged``)."""
        merged = self.store.run_dir / "merged"
        model.save_pretrained(str(merged))
        tokenizer.save_pretrained(str(merged))
        self.record.merged_dir = str(merged)

    @property
    def checkpoints_dir(self) -> Path:
        return self.store.run_dir / "checkpoints"

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One row of per-step metrics to ``history.jsonl`` and the tracker."""
        self.store.append_history({"step": step, **metrics})
        self.tracker.log(metrics, step=step)

    def evaluate_as(self, label: str, data: RunData, base: Base, keep_examples: bool = False) -> dict[str, Any]:
        """:func:`~loraexp.run.evaluation.evaluate_split` of the eval split under ``label``
        (``eval``, ``base``), ``predictions.npz`` named in the record when kept."""
        from loraexp.run.evaluation import evaluate_split

        metrics, predictions = evaluate_split(self.trainer, data.task, base.tokenizer, data.eval_split, base.eval_data,
                                              self.cfg.evaluation, self.store, label, keep_examples, self.main)
        if predictions:
            self.record.predictions_file = predictions
        return metrics

    def check_batches(self, data: RunData, tuned: Tuned) -> list[dict[str, Any]]:
        """The eval batches the reload and merge checks compare on
        (``verification.merge_eval_batches``, cut to the task's ``merge_check_rows`` and, by
        :func:`trim_padding`, to their longest row), without labels; taken once."""
        from loraexp.run.merge_check import trim_padding

        if self._check_batches is None:
            rows, count = data.task.merge_check_rows, self.cfg.verification.merge_eval_batches
            batches = []
            for batch in self.trainer.get_eval_dataloader():
                cut = trim_padding({k: v[:rows] for k, v in batch.items() if k != "labels"})
                batches.append({k: v.to(tuned.model.device) for k, v in cut.items()})
                if len(batches) == count:
                    break
            self._check_batches = batches
        return self._check_batches

    def collect_verification(self) -> None:
        """Take the frozen-base, gradient-flow and full-training results from their callbacks."""
        for name, key in (("frozen_base", "frozen"), ("grad_flow", "grad_flow"), ("full_training", "full_training")):
            callback = self.callbacks.get(key)
            if callback is not None:
                setattr(self.record.verification, name, callback.result)
