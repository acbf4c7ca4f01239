"""Run a sweep: expand a config into runs, check them all before any training (preflight),
run each one not completed yet (:func:`loraexp.run.recipe.run_experiment`), write the summary.

The console gets one line when a run starts and one when it ends (``logging`` at INFO;
:mod:`loraexp.cli.console` shows them between the progress bars).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.config.load import apply_overrides
from loraexp.config.precision import resolve_device_defaults
from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError, DiskFullError
from loraexp.results.comparison import Settings
from loraexp.results.naming import run_name, sweep_name
from loraexp.results.record import (
    STATUS_BUSY,
    STATUS_COMPLETED,
    STATUS_INTERRUPTED,
    STATUS_PAUSED,
    STATUS_PRUNED,
    STATUS_SKIPPED,
    RunRecord,
    RunResult,
)
from loraexp.results.storage import RunStore, free_bytes, is_disk_full
from loraexp.results.summary import write_sweep_summary
from loraexp.run.distributed import broadcast_from_main, is_main_process
from loraexp.sweep.expand import expand
from loraexp.sweep.metric import sweep_metric

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """All runs of a sweep, its directory and the summary rows (one per run, every column of
    :data:`loraexp.results.summary.COLUMNS`); ``metric``/``direction``: the sweep's objective."""

    sweep_dir: Path
    runs: list[RunResult]
    rows: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "accuracy"
    direction: str = "maximize"
    comparison: Any = None  # loraexp.results.comparison.Comparison: configurations over seeds, baseline, verdicts

    @property
    def all_completed(self) -> bool:
        """Every run ended as planned: completed (now or earlier) or pruned by the sweep's pruner."""
        return all(r.status in (STATUS_COMPLETED, STATUS_SKIPPED, STATUS_PRUNED) for r in self.runs)


def outcome_line(record: RunRecord | None, status: str, metric: str) -> str:
    """``completed · accuracy 0.8521 · 152 s · verification passed`` (what the console shows
    when a run ends)."""
    parts = [status]
    if record is not None:
        if metric in record.eval:
            parts.append(f"{metric} {record.eval[metric]:.4g}")
        if record.wall_seconds is not None:
            parts.append(f"{record.wall_seconds:.0f} s")
        if record.verification.observed and status not in (STATUS_PAUSED, STATUS_PRUNED):  # checked at the end
            parts.append("verification " + ("passed" if record.verification.passed else "failed"))
        if record.error and record.status != STATUS_COMPLETED:
            parts.append(record.error.splitlines()[0][:160])
    return " · ".join(parts)


def run_unless_done(name: str, cfg: ExperimentConfig, sweep_dir: Path, rerun: bool = False, resume: bool = False,
                    extra_callbacks: Sequence[Any] = (), label: str | None = None,
                    until_step: int | None = None) -> RunResult:
    """Run ``cfg`` as ``<sweep_dir>/<name>`` unless it is already completed (status
    ``skipped``; ``rerun`` runs it again) or another process holds its lock (status ``busy``).

    The run is trained while holding ``<run>/.lock``, so processes sharing ``sweep_dir``
    (several workers, a rerun started by mistake) never train one run twice at once. Inside
    the lock, :func:`loraexp.run.run_state.decide` checks what is on disk: the directory's config
    identity, the data fingerprint and the completed run's files. Under ``accelerate launch``
    rank 0 decides and every rank follows. ``label`` (default: the name) starts the console
    line logged when the run starts. ``until_step``: train only up to that pruning rung
    (:func:`loraexp.run.recipe.run_experiment`).

    Raises:
        ConfigError: the run directory holds another config, or a result trained on data
            files that changed since (:func:`loraexp.run.run_state.decide`).
        OSError: a data file cannot be read for its fingerprint, or the run directory or its
            lock file cannot be created (a full disk: the sweep turns it into DiskFullError).
        Preempted: a signal arrived while the run's record was written (the record is on disk).
    """
    from loraexp.run.recipe import run_experiment
    from loraexp.run.run_state import decide
    from loraexp.tasks.fingerprint import data_fingerprint

    main = is_main_process()
    store = RunStore(sweep_dir / name, writable=main)
    with store.lock() if main else contextlib.nullcontext(True) as locked:
        if not locked:
            decision = "busy"
        elif main:
            try:
                verdict = decide(store, cfg, data_fingerprint(cfg.task, cfg.resolved_data_dir()), rerun=rerun)
            except ConfigError as exc:  # every rank must hear of it, or the others wait forever
                decision = f"refused:{exc}"
            else:
                decision = verdict.action
                if verdict.reason:
                    logger.warning("%s: %s; training it again", label or name, verdict.reason)
        else:
            decision = "run"
        decision = broadcast_from_main(decision)
        if decision.startswith("refused:"):
            raise ConfigError(decision.removeprefix("refused:"))
        if decision == "run":
            logger.info("%s: started", label or name)
            return run_experiment(cfg, store.run_dir, name, resume=resume and not rerun,
                                  extra_callbacks=extra_callbacks, start_over=rerun, until_step=until_step)
    status = STATUS_BUSY if decision == "busy" else STATUS_SKIPPED
    return RunResult(name, store.run_dir, status, store.read_record())


