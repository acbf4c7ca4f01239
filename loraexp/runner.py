"""Run one experiment, or a sweep of them.

``run_experiment`` reads like a recipe: seed -> data -> model -> LoRA -> trainer -> train ->
evaluate -> save adapter -> verify merge -> record. ``run_sweep`` expands a config, checks
every run before any training (``preflight``), runs what is not completed yet, and writes
the sweep summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from loraexp.analysis.adapter_stats import aggregate_rank_metrics
from loraexp.analysis.merge import check_merge_equivalence, check_quantized_merge
from loraexp.analysis.params import parameter_report
from loraexp.callbacks import (
    AdapterStatsCallback,
    CheckpointRecordCallback,
    EfficiencyCallback,
    FrozenBaseCallback,
    GradFlowCallback,
    HistoryCallback,
    NonFiniteCallback,
)
from loraexp.checkpoints import checkpoint_step, is_final, last_complete_checkpoint, read_verification
from loraexp.config import ExperimentConfig, apply_overrides
from loraexp.distributed import broadcast_from_main, is_main_process, needs_cpu_ddp, world_size
from loraexp.errors import NonFiniteError, VerificationError
from loraexp.models import CAUSAL_LM, attach_lora, load_model, load_model_config, model_kind, resolve_model
from loraexp.preflight import preflight
from loraexp.quantization import (
    DTYPE_BY_NAME,
    bnb_config,
    default_optimizer,
    prepare_for_training,
    weight_bytes,
)
from loraexp.results import (
    STATUS_BUSY,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_FAILED_VERIFICATION,
    STATUS_RUNNING,
    STATUS_SKIPPED,
    RunStore,
    write_sweep_summary,
)
from loraexp.sweep import expand, run_name, sweep_name
from loraexp.tasks import get_task, task_kind
from loraexp.tracking import make_tracker

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "wandb", "loraexp")


@dataclass
class RunResult:
    """Outcome of one run: ``status`` is completed | failed | failed_verification | skipped
    (completed earlier) | busy (being trained by another process)."""

    run_name: str
    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepResult:
    """All runs of a sweep, its directory and the summary table (markdown)."""

    sweep_dir: Path
    runs: list[RunResult]
    summary_markdown: str

    @property
    def all_completed(self) -> bool:
        return all(r.status in (STATUS_COMPLETED, STATUS_SKIPPED) for r in self.runs)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------


def _eval_batches(trainer, count: int, device, max_rows: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` eval batches without labels, each cut to ``max_rows`` rows (a
    causal LM's ``(batch, seq, vocab)`` logits are large)."""
    batches = []
    for batch in trainer.get_eval_dataloader():
        batches.append({k: v[:max_rows].to(device) for k, v in batch.items() if k != "labels"})
        if len(batches) == count:
            break
    return batches


def _select(dataset, limit: int | None, seed: int | None = None):
    if limit is None or limit >= len(dataset):
        return dataset
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    return dataset.select(range(limit))


def _load_base(cfg: ExperimentConfig, kind: str, num_labels: int, quantized: bool = True):
    """``(model, tokenizer)``: the base in ``cfg.model_dtype``, quantized per ``cfg.quantization``
    (and prepared for k-bit training) unless ``quantized`` is False."""
    quantization = bnb_config(cfg.quantization) if quantized else None
    model, tokenizer = load_model(cfg.model, kind, num_labels, cfg.trust_remote_code,
                                  dtype=DTYPE_BY_NAME[cfg.model_dtype], quantization_config=quantization)
    if quantization is not None:
        model = prepare_for_training(model, cfg.quantization)
    return model, tokenizer


def _evaluate(trainer, task, tokenizer, generation_split, cfg: ExperimentConfig, store: RunStore,
              label: str) -> dict[str, Any]:
    """``Trainer.evaluate`` metrics without the ``eval_`` prefix (+ perplexity for a causal
    LM), and the task's generation metrics, whose per-question records go to
    ``generations_<label>.jsonl``."""
    metrics = trainer.evaluate(metric_key_prefix=label)
    out = {k.removeprefix(f"{label}_"): v for k, v in metrics.items()}
    if task.kind == CAUSAL_LM:
        out = task.add_perplexity(out)
    if task.generation_eval is not None:
        e = cfg.evaluation
        generated, records = task.generation_eval(trainer.model, tokenizer, generation_split, e.generation_samples,
                                                  e.max_new_tokens, e.generation_batch_size)
        out.update(generated)
        store.write_jsonl(f"generations_{label}.jsonl", records)
    return out


