"""Run one experiment, or a sweep of them.

``run_experiment`` reads like a recipe: seed -> data -> model -> LoRA -> trainer -> train ->
evaluate -> save adapter -> verify merge -> record. ``run_sweep`` expands a config, checks
every run before any training (``preflight``), runs what is not completed yet, and writes
the sweep summary.
"""

from __future__ import annotations

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
from loraexp.analysis.merge import check_merge_equivalence
from loraexp.analysis.params import parameter_report
from loraexp.callbacks import (
    AdapterStatsCallback,
    EfficiencyCallback,
    FrozenBaseCallback,
    GradFlowCallback,
    HistoryCallback,
)
from loraexp.config import ExperimentConfig, build_config
from loraexp.errors import ConfigError, VerificationError
from loraexp.models import attach_lora, load_classifier, load_model_config, resolve_model
from loraexp.results import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_FAILED_VERIFICATION,
    STATUS_RUNNING,
    STATUS_SKIPPED,
    RunStore,
    write_sweep_summary,
)
from loraexp.sweep import expand, sweep_name
from loraexp.target_modules import matched_module_names, resolve_target_modules
from loraexp.tasks import get_task
from loraexp.tracking import make_tracker

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "wandb", "loraexp")


@dataclass
class RunResult:
    """Outcome of one run: ``status`` is completed | failed | failed_verification | skipped."""

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
# Pre-flight: everything that can be checked without training, for every run at once
# ---------------------------------------------------------------------------------------


def _check_targets(model_config, num_labels: int, target_modules) -> None:
    """Match target modules on a weightless (meta-device) copy of the model."""
    from transformers import AutoModelForSequenceClassification

    model_config.num_labels = num_labels
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(model_config)
    matched_module_names(skeleton, resolve_target_modules(target_modules, model_config.model_type))


def _check_output_dir(sweep_dir: Path, runs: list[tuple[str, ExperimentConfig]]) -> None:
    root = sweep_dir
    while not root.exists():
        root = root.parent
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"`output_dir` {str(sweep_dir.parent)!r} is not writable (checked {str(root)!r})")
    for name, cfg in runs:
        saved = RunStore(sweep_dir / name).read_config()
        if saved is None:
            continue
        try:
            saved_id = build_config(saved).run_id
        except ConfigError:
            saved_id = "unreadable"
        if saved_id != cfg.run_id:
            raise ConfigError(
                f"run directory {str(sweep_dir / name)!r} holds a different config (run_id {saved_id} != "
                f"{cfg.run_id}); set another `output_dir` or `sweep.name`, or delete that directory")


def preflight(runs: list[tuple[str, ExperimentConfig]], sweep_dir: Path) -> None:
    """Fail before any training, writing nothing, if any run cannot start: unknown task,
    missing data file, unloadable model, target modules matching nothing, output directory
    not writable or holding a different config under the same run name.

    Raises:
        ConfigError | DataError | ModelError: the first problem found.
    """
    checked: set = set()
    model_configs: dict[str, Any] = {}  # config.json read once per model
    for _, cfg in runs:
        task = get_task(cfg.task)
        key = (cfg.task, cfg.resolved_data_dir())
        if key not in checked:
            task.check_data(cfg.resolved_data_dir())
            checked.add(key)
        key = (cfg.model, repr(cfg.lora.get("target_modules")))
        if key not in checked:
            if cfg.model not in model_configs:
                model_configs[cfg.model] = load_model_config(cfg.model, cfg.trust_remote_code)
            _check_targets(model_configs[cfg.model], task.num_labels, cfg.lora.get("target_modules", "standard"))
            checked.add(key)
    _check_output_dir(sweep_dir, runs)


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------


def _eval_batches(trainer, count: int, device) -> list[dict[str, torch.Tensor]]:
    batches = []
    for batch in trainer.get_eval_dataloader():
        batches.append({k: v.to(device) for k, v in batch.items() if k != "labels"})
        if len(batches) == count:
            break
    return batches