def run_sweep(cfg: ExperimentConfig, rerun: bool = False, progress: bool = True, resume: bool = False,
              extra_callbacks: Sequence[Any] = ()) -> SweepResult:
    """Expand ``cfg`` into runs, pre-flight them all, run each one not yet completed (or all
    with ``rerun``; see :func:`run_unless_done`), and write ``summary.csv``/``summary.md`` in
    the sweep directory (rank 0 only). With ``resume``, an unfinished run continues from its
    last checkpoint (an ``interrupted`` one always does). ``extra_callbacks`` go to every run's
    Trainer.

    SIGTERM and SIGINT are handled (:mod:`loraexp.run.preemption`): the run in progress saves a
    checkpoint after its current optimizer step and is recorded ``interrupted``, the summary is
    written and :class:`~loraexp.run.preemption.Preempted` is raised. A full disk stops the sweep
    after the run that hit it is recorded.

    Raises:
        ConfigError | DataError | ModelError: from :func:`~loraexp.sweep.preflight.preflight`,
            before anything is written; or a run directory found to hold another config (a
            concurrent sweep of the same name) inside its lock.
        Preempted: a signal stopped the sweep (summary written).
        DiskFullError: the disk holding the sweep is full (summary written if it fit).
    """
    from loraexp.run import preemption
    from loraexp.sweep.preflight import preflight

    runs = expand(cfg)
    sweep_dir = Path(cfg.output_dir) / sweep_name(cfg)
    with preemption.guard():
        preflight(runs, sweep_dir, rerun=rerun)
        metric, direction = sweep_metric(cfg)
        results: list[RunResult] = []
        run_all = _run_pruned if cfg.sweep.pruner != "none" else _run_each
        try:
            run_all(runs, sweep_dir, results, metric, rerun=rerun, resume=resume, progress=progress,
                    extra_callbacks=extra_callbacks, cfg=cfg)
        except (preemption.Preempted, DiskFullError):
            _write_summary(cfg, sweep_dir, runs, metric, best_effort=True)
            raise
        except OSError as exc:  # between runs: a run's lock file or directory
            if not is_disk_full(exc):
                raise
            _write_summary(cfg, sweep_dir, runs, metric, best_effort=True)
            raise DiskFullError(str(sweep_dir), free_bytes(sweep_dir)) from exc
        if not is_main_process():
            return SweepResult(sweep_dir, results, [], metric, direction)
        _check_identities(runs, sweep_dir)
        try:
            summary = _write_summary(cfg, sweep_dir, runs, metric)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise DiskFullError(str(sweep_dir), free_bytes(sweep_dir)) from exc
    return SweepResult(sweep_dir, results, summary.rows, metric, direction, summary.comparison)


