"""Successive halving over a sweep: stop configurations that are behind at rungs.

A *configuration* is a point of the sweep with all its seeds (the runs that differ only in
``seed``). With ``sweep.pruner`` set, each configuration is an Optuna trial, trained rung by
rung: every run of the configuration trains to the rung (``min_resource * eta**k`` optimizer
steps, :func:`rung_steps`), stops there with a checkpoint and is evaluated (status
``paused``, :meth:`loraexp.run.recipe.LoraRecipe.pause_at_rung`); the mean of the runs' eval
metric is reported to the trial (``trial.report(value, step)``) and Optuna's pruner decides:

* ``successive-halving``: ``optuna.pruners.SuccessiveHalvingPruner`` (asynchronous successive
  halving, Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"): at rung k
  a configuration goes on when its value is in the top ``1/eta`` of the values every
  configuration reported at that rung so far (the first ones, with fewer than ``eta`` values
  to compare, go on only when they are the best so far);
* ``hyperband``: ``optuna.pruners.HyperbandPruner`` (Li et al. 2018): configurations are
  split into brackets that start halving at different rungs, so a slow starter gets a
  chance in the brackets that halve late.

A configuration that goes on continues each run from its rung checkpoint (the learning-rate
schedule is the full run's), so a configuration that survives every rung has exactly the runs
an unpruned sweep has (bit-identical on CPU). One that is stopped has its runs recorded
``pruned`` (:class:`~loraexp.results.record.Pruning`: rung, step, its value and the configuration's).

Rerunning the sweep replays it: the configurations go in the same order (shuffled once with
the config's ``seed``), rung values already recorded are reported again without training, so
Optuna reaches the same decisions, and what was not finished continues from its checkpoint.
Without a pruner, a ``pruned`` run is continued to the end like any unfinished run.
The ``sweep.baseline`` runs are not pruned: they are the reference of every comparison.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loraexp.config.schema import ExperimentConfig
from loraexp.results.record import (
    STATUS_COMPLETED,
    STATUS_PAUSED,
    STATUS_PRUNED,
    STATUS_SKIPPED,
    Pruning,
    RunRecord,
    RunResult,
)
from loraexp.results.storage import RunStore

logger = logging.getLogger(__name__)

PRUNERS = ("successive-halving", "hyperband")


def first_rung(max_steps: int, reduction_factor: int, min_resource: int | None) -> int:
    """``min_resource``, else ``max_steps // reduction_factor**2`` (three rungs), at least 1."""
    return min_resource if min_resource is not None else max(1, max_steps // reduction_factor ** 2)


def rung_steps(max_steps: int, reduction_factor: int, min_resource: int | None = None) -> list[int]:
    """The optimizer steps a configuration is evaluated at: ``first * eta**k`` (the rungs of
    Optuna's pruners with ``min_early_stopping_rate`` 0) that leave at least ``1/eta`` of the
    run to save (``step <= max_steps * (1 - 1/eta)``: no rung at step 99 of 100), then
    ``max_steps``, the end of the run; e.g. 100 steps, eta 3 -> ``[11, 33, 100]``."""
    step, steps = first_rung(max_steps, reduction_factor, min_resource), []
    while step * reduction_factor <= (reduction_factor - 1) * max_steps:
        steps.append(step)
        step *= reduction_factor
    return steps + [max_steps]


def make_pruner(cfg: ExperimentConfig):
    """The Optuna pruner ``cfg.sweep.pruner`` names, with ``min_resource`` and
    ``reduction_factor`` from the config (``max_resource``: ``training.max_steps``)."""
    import optuna

    s, max_steps = cfg.sweep, cfg.training["max_steps"]
    first = first_rung(max_steps, s.reduction_factor, s.min_resource)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max_steps,
                                              reduction_factor=s.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=s.reduction_factor,
                                                  min_early_stopping_rate=0)


@dataclass
class Configuration:
    """The runs of one configuration (its seeds), in sweep order; ``prunable`` False for the
    baseline's runs."""

    name: str
    runs: list[tuple[str, ExperimentConfig]]
    prunable: bool = True


def configurations(runs: list[tuple[str, ExperimentConfig]], baseline: str | None) -> list[Configuration]:
    """Group the sweep's runs into configurations: runs equal but for ``seed``."""
    from loraexp.config.load import apply_overrides
    from loraexp.results.naming import configuration_name

    groups: dict[str, Configuration] = {}
    for name, run_cfg in runs:
        key = apply_overrides(run_cfg, {"seed": 0}).run_id
        if key not in groups:
            groups[key] = Configuration(configuration_name(run_cfg), [],
                                        prunable=not (baseline and run_cfg.method == baseline))
        groups[key].runs.append((name, run_cfg))
    return list(groups.values())


def check_prunable(confs: list[Configuration], cfg: ExperimentConfig) -> None:
    """A pruner needs at least two configurations it may stop (the baseline's are never stopped).

    Raises:
        ConfigError: naming ``sweep.pruner`` and how many configurations there are.
    """
    from loraexp.errors import ConfigError

    prunable = sum(c.prunable for c in confs)
    if prunable < 2:
        raise ConfigError(f"`sweep.pruner` {cfg.sweep.pruner!r} compares configurations, but this sweep has "
                          f"{prunable} it could stop; use a sweep or an ablation with several points, or "
                          "`--prune none`")


def trial_order(confs: list[Configuration], seed: int) -> list[Configuration]:
    """The order configurations become trials: shuffled with ``seed`` (asynchronous halving
    keeps the first configurations longer, so sweep order would favour the first axis value),
    the same on every rerun."""
    order = list(confs)
    random.Random(seed).shuffle(order)
    return order