def _verify_merge(cfg: ExperimentConfig, peft_model, trainer, store: RunStore, kind: str, num_labels: int):
    """Merge-equivalence check (consumes ``peft_model``); a quantized base is merged into a
    full-precision reload (:func:`check_quantized_merge`). Returns ``(merged, result)``."""
    v = cfg.verification
    max_rows = 8 if kind == CAUSAL_LM else None
    batches = _eval_batches(trainer, v.merge_eval_batches, peft_model.device, max_rows)
    if cfg.quantization.method == "none":
        space = v.merge_space if v.merge_space != "auto" else ("probs" if kind == CAUSAL_LM else "logits")
        return check_merge_equivalence(peft_model, batches, atol=v.merge_atol, latency_repeats=v.latency_repeats,
                                       space=space)
    full_precision, _ = _load_base(cfg, kind, num_labels, quantized=False)
    return check_quantized_merge(peft_model, full_precision.to(peft_model.device), store.adapter_dir, batches,
                                 atol=v.quantized_merge_atol, latency_repeats=v.latency_repeats)


def _training_settings(cfg: ExperimentConfig, kind: str) -> dict[str, Any]:
    """``cfg.training`` plus what loraexp adds unless the config sets it: paged 8-bit AdamW for
    a quantized base on CUDA; ``use_cpu`` for DDP on CPU (else transformers runs each process
    alone); for a classifier, no token-count loss rescaling -- its loss is a per-example mean,
    and the Trainer's rescaling (loss x processes under DDP, meant for losses summed over
    tokens) would double it, eval loss included (transformers issue #35078)."""
    training = dict(cfg.training)
    optimizer = default_optimizer(cfg.quantization, torch.cuda.is_available())
    if optimizer:
        training.setdefault("optim", optimizer)
    if needs_cpu_ddp():
        training.setdefault("use_cpu", True)
    if kind != CAUSAL_LM:
        training.setdefault("average_tokens_across_devices", False)
    return training