def _run_each(runs: list[tuple[str, ExperimentConfig]], sweep_dir: Path, results: list[RunResult], metric: str,
              rerun: bool, resume: bool, progress: bool, extra_callbacks: Sequence[Any],
              cfg: ExperimentConfig | None = None) -> None:
    """Run the sweep's runs in order, appending each result to ``results``; stop at a run
    interrupted by a signal (raising :class:`~loraexp.run.preemption.Preempted`) or failed for a
    full disk (raising :class:`~loraexp.errors.DiskFullError`)."""
    from tqdm.auto import tqdm

    bar = tqdm(runs, desc=f"sweep {sweep_dir.name}", unit="run", position=0, dynamic_ncols=True,
               disable=not progress or not is_main_process())
    try:
        for index, (name, run_cfg) in enumerate(bar, start=1):
            where = f"[{index}/{len(runs)}] {name}"
            result = run_unless_done(name, run_cfg, sweep_dir, rerun=rerun, resume=resume,
                                     extra_callbacks=extra_callbacks, label=where)
            results.append(result)
            report_outcome(result, where, sweep_dir, metric)
    finally:
        bar.close()


def report_outcome(result: RunResult, where: str, sweep_dir: Path, metric: str) -> None:
    """Log how a run ended; stop the sweep (raise) when a signal interrupted it or the disk is full.

    Raises:
        Preempted: the run was interrupted by SIGTERM/SIGINT (its checkpoint is saved).
        DiskFullError: the run failed for a full disk.
    """
    from loraexp.run.preemption import Preempted

    if result.status == STATUS_SKIPPED:
        logger.info("%s: skipped, already completed", where)
    elif result.status == STATUS_BUSY:
        logger.warning("%s: skipped, another process is training it", where)
    else:
        logger.info("%s: %s", where, outcome_line(result.record, result.status, metric))
    if result.status == STATUS_INTERRUPTED:
        raise Preempted(result.record.interruption.signal_number)
    if result.record is not None and (result.record.error or "").startswith("disk full"):
        raise DiskFullError(str(sweep_dir), free_bytes(sweep_dir), result.run_name)


def _run_pruned(runs: list[tuple[str, ExperimentConfig]], sweep_dir: Path, results: list[RunResult], metric: str,
                rerun: bool, resume: bool, progress: bool, extra_callbacks: Sequence[Any],
                cfg: ExperimentConfig) -> None:
    """The sweep's configurations as trials of an in-memory Optuna study with
    ``cfg.sweep.pruner`` (:mod:`loraexp.sweep.pruning`), one after another, each trained rung by
    rung; ``results`` gets each run's latest result. A rerun replays the recorded rungs.

    Raises:
        ConfigError: fewer than two configurations the pruner may stop.
    """
    import optuna

    from loraexp.sweep import pruning

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # loraexp logs each decision itself
    study = optuna.create_study(direction=sweep_metric(cfg)[1], pruner=pruning.make_pruner(cfg))
    confs = pruning.configurations(runs, cfg.sweep.baseline)
    pruning.check_prunable(confs, cfg)  # before any training
    confs = pruning.trial_order(confs, cfg.seed)
    steps = pruning.rung_steps(cfg.training["max_steps"], cfg.sweep.reduction_factor, cfg.sweep.min_resource)
    logger.info("%s: %d configurations, %s at rungs %s optimizer steps", sweep_dir.name, len(confs),
                cfg.sweep.pruner, ", ".join(map(str, steps)))
    for index, conf in enumerate(confs, start=1):
        where = f"[{index}/{len(confs)}]"

        def advance(name: str, run_cfg: ExperimentConfig, until_step: int | None, start_over: bool,
                    where: str = where) -> RunResult:
            label = f"{where} {name}" + (f" (to step {until_step})" if until_step else "")
            result = run_unless_done(name, run_cfg, sweep_dir, rerun=start_over, resume=True,
                                     extra_callbacks=extra_callbacks, label=label, until_step=until_step)
            report_outcome(result, label, sweep_dir, metric)
            return result

        trial = study.ask()
        outcome = pruning.run_configuration(trial, conf, cfg, sweep_dir, metric, advance, rerun=rerun,
                                            label=f"{where} ")
        pruning.tell(study, trial, outcome)
        results.extend(outcome.results)