def rung_value(record: RunRecord | None, step: int, metric: str) -> float | None:
    """The run's ``metric`` evaluated at ``step``: from ``record.rungs``, or its final
    evaluation when the run completed at ``step``; None when not recorded."""
    if record is None:
        return None
    for rung in record.rungs:
        if rung.get("step") == step and isinstance((rung.get("eval") or {}).get(metric), (int, float)):
            return float(rung["eval"][metric])
    if (record.status == STATUS_COMPLETED and record.completion.trained_steps == step
            and isinstance(record.eval.get(metric), (int, float))):
        return float(record.eval[metric])
    return None


def mean(values: list[float]) -> float:
    """Mean of ``values``; NaN when one is NaN (a failed run) or there is none."""
    return sum(values) / len(values) if values and not any(math.isnan(v) for v in values) else math.nan


# advance(name, run config, until_step or None, rerun) -> RunResult: trains one run to a rung
Advance = Callable[[str, ExperimentConfig, int | None, bool], RunResult]


@dataclass
class ConfigurationOutcome:
    """What became of one configuration: its runs' latest results, ``pruned_at`` (the rung
    step, None when it ran to the end) and the value it was pruned with."""

    configuration: Configuration
    results: list[RunResult]
    pruned_at: int | None = None
    value: float | None = None


def run_configuration(trial, conf: Configuration, cfg: ExperimentConfig, sweep_dir: Path, metric: str,
                      advance: Advance, rerun: bool = False, label: str = "") -> ConfigurationOutcome:
    """Train ``conf``'s runs rung by rung as Optuna ``trial`` (see the module docstring):
    report each rung's value, and when the pruner says so, record the runs ``pruned`` and
    return. A rung value already in a run's record is reported without
    training. The caller ends the trial (:func:`tell`, or ``study.optimize`` from what this
    returns).

    Raises:
        whatever ``advance`` raises (Preempted, DiskFullError, ConfigError): the trial is left
        RUNNING; a rerun replays it.
    """
    steps = rung_steps(cfg.training["max_steps"], cfg.sweep.reduction_factor, cfg.sweep.min_resource)
    if not conf.prunable:
        steps = steps[-1:]
    results: dict[str, RunResult] = {}
    started: set[str] = set()  # runs trained in this call (--rerun starts each over once)
    values: list[float] = []
    for rung, step in enumerate(steps):
        final = step == steps[-1]
        values = []
        for name, run_cfg in conf.runs:
            store = RunStore(sweep_dir / name, writable=False)
            record = None if rerun and name not in started else store.read_record()
            mine = record is not None and record.run_id == run_cfg.run_id
            known = rung_value(record, step, metric) if mine else None
            if not final and (known is not None or (mine and record.status == STATUS_COMPLETED)):
                results[name] = RunResult(name, store.run_dir, STATUS_SKIPPED, record)
                if known is not None:  # else completed before without this rung: not compared here
                    values.append(known)
                continue
            result = advance(name, run_cfg, None if final else step, rerun and name not in started)
            started.add(name)
            results[name] = result
            value = rung_value(result.record, step, metric)
            values.append(math.nan if value is None else value)
        if final:
            break
        if not values:  # every run completed before, without rung evaluations
            continue
        value = mean(values)
        trial.report(value, step)
        logger.info("%s%s: %s %.4g at rung %d (step %d)%s", label, conf.name, metric, value, rung, step,
                    f", mean over {len(values)} seeds" if len(values) > 1 else "")
        if trial.should_prune():
            _record_pruned(conf, cfg, sweep_dir, metric, rung, step, value, trial.number)
            logger.info("%s%s: pruned at rung %d (step %d of %d)", label, conf.name, rung, step, steps[-1])
            return ConfigurationOutcome(conf, [_reread(results[n], sweep_dir) for n, _ in conf.runs], step, value)
    return ConfigurationOutcome(conf, [results[n] for n, _ in conf.runs], None, mean(values))


def tell(study, trial, outcome: ConfigurationOutcome) -> None:
    """End ``trial`` with ``outcome``: PRUNED, FAIL (a run failed: the value is NaN) or the
    mean final value."""
    from optuna.trial import TrialState

    if outcome.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
    elif math.isnan(outcome.value):
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, outcome.value)


def _reread(result: RunResult, sweep_dir: Path) -> RunResult:
    record = RunStore(sweep_dir / result.run_name, writable=False).read_record()
    return RunResult(result.run_name, result.run_dir, record.status if record else result.status, record)


def _record_pruned(conf: Configuration, cfg: ExperimentConfig, sweep_dir: Path, metric: str, rung: int, step: int,
                   value: float, trial_number: int) -> None:
    """Mark every ``paused`` run of ``conf`` (under its lock) ``pruned`` with the decision."""
    decided = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name, _ in conf.runs:
        store = RunStore(sweep_dir / name)
        with store.lock() as locked:
            record = store.read_record() if locked else None
            if record is None or record.status not in (STATUS_PAUSED, STATUS_PRUNED):
                continue  # failed, or trained by another process right now
            if record.status == STATUS_PRUNED and record.pruning and record.pruning.step == step:
                continue  # a rerun replaying the same decision
            run_value = rung_value(record, step, metric)
            record.status = STATUS_PRUNED
            record.pruning = Pruning(pruner=cfg.sweep.pruner, rung=rung, step=step, metric=metric,
                                     value=run_value,
                                     configuration_value=None if math.isnan(value) else value,
                                     trial=trial_number, decided_at=decided)
            record.error = None
            store.write_record(record)
