"""Run a sweep as a shared Optuna study (``--backend optuna --storage ...``).

Start the same command on several processes or machines: they share one study in the
storage (a journal file on a disk all of them see, or a database URL) and pull trials from
it. Each trial is one loraexp run (:func:`loraexp.sweep.runner.run_trial`): written to the same
``<output_dir>/<sweep>/<run>`` layout, resumed from its checkpoint if cut short, skipped if
completed.

* ``sweep.sampler: grid`` -- exactly the runs the local backend would run. Optuna's
  ``GridSampler`` gives trial number k < grid size the k-th grid point (optuna >= 4: trial
  numbers are unique in the storage, so no point is handed out twice); a trial numbered
  past the grid (two workers asked at the same moment for the last point) is pruned before
  anything runs, so no run is trained twice.
* ``sweep.sampler: tpe`` -- ``TPESampler`` over ``training.learning_rate`` (log-uniform in
  ``sweep.tpe_learning_rate``) and ``lora.r`` (``sweep.tpe_ranks``, lora_alpha = 2r), until
  the study holds ``sweep.n_trials`` trials.

The study maximises or minimises the eval metric of :func:`loraexp.sweep.metric.objective`; a
failed run is a FAIL trial (objective NaN).

A worker killed mid-trial (a preempted VM) leaves its trial RUNNING; the journal storage has
no heartbeat. Once a worker has nothing new to ask for, it takes over every RUNNING trial
older than ``sweep.stale_trial_s`` whose run never finished (``metrics.json`` absent or
``running``) and whose run lock is free (no live process trains it; the OS released the dead
worker's lock): it resumes that run from its last checkpoint and ``tell``s the trial's value.
"""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path
from typing import Any

from loraexp.config.schema import ExperimentConfig, lora_alpha_for_rank
from loraexp.errors import ConfigError
from loraexp.results.comparison import Settings
from loraexp.results.naming import sweep_name
from loraexp.results.record import STATUS_BUSY, STATUS_COMPLETED, STATUS_RUNNING, STATUS_SKIPPED
from loraexp.results.summary import write_sweep_summary
from loraexp.sweep.expand import expand
from loraexp.sweep.grid import grid_parameters, overrides_from_params
from loraexp.sweep.metric import sweep_metric
from loraexp.sweep.preflight import preflight
from loraexp.sweep.runner import RunResult, SweepResult, run_trial, trial_run_store

logger = logging.getLogger(__name__)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("`sweep.backend` 'optuna' needs the optuna extra: pip install -e '.[optuna]' "
                          "(or pip install optuna); or use --backend local") from None
    return optuna


def make_storage(storage: str):
    """An Optuna storage: a database URL (``postgresql://...``, ``sqlite:///...``) as is, else a
    journal file path (``JournalStorage(JournalFileBackend(path))``, safe for several
    processes: the file is appended under a lock).

    Raises:
        ConfigError: the journal file's directory does not exist.
    """
    optuna = _optuna()
    if "://" in storage:
        return storage
    path = Path(storage)
    if not path.parent.is_dir():
        raise ConfigError(f"`sweep.storage` journal file {storage!r}: directory {str(path.parent)!r} does not "
                          "exist; give a path on a disk every worker sees, or a database URL")
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _trial_overrides(trial, cfg: ExperimentConfig, space: dict[str, list] | None) -> dict[str, Any]:
    if space is not None:
        return overrides_from_params({key: trial.suggest_categorical(key, values) for key, values in space.items()})
    s = cfg.sweep
    r = trial.suggest_categorical("lora.r", s.tpe_ranks)
    lr = trial.suggest_float("training.learning_rate", s.tpe_learning_rate[0], s.tpe_learning_rate[1], log=True)
    return _tpe_overrides({"lora.r": r, "training.learning_rate": lr})


def _tpe_overrides(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "lora.lora_alpha": lora_alpha_for_rank(params["lora.r"])}


def _value(result: RunResult, metric: str) -> float:
    value = (result.metrics.get("eval") or {}).get(metric)
    if result.status not in (STATUS_COMPLETED, STATUS_SKIPPED) or value is None:
        return math.nan  # a FAIL trial; the run's metrics.json says why
    return float(value)


def _take_over_stale_trials(study, cfg: ExperimentConfig, grid: bool, metric: str, resume: bool) -> list[RunResult]:
    """Resume the runs of RUNNING trials left by killed workers and tell their values."""
    from optuna.trial import TrialState

    now = datetime.datetime.now()
    taken = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start
        if not trial.params or started is None or (now - started).total_seconds() < cfg.sweep.stale_trial_s:
            continue
        overrides = overrides_from_params(trial.params) if grid else _tpe_overrides(trial.params)
        status = (trial_run_store(cfg, overrides).read_metrics() or {}).get("status")
        if status not in (None, STATUS_RUNNING):
            continue  # finished (its worker is telling it, or died just before): nothing to train
        result = run_trial(cfg, overrides, resume=resume)
        if result.status == STATUS_BUSY:
            continue  # a live process trains it
        logger.warning("took over trial %d (%s) from a worker that stopped", trial.number, result.run_name)
        taken.append(result)
        value = _value(result, metric)
        try:
            if math.isnan(value):
                study.tell(trial.number, state=TrialState.FAIL)
            else:
                study.tell(trial.number, value)
        except (RuntimeError, ValueError) as exc:  # finished by another process meanwhile
            logger.warning("trial %d was finished elsewhere: %s", trial.number, exc)
    return taken