def _restore_final_checkpoint(peft_model, checkpoint: str, prior: dict, frozen, stats) -> None:
    """Load the adapter (and trained head) of a checkpoint saved at the last optimizer step
    into ``peft_model`` (``peft.set_peft_model_state_dict``) instead of calling
    ``Trainer.train``, and take the frozen-base result recorded with it.

    Raises:
        VerificationError: the checkpoint's adapter does not fit the model.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = set_peft_model_state_dict(peft_model, load_file(Path(checkpoint) / "adapter_model.safetensors"))
    if loaded.unexpected_keys:
        raise VerificationError(f"checkpoint {checkpoint} holds tensors the model lacks: {loaded.unexpected_keys[:3]}")
    frozen.result = prior.get("frozen_base") or {
        "frozen_base": False, "reason": f"checkpoint {checkpoint} has no verification record"}
    stats.finish(checkpoint_step(checkpoint), peft_model)


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, run_name: str, resume: bool = False) -> RunResult:
    """Train, evaluate and verify one LoRA run; write its results under ``run_dir``.

    With ``resume``, training continues from the last complete Trainer checkpoint in
    ``run_dir/checkpoints`` (adapter, optimizer, scheduler and RNG state; needs
    ``training.save_strategy: steps``); without one the run starts over. A checkpoint cut
    short by a kill is skipped (:func:`~loraexp.checkpoints.last_complete_checkpoint`).

    Under ``accelerate launch`` every process trains (DDP); only rank 0 writes files, logs to
    W&B and runs the merge check.

    Never raises for a failing run: an exception is recorded in ``metrics.json`` with
    status ``failed`` (or ``failed_verification`` for a broken invariant), so a sweep goes on.
    A NaN/inf loss or gradient stops training at that step; the record holds ``failed_step``
    and ``last_checkpoint`` (the last good one, kept on disk).
    """
    from transformers import Trainer, TrainingArguments, set_seed

    main = is_main_process()
    store = RunStore(run_dir, writable=main)
    started = time.time()
    resolved_config = cfg.to_dict()
    previous = store.read_metrics() or {}
    checkpoints_dir = store.run_dir / "checkpoints"
    checkpoint = last_complete_checkpoint(checkpoints_dir, remove_incomplete=main) if resume else None
    record: dict[str, Any] = {"status": STATUS_RUNNING, "run_id": cfg.run_id, "run_name": run_name,
                              "sweep": cfg.sweep.name, "config": resolved_config, "versions": package_versions(),
                              "world_size": world_size()}
    if checkpoint:
        record["resumed_from"] = checkpoint
    logger.info("training run %s in process %d%s", run_name, os.getpid(),
                f", resuming from {checkpoint}" if checkpoint else "")
    store.write_config(resolved_config)
    store.write_metrics(record)
    store.start_history(keep_until_step=checkpoint_step(checkpoint) if checkpoint else None)
    tracker = make_tracker(cfg.tracking.wandb, project=cfg.tracking.project, entity=cfg.tracking.entity,
                           group=cfg.sweep.name or run_name, name=run_name, config=resolved_config,
                           directory=str(store.run_dir), is_main_process=main)

    def log(metrics: dict[str, Any], step: int) -> None:
        store.append_history({"step": step, **metrics})
        tracker.log(metrics, step=step)

    prior = read_verification(checkpoint) if checkpoint else {}  # what the attempt that saved it had verified
    frozen = FrozenBaseCallback()
    grad_flow = GradFlowCallback(cfg.verification.grad_flow_steps, prior=prior.get("grad_flow"))
    stats = AdapterStatsCallback(log, every=cfg.tracking.stats_every_steps)
    efficiency = EfficiencyCallback()
    non_finite = NonFiniteCallback()
    verification: dict[str, Any] = {}
    try:
        # seed -> data (the task's form follows the model: verbalizer sst2 on a causal LM)
        set_seed(cfg.seed)
        kind = task_kind(cfg.task, model_kind(load_model_config(cfg.model, cfg.trust_remote_code)))
        task = get_task(cfg.task, kind)
        data_dir = cfg.resolved_data_dir()
        train_split = _select(task.load_split("train", data_dir), cfg.max_train_samples, seed=cfg.data_seed)
        eval_split = task.load_split("validation", data_dir)

        # model (quantized base if asked) -> LoRA (seeded right before the factors are initialised)
        model, tokenizer = _load_base(cfg, kind, task.num_labels)
        train_data = task.tokenize(train_split, tokenizer, cfg.max_seq_length)
        eval_data = _select(task.tokenize(eval_split, tokenizer, cfg.max_seq_length), cfg.max_eval_samples)
        peft_model, lora_config = attach_lora(model, cfg.lora, seed=cfg.seed, kind=kind)
        training = _training_settings(cfg, kind)
        record["resolved"] = {
            "model_path": resolve_model(cfg.model), "model_type": model.config.model_type, "objective": kind,
            "target_modules": lora_config.target_modules,
            "modules_to_save": sorted(set(lora_config.modules_to_save or [])),
            "data_dir": data_dir or f"hub:{task.hub_dataset}/{task.hub_config}",
            "train_examples": len(train_data), "eval_examples": len(eval_data),
            "optim": training.get("optim", "adamw_torch"), "device": str(peft_model.device),
        }
        record["efficiency"] = parameter_report(peft_model)
        memory = weight_bytes(peft_model)
        tracker.summary({f"efficiency/{k}": v for k, v in record["efficiency"].items() if not isinstance(v, dict)})

        # trainer -> (base model evaluation) -> train
        args = TrainingArguments(output_dir=str(checkpoints_dir), seed=cfg.seed, report_to="none",
                                 run_name=run_name, include_num_input_tokens_seen="non_padding", **training)
        trainer = Trainer(
            model=peft_model, args=args, train_dataset=train_data, eval_dataset=eval_data,
            data_collator=task.collator(tokenizer), **task.trainer_metrics(tokenizer),
            callbacks=[non_finite, frozen, grad_flow, CheckpointRecordCallback(frozen, grad_flow), stats, efficiency,
                       HistoryCallback(log)],
        )
        if kind == CAUSAL_LM and cfg.evaluation.base_model:
            if checkpoint and previous.get("base_eval"):
                record["base_eval"] = previous["base_eval"]
            else:
                with peft_model.disable_adapter():
                    record["base_eval"] = _evaluate(trainer, task, tokenizer, eval_split, cfg, store, "base")
        if checkpoint and is_final(checkpoint):  # training had ended; the kill came after the last save
            _restore_final_checkpoint(peft_model, checkpoint, prior, frozen, stats)
        else:
            trainer.train(resume_from_checkpoint=checkpoint)
        verification.update(frozen.result, **grad_flow.result)
        if prior:
            verification["carried_from_checkpoint"] = checkpoint_step(checkpoint)
        record["training_efficiency"] = {**efficiency.result, **memory}

        # evaluate -> save adapter
        record["eval"] = _evaluate(trainer, task, tokenizer, eval_split, cfg, store, "eval")
        if main:
            peft_model.save_pretrained(str(store.adapter_dir))  # safetensors
        record["lora_rank"] = aggregate_rank_metrics(stats.final)
        record["adapter_statistics"] = stats.final

        # verify merge on rank 0 (consumes the PEFT model: adapter saved above) -> optional export
        if main:
            merged, merge = _verify_merge(cfg, peft_model, trainer, store, kind, task.num_labels)
        else:
            merged, merge = None, {"passed": True, "checked_on": "rank 0"}
        verification.update({k: v for k, v in merge.items() if k != "passed"}, merge_equivalence=merge["passed"])
        if main and cfg.export_merged and merge["passed"]:
            merged.save_pretrained(str(store.run_dir / "merged"))
            tokenizer.save_pretrained(str(store.run_dir / "merged"))
            record["merged_dir"] = str(store.run_dir / "merged")
        passed = bool(verification.get("frozen_base") and verification.get("grad_flow") and merge["passed"])
        verification["passed"] = passed
        record["status"] = STATUS_COMPLETED if passed else STATUS_FAILED_VERIFICATION
        if not passed:
            reasons = [r for r in (grad_flow.result.get("reason"), merge.get("reason")) if r]
            record["error"] = "; ".join(reasons) or "a verification check failed"
    except NonFiniteError as exc:
        verification.update(frozen.result, **grad_flow.result, passed=False)
        record.update(status=STATUS_FAILED, error=str(exc), failed_step=exc.step,
                      last_checkpoint=last_complete_checkpoint(checkpoints_dir, remove_incomplete=False))
    except VerificationError as exc:
        verification.update(frozen.result, **grad_flow.result, passed=False)
        record.update(status=STATUS_FAILED_VERIFICATION, error=str(exc))
    except Exception as exc:  # a failing run is recorded and the sweep goes on
        logger.error("run %s failed: %s", run_name, exc)
        record.update(status=STATUS_FAILED, error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    record["verification"] = verification
    record["wall_seconds"] = time.time() - started
    store.write_metrics(record)
    tracker.summary(_summary_metrics(record))
    tracker.finish(exit_code=0 if record["status"] == STATUS_COMPLETED else 1)
    return RunResult(run_name, store.run_dir, record["status"], record)


def _summary_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """Flat W&B summary keys (DESIGN.md namespaces) from a run record."""
    out: dict[str, Any] = {"status": record["status"]}
    for section, prefix in (("eval", "eval"), ("base_eval", "base_eval"), ("verification", "verification"),
                            ("training_efficiency", "training_efficiency"), ("lora_rank", "lora_rank")):
        for key, value in (record.get(section) or {}).items():
            if isinstance(value, (int, float, bool, str)):
                out[f"{prefix}/{key}"] = value
    return out


# ---------------------------------------------------------------------------------------
# A sweep
# ---------------------------------------------------------------------------------------


def run_unless_done(name: str, cfg: ExperimentConfig, sweep_dir: Path, rerun: bool = False,
                    resume: bool = False) -> RunResult:
    """Run ``cfg`` as ``<sweep_dir>/<name>`` unless it is already completed (status
    ``skipped``; ``rerun`` runs it again) or another process holds its lock (status ``busy``).

    The run is trained while holding ``<run>/.lock``, so processes sharing ``sweep_dir``
    (several workers, a rerun started by mistake) never train one run twice at once. Under
    ``accelerate launch`` rank 0 decides and every rank follows.
    """
    main = is_main_process()
    store = RunStore(sweep_dir / name, writable=main)
    with store.lock() if main else contextlib.nullcontext(True) as locked:
        decision = "busy" if not locked else ("skip" if store.is_completed() and not rerun else "run")
        decision = broadcast_from_main(decision)
        if decision == "run":
            return run_experiment(cfg, store.run_dir, name, resume=resume)
    if decision == "busy":
        logger.warning("skipping %s: another process is training it", name)
        return RunResult(name, store.run_dir, STATUS_BUSY, store.read_metrics() or {})
    logger.info("skipping %s: already completed", name)
    return RunResult(name, store.run_dir, STATUS_SKIPPED, store.read_metrics() or {})


def run_sweep(cfg: ExperimentConfig, rerun: bool = False, progress: bool = True, resume: bool = False) -> SweepResult:
    """Expand ``cfg`` into runs, pre-flight them all, run each one not yet completed (or all
    with ``rerun``; see :func:`run_unless_done`), and write ``summary.csv``/``summary.md`` in
    the sweep directory (rank 0 only). With ``resume``, an unfinished run continues from its
    last checkpoint.

    Raises:
        ConfigError | DataError | ModelError: from :func:`preflight`, before anything is written.
    """
    from tqdm.auto import tqdm

    runs = expand(cfg)
    sweep_dir = Path(cfg.output_dir) / sweep_name(cfg)
    preflight(runs, sweep_dir)
    results = []
    bar = tqdm(runs, desc=f"sweep {sweep_name(cfg)}", unit="run", position=0,
               disable=not progress or not is_main_process())
    for index, (name, run_cfg) in enumerate(bar, start=1):
        bar.set_postfix_str(f"run {index}/{len(runs)}: {name}")
        results.append(run_unless_done(name, run_cfg, sweep_dir, rerun=rerun, resume=resume))
    bar.close()
    markdown = write_sweep_summary(sweep_dir, [name for name, _ in runs]) if is_main_process() else ""
    return SweepResult(sweep_dir, results, markdown)


def _trial_config(base: ExperimentConfig, overrides: dict[str, Any]) -> tuple[str, ExperimentConfig, Path]:
    """``(run name, run config, sweep dir)`` of the run ``overrides`` pick from ``base``'s sweep."""
    cfg = apply_overrides(base, {**overrides, "sweep.mode": "single", "sweep.ablation_type": None,
                                 "sweep.name": sweep_name(base)})
    name = next((n for n, c in expand(base) if c.run_id == cfg.run_id), run_name(cfg))
    return name, cfg, Path(base.output_dir) / sweep_name(base)


def trial_run_store(base: ExperimentConfig, overrides: dict[str, Any]) -> RunStore:
    """The (read-only) store of the run ``overrides`` pick from ``base``'s sweep."""
    name, _, sweep_dir = _trial_config(base, overrides)
    return RunStore(sweep_dir / name, writable=False)


def run_trial(base: ExperimentConfig, overrides: dict[str, Any], resume: bool = True) -> RunResult:
    """One run of the sweep ``base`` describes, chosen by an external scheduler (a W&B agent,
    an Optuna worker): ``base`` with ``overrides`` applied, named as :func:`run_sweep` would
    name it, pre-flighted, run unless done (continuing from its last checkpoint), and the
    sweep summary rewritten under its lock.

    Raises:
        ConfigError | DataError | ModelError: bad overrides or a run that cannot start.
    """
    name, cfg, sweep_dir = _trial_config(base, overrides)
    preflight([(name, cfg)], sweep_dir)
    result = run_unless_done(name, cfg, sweep_dir, resume=resume)
    if is_main_process():
        names = [n for n, _ in expand(base)]
        present = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
        write_sweep_summary(sweep_dir, names + [n for n in present if n not in names])
    return result