def _select(dataset, limit: int | None, seed: int | None = None):
    if limit is None or limit >= len(dataset):
        return dataset
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    return dataset.select(range(limit))


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, run_name: str) -> RunResult:
    """Train, evaluate and verify one LoRA run; write its results under ``run_dir``.

    Never raises for a failing run: an exception is recorded in ``metrics.json`` with
    status ``failed`` (or ``failed_verification`` for a broken invariant), so a sweep goes on.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    store = RunStore(run_dir)
    started = time.time()
    resolved_config = cfg.to_dict()
    record: dict[str, Any] = {"status": STATUS_RUNNING, "run_id": cfg.run_id, "run_name": run_name,
                              "sweep": cfg.sweep.name, "config": resolved_config, "versions": package_versions()}
    store.write_config(resolved_config)
    store.write_metrics(record)
    store.start_history()
    tracker = make_tracker(cfg.tracking.wandb, project=cfg.tracking.project, entity=cfg.tracking.entity,
                           group=cfg.sweep.name or run_name, name=run_name, config=resolved_config,
                           directory=str(store.run_dir))

    def log(metrics: dict[str, Any], step: int) -> None:
        store.append_history({"step": step, **metrics})
        tracker.log(metrics, step=step)

    frozen = FrozenBaseCallback()
    grad_flow = GradFlowCallback(cfg.verification.grad_flow_steps)
    stats = AdapterStatsCallback(log, every=cfg.tracking.stats_every_steps)
    efficiency = EfficiencyCallback()
    verification: dict[str, Any] = {}
    try:
        # seed -> data
        set_seed(cfg.seed)
        task = get_task(cfg.task)
        data_dir = cfg.resolved_data_dir()
        train_split = _select(task.load_split("train", data_dir), cfg.max_train_samples, seed=cfg.data_seed)
        eval_split = _select(task.load_split("validation", data_dir), cfg.max_eval_samples)

        # model -> LoRA (seeded right before the factors are initialised)
        model, tokenizer = load_classifier(cfg.model, task.num_labels, cfg.trust_remote_code)
        train_data = task.tokenize(train_split, tokenizer, cfg.max_seq_length)
        eval_data = task.tokenize(eval_split, tokenizer, cfg.max_seq_length)
        peft_model, lora_config = attach_lora(model, cfg.lora, seed=cfg.seed)
        record["resolved"] = {
            "model_path": resolve_model(cfg.model), "model_type": model.config.model_type,
            "target_modules": lora_config.target_modules,
            "modules_to_save": sorted(set(lora_config.modules_to_save or [])),
            "data_dir": data_dir or f"hub:{task.hub_dataset}/{task.hub_config}",
            "train_examples": len(train_data), "eval_examples": len(eval_data),
        }
        record["efficiency"] = parameter_report(peft_model)
        tracker.summary({f"efficiency/{k}": v for k, v in record["efficiency"].items() if not isinstance(v, dict)})

        # trainer -> train
        args = TrainingArguments(output_dir=str(store.run_dir / "checkpoints"), seed=cfg.seed, report_to="none",
                                 run_name=run_name, include_num_input_tokens_seen="non_padding", **cfg.training)
        trainer = Trainer(
            model=peft_model, args=args, train_dataset=train_data, eval_dataset=eval_data,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=lambda p: task.compute_metrics(p.predictions, p.label_ids),
            callbacks=[frozen, grad_flow, stats, efficiency, HistoryCallback(log)],
        )
        trainer.train()
        verification.update(frozen.result, **grad_flow.result)
        record["training_efficiency"] = efficiency.result

        # evaluate -> save adapter
        eval_metrics = trainer.evaluate()
        record["eval"] = {k.removeprefix("eval_"): v for k, v in eval_metrics.items()}
        peft_model.save_pretrained(str(store.adapter_dir))
        record["lora_rank"] = aggregate_rank_metrics(stats.final)
        record["adapter_statistics"] = stats.final

        # verify merge (consumes the PEFT model: adapter saved above)
        batches = _eval_batches(trainer, cfg.verification.merge_eval_batches, peft_model.device)
        _, merge = check_merge_equivalence(peft_model, batches, atol=cfg.verification.merge_atol,
                                           latency_repeats=cfg.verification.latency_repeats)
        verification.update({k: v for k, v in merge.items() if k != "passed"}, merge_equivalence=merge["passed"])
        passed = bool(verification.get("frozen_base") and verification.get("grad_flow") and merge["passed"])
        verification["passed"] = passed
        record["status"] = STATUS_COMPLETED if passed else STATUS_FAILED_VERIFICATION
        if not passed:
            reasons = [r for r in (grad_flow.result.get("reason"), merge.get("reason")) if r]
            record["error"] = "; ".join(reasons) or "a verification check failed"
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
    for section, prefix in (("eval", "eval"), ("verification", "verification"),
                            ("training_efficiency", "training_efficiency"), ("lora_rank", "lora_rank")):
        for key, value in (record.get(section) or {}).items():
            if isinstance(value, (int, float, bool, str)):
                out[f"{prefix}/{key}"] = value
    return out


# ---------------------------------------------------------------------------------------
# A sweep
# ---------------------------------------------------------------------------------------


def run_sweep(cfg: ExperimentConfig, rerun: bool = False, progress: bool = True) -> SweepResult:
    """Expand ``cfg`` into runs, pre-flight them all, run each one not yet completed (or all
    with ``rerun``), and write ``summary.csv``/``summary.md`` in the sweep directory.

    Raises:
        ConfigError | DataError | ModelError: from :func:`preflight`, before anything is written.
    """
    from tqdm.auto import tqdm

    runs = expand(cfg)
    sweep_dir = Path(cfg.output_dir) / sweep_name(cfg)
    preflight(runs, sweep_dir)
    results = []
    bar = tqdm(runs, desc=f"sweep {sweep_name(cfg)}", unit="run", position=0, disable=not progress)
    for index, (name, run_cfg) in enumerate(bar, start=1):
        bar.set_postfix_str(f"run {index}/{len(runs)}: {name}")
        store = RunStore(sweep_dir / name)
        if store.is_completed() and not rerun:
            logger.info("skipping %s: already completed", name)
            results.append(RunResult(name, store.run_dir, STATUS_SKIPPED, store.read_metrics() or {}))
            continue
        results.append(run_experiment(run_cfg, store.run_dir, name))
    bar.close()
    markdown = write_sweep_summary(sweep_dir, [name for name, _ in runs])
    return SweepResult(sweep_dir, results, markdown)