def _check_identities(runs: list[tuple[str, ExperimentConfig]], sweep_dir: Path) -> None:
    """After the runs: every run directory still holds this sweep's config. One another
    process trained meanwhile (``busy``: a concurrent sweep of the same name with other
    settings) is not this sweep's result.

    Raises:
        ConfigError: naming the run directories that hold another config.
    """
    from loraexp.run.run_state import identity_conflict

    conflicts = [c for name, run_cfg in runs if (c := identity_conflict(RunStore(sweep_dir / name), run_cfg))]
    if conflicts:
        raise ConfigError(conflicts)


def _write_summary(cfg: ExperimentConfig, sweep_dir: Path, runs: list[tuple[str, ExperimentConfig]], metric: str,
                   best_effort: bool = False):
    """Write ``summary.csv``/``summary.md`` of the sweep on rank 0 and return its
    :class:`~loraexp.results.summary.SweepSummary` (None on other ranks). With ``best_effort`` (the
    sweep is stopping for a signal or a full disk), a failure is logged and None returned.

    Raises:
        OSError | filelock.Timeout: without ``best_effort``, the summary could not be written.
    """
    if not is_main_process():
        return None
    try:
        return write_sweep_summary(sweep_dir, [name for name, _ in runs], Settings.from_config(cfg, metric))
    except Exception as exc:
        if not best_effort:
            raise
        logger.error("the summary of %s was not written: %s: %s", sweep_dir, type(exc).__name__, exc)
        return None


def trial_config(base: ExperimentConfig, overrides: dict[str, Any]) -> tuple[str, ExperimentConfig, Path]:
    """``(run name, run config, sweep dir)`` of the run ``overrides`` pick from ``base``'s sweep."""
    cfg = resolve_device_defaults(apply_overrides(base, {**overrides, "sweep.mode": "single",
                                                         "sweep.ablation_type": None, "sweep.name": sweep_name(base)}))
    name = next((n for n, c in expand(base) if c.run_id == cfg.run_id), run_name(cfg))
    return name, cfg, Path(base.output_dir) / sweep_name(base)


def trial_run_store(base: ExperimentConfig, overrides: dict[str, Any]) -> RunStore:
    """The (read-only) store of the run ``overrides`` pick from ``base``'s sweep."""
    name, _, sweep_dir = trial_config(base, overrides)
    return RunStore(sweep_dir / name, writable=False)


def run_trial(base: ExperimentConfig, overrides: dict[str, Any], resume: bool = True) -> RunResult:
    """One run of the sweep ``base`` describes, chosen by an external scheduler (a W&B agent,
    an Optuna worker): ``base`` with ``overrides`` applied, named as :func:`run_sweep` would
    name it, pre-flighted, run unless done (continuing from its last checkpoint), and the
    sweep summary rewritten under its lock.

    Raises:
        ConfigError | DataError | ModelError: bad overrides or a run that cannot start.
        Preempted: a SIGTERM/SIGINT stopped the run (recorded ``interrupted``, summary written).
    """
    from loraexp.run import preemption
    from loraexp.sweep.preflight import preflight

    name, cfg, sweep_dir = trial_config(base, overrides)
    preflight([(name, cfg)], sweep_dir)
    with preemption.guard():
        result = run_unless_done(name, cfg, sweep_dir, resume=resume)
    if is_main_process():
        names = [n for n, _ in expand(base)]
        present = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
        write_sweep_summary(sweep_dir, names + [n for n in present if n not in names],
                            Settings.from_config(base, sweep_metric(base)[0]))
    if result.status == STATUS_INTERRUPTED:  # the worker stops too: the VM is going away
        raise preemption.Preempted(result.record.interruption.signal_number)
    return result
