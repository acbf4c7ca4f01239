"""Run a sweep: expand a config into runs, check them all before any training (preflight),
run each one not completed yet (:func:`loraexp.recipe.run_experiment`), write the summary.

The console gets one line when a run starts and one when it ends (``logging`` at INFO;
:mod:`loraexp.console` shows them between the progress bars).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.comparison import Settings
from loraexp.config import apply_overrides
from loraexp.distributed import broadcast_from_main, is_main_process
from loraexp.objective import objective
from loraexp.record import STATUS_BUSY, STATUS_COMPLETED, STATUS_SKIPPED, RunRecord, RunResult
from loraexp.schema import ExperimentConfig
from loraexp.storage import RunStore
from loraexp.summary import write_sweep_summary
from loraexp.sweep import expand, run_name, sweep_name

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """All runs of a sweep, its directory and the summary rows (one per run, every column of
    :data:`loraexp.summary.COLUMNS`); ``metric``/``direction``: the sweep's objective."""

    sweep_dir: Path
    runs: list[RunResult]
    rows: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "accuracy"
    direction: str = "maximize"
    comparison: Any = None  # loraexp.comparison.Comparison: configurations over seeds, baseline, verdicts

    @property
    def all_completed(self) -> bool:
        return all(r.status in (STATUS_COMPLETED, STATUS_SKIPPED) for r in self.runs)


def outcome_line(record: RunRecord | None, status: str, metric: str) -> str:
    """``completed · accuracy 0.8521 · 152 s · verification passed`` (what the console shows
    when a run ends)."""
    parts = [status]
    if record is not None:
        if metric in record.eval:
            parts.append(f"{metric} {record.eval[metric]:.4g}")
        if record.wall_seconds is not None:
            parts.append(f"{record.wall_seconds:.0f} s")
        if record.verification.observed:
            parts.append("verification " + ("passed" if record.verification.passed else "failed"))
        if record.error and record.status != STATUS_COMPLETED:
            parts.append(record.error.splitlines()[0][:160])
    return " · ".join(parts)


def run_unless_done(name: str, cfg: ExperimentConfig, sweep_dir: Path, rerun: bool = False, resume: bool = False,
                    extra_callbacks: Sequence[Any] = (), label: str | None = None) -> RunResult:
    """Run ``cfg`` as ``<sweep_dir>/<name>`` unless it is already completed (status
    ``skipped``; ``rerun`` runs it again) or another process holds its lock (status ``busy``).

    The run is trained while holding ``<run>/.lock``, so processes sharing ``sweep_dir``
    (several workers, a rerun started by mistake) never train one run twice at once. Under
    ``accelerate launch`` rank 0 decides and every rank follows. ``label`` (default: the
    name) starts the console line logged when the run starts.
    """
    from loraexp.recipe import run_experiment

    main = is_main_process()
    store = RunStore(sweep_dir / name, writable=main)
    with store.lock() if main else contextlib.nullcontext(True) as locked:
        decision = "busy" if not locked else ("skip" if store.is_completed() and not rerun else "run")
        decision = broadcast_from_main(decision)
        if decision == "run":
            logger.info("%s: started", label or name)
            return run_experiment(cfg, store.run_dir, name, resume=resume, extra_callbacks=extra_callbacks)
    status = STATUS_BUSY if decision == "busy" else STATUS_SKIPPED
    return RunResult(name, store.run_dir, status, store.read_record())


def run_sweep(cfg: ExperimentConfig, rerun: bool = False, progress: bool = True, resume: bool = False,
              extra_callbacks: Sequence[Any] = ()) -> SweepResult:
    """Expand ``cfg`` into runs, pre-flight them all, run each one not yet completed (or all
    with ``rerun``; see :func:`run_unless_done`), and write ``summary.csv``/``summary.md`` in
    the sweep directory (rank 0 only). With ``resume``, an unfinished run continues from its
    last checkpoint. ``extra_callbacks`` go to every run's Trainer.

    Raises:
        ConfigError | DataError | ModelError: from :func:`~loraexp.preflight.preflight`,
            before anything is written.
    """
    from tqdm.auto import tqdm

    from loraexp.preflight import preflight

    runs = expand(cfg)
    sweep_dir = Path(cfg.output_dir) / sweep_name(cfg)
    preflight(runs, sweep_dir)
    metric, direction = objective(cfg)
    results = []
    bar = tqdm(runs, desc=f"sweep {sweep_name(cfg)}", unit="run", position=0, dynamic_ncols=True,
               disable=not progress or not is_main_process())
    for index, (name, run_cfg) in enumerate(bar, start=1):
        where = f"[{index}/{len(runs)}] {name}"
        result = run_unless_done(name, run_cfg, sweep_dir, rerun=rerun, resume=resume,
                                 extra_callbacks=extra_callbacks, label=where)
        if result.status == STATUS_SKIPPED:
            logger.info("%s: skipped, already completed", where)
        elif result.status == STATUS_BUSY:
            logger.warning("%s: skipped, another process is training it", where)
        else:
            logger.info("%s: %s", where, outcome_line(result.record, result.status, metric))
        results.append(result)
    bar.close()
    if not is_main_process():
        return SweepResult(sweep_dir, results, [], metric, direction)
    summary = write_sweep_summary(sweep_dir, [name for name, _ in runs], Settings.from_config(cfg, metric))
    return SweepResult(sweep_dir, results, summary.rows, metric, direction, summary.comparison)


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
    from loraexp.preflight import preflight

    name, cfg, sweep_dir = _trial_config(base, overrides)
    preflight([(name, cfg)], sweep_dir)
    result = run_unless_done(name, cfg, sweep_dir, resume=resume)
    if is_main_process():
        names = [n for n, _ in expand(base)]
        present = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
        write_sweep_summary(sweep_dir, names + [n for n in present if n not in names],
                            Settings.from_config(base, objective(base)[0]))
    return result