def run_optuna(cfg: ExperimentConfig, resume: bool = True) -> SweepResult:
    """Work on the shared study of ``cfg``'s sweep until it has no trial left to hand out;
    returns this worker's runs and the sweep summary (all workers' runs).

    Raises:
        ConfigError | DataError | ModelError: optuna missing, bad storage, or a run that
            cannot start (pre-flight of every grid run, before any training).
    """
    optuna = _optuna()
    grid = cfg.sweep.sampler == "grid"
    runs = expand(cfg)
    sweep_dir = Path(cfg.output_dir) / sweep_name(cfg)
    preflight(runs, sweep_dir)
    metric, direction = sweep_metric(cfg)
    if cfg.sweep.pruner != "none":
        return _run_pruned_study(cfg, runs, sweep_dir, metric, direction)
    space = grid_parameters(cfg) if grid else None
    size = len(runs) if grid else cfg.sweep.n_trials
    sampler = optuna.samplers.GridSampler(space) if grid else optuna.samplers.TPESampler()
    study = optuna.create_study(study_name=sweep_name(cfg), storage=make_storage(cfg.sweep.storage),
                                sampler=sampler, direction=direction, load_if_exists=True)
    mine: list[RunResult] = []

    def trial_objective(trial) -> float:
        if trial.number >= size:  # handed out after the last point: nothing to run
            raise optuna.TrialPruned(f"trial {trial.number} is past the {size} trials of the sweep")
        result = run_trial(cfg, _trial_overrides(trial, cfg, space), resume=resume)
        mine.append(result)
        trial.set_user_attr("run_name", result.run_name)
        trial.set_user_attr("status", result.status)
        return _value(result, metric)

    while len(study.get_trials(deepcopy=False)) < size:
        study.optimize(trial_objective, n_trials=1)
    mine += _take_over_stale_trials(study, cfg, grid, metric, resume)
    names = [name for name, _ in runs] if grid else sorted(
        p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
    summary = write_sweep_summary(sweep_dir, names, Settings.from_config(cfg, metric))
    return SweepResult(sweep_dir, mine, summary.rows, metric, direction, summary.comparison)


def _run_pruned_study(cfg: ExperimentConfig, runs, sweep_dir: Path, metric: str, direction: str) -> SweepResult:
    """A shared study whose trials are configurations (all seeds of a point), each trained rung by
    rung and stopped by ``cfg.sweep.pruner`` (:mod:`loraexp.sweep.pruning`) against the values every
    worker reported at that rung: asynchronous successive halving across machines.

    ``sampler: grid`` hands out the sweep's configurations (``GridSampler`` over their first
    run's name); ``tpe`` suggests ``lora.r`` and the learning rate, run with the sweep's seeds.
    A RUNNING trial of a killed worker is not taken over (its runs are: a rerun of the sweep
    without a pruner continues them from their checkpoints).
    """
    from loraexp.run import preemption
    from loraexp.sweep import pruning
    from loraexp.sweep.expand import seeds_for
    from loraexp.sweep.runner import report_outcome, run_unless_done, trial_config

    optuna = _optuna()
    grid = cfg.sweep.sampler == "grid"
    confs = {c.runs[0][0]: c for c in pruning.configurations(runs, cfg.sweep.baseline)}
    if grid:
        pruning.check_prunable(list(confs.values()), cfg)
    size = len(confs) if grid else cfg.sweep.n_trials
    sampler = (optuna.samplers.GridSampler({"configuration": list(confs)}, seed=cfg.seed) if grid
               else optuna.samplers.TPESampler(seed=cfg.seed))
    study = optuna.create_study(study_name=sweep_name(cfg), storage=make_storage(cfg.sweep.storage),
                                sampler=sampler, pruner=pruning.make_pruner(cfg), direction=direction,
                                load_if_exists=True)
    mine: list[RunResult] = []

    def advance(name: str, run_cfg: ExperimentConfig, until_step: int | None, start_over: bool) -> RunResult:
        label = f"{name}" + (f" (to step {until_step})" if until_step else "")
        with preemption.guard():
            result = run_unless_done(name, run_cfg, sweep_dir, rerun=start_over, resume=True, label=label,
                                     until_step=until_step)
        report_outcome(result, label, sweep_dir, metric)
        return result

    def trial_objective(trial) -> float:
        if trial.number >= size:  # handed out after the last configuration: nothing to run
            raise optuna.TrialPruned(f"trial {trial.number} is past the {size} trials of the sweep")
        if grid:
            conf = confs[trial.suggest_categorical("configuration", list(confs))]
        else:
            overrides = _trial_overrides(trial, cfg, None)
            members = [trial_config(cfg, {**overrides, "seed": seed})[:2] for seed in seeds_for(cfg)]
            preflight(members, sweep_dir)
            conf = pruning.Configuration(members[0][0], members)
        outcome = pruning.run_configuration(trial, conf, cfg, sweep_dir, metric, advance,
                                            label=f"trial {trial.number}: ")
        mine.extend(outcome.results)
        trial.set_user_attr("runs", [name for name, _ in conf.runs])
        if outcome.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {outcome.pruned_at}")
        return outcome.value  # NaN: a FAIL trial

    while len(study.get_trials(deepcopy=False)) < size:
        study.optimize(trial_objective, n_trials=1)
    names = [name for name, _ in runs] if grid else sorted(
        p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
    summary = write_sweep_summary(sweep_dir, names, Settings.from_config(cfg, metric))
    return SweepResult(sweep_dir, mine, summary.rows, metric, direction, summary.comparison)
