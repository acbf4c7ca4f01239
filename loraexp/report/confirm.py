"""``loraexp report --confirm``: train the advised adapter with the sweep's seeds and say whether
it is as good as the configuration the advice was read from (docs/report.md, "Rank advice").

The advised runs live in ``<sweep>/confirm/`` (their own sweep directory, so the sweep's
summary and report keep listing the sweep's own runs) and are named
``<configuration name>-advised-<digest>-s<seed>`` (:func:`advice_digest`). Each is the source
run's config with the advice's ``lora.r``, ``lora_alpha``, ``rank_pattern`` and
``alpha_pattern``: same data, budget, learning rate and seed. The difference advised − source is the paired bootstrap of
:func:`loraexp.results.statistics.paired_difference`, and the verdict the protocol's
(:func:`loraexp.results.statistics.verdict`, ``sweep.max_drop`` against the source's mean).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

from loraexp.report.advice import SweepAdvice
from loraexp.report.sweep_data import SweepData
from loraexp.results.record import STATUS_COMPLETED
from loraexp.results.storage import RunStore, atomic_write_text

CONFIRM_DIR = "confirm"
log = logging.getLogger(__name__)


def confirmation_runs(data: SweepData, advice: SweepAdvice) -> list[tuple[str, Any]]:
    """``(run name, ExperimentConfig)`` of the advised adapter for each completed seed of the
    advice's source configuration.

    Raises:
        ConfigError: the advised config is invalid (e.g. a ``rank_pattern`` PEFT rejects).
    """
    from loraexp.config.load import apply_overrides, build_config
    from loraexp.results.naming import configuration_name

    runs = []
    for _, record in data.completed_runs(advice.source):
        cfg = apply_overrides(build_config(record.config), {
            **advice.advice.lora_overrides(), "sweep.mode": "single", "sweep.ablation_type": None,
            "sweep.name": f"{data.sweep_dir.name}-{CONFIRM_DIR}", "sweep.seeds": None, "sweep.baseline": None})
        runs.append((f"{configuration_name(cfg)}-advised-{advice_digest(advice)}-s{cfg.seed}", cfg))
    return runs


def advice_digest(advice: SweepAdvice) -> str:
    """6 hex characters of SHA-1 over the advice's ``lora.*`` overrides: the advised runs of
    two different advices (another ``--energy``, a sweep that gained runs) never share a name."""
    blob = json.dumps(advice.advice.lora_overrides(), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:6]


def confirm_advice(data: SweepData, advice: SweepAdvice, rerun: bool = False) -> dict[str, Any]:
    """Run (or reuse, when already completed) the advised runs in ``<sweep>/confirm/`` and
    compare them with the source configuration; the result is also written to
    ``<sweep>/confirm/confirm.json``.

    Returns:
        ``status`` (``completed`` or ``failed``), ``metric``, ``seeds``, ``advised`` and
        ``source`` (configuration names), ``advised_mean``/``source_mean``, ``difference``
        (``estimate``, ``low``, ``high``), ``confidence``, ``allowed_drop``, ``verdict``
        (yes/no/inconclusive), trainable-parameter means, and the run names.

    A run that fails, or scores that cannot be paired (no ``predictions.npz``, other dev
    examples), give ``status`` ``failed`` with a ``reason``.

    Raises:
        ConfigError | DataError | ModelError: a run cannot start (preflight, before training).
    """
    from loraexp.results.statistics import (
        LOWER_IS_BETTER,
        PREDICTIONS_FILE,
        load_scores,
        margin,
        paired_difference,
        verdict,
    )
    from loraexp.results.summary import write_sweep_summary
    from loraexp.sweep.preflight import preflight
    from loraexp.sweep.runner import outcome_line, run_unless_done

    confirm_dir = data.sweep_dir / CONFIRM_DIR
    planned = confirmation_runs(data, advice)
    preflight(planned, confirm_dir)
    for index, (name, cfg) in enumerate(planned, start=1):
        where = f"[confirm {index}/{len(planned)}] {name}"
        result = run_unless_done(name, cfg, confirm_dir, rerun=rerun, label=where)
        log.info("%s: %s", where, outcome_line(result.record, result.status, data.metric))
    write_sweep_summary(confirm_dir, [name for name, _ in planned])
    settings, metric = data.comparison.settings, data.metric
    records = [RunStore(confirm_dir / name, writable=False).read_record() for name, _ in planned]
    out: dict[str, Any] = {"metric": metric, "source": advice.source.name, "runs": [n for n, _ in planned],
                           "advised": planned[0][0].rsplit("-s", 1)[0] if planned else None,
                           "overrides": advice.advice.lora_overrides(), "energy": advice.advice.energy,
                           "confidence": settings.confidence, "seeds": len(planned)}
    if not all(r is not None and r.status == STATUS_COMPLETED for r in records):
        out.update(status="failed", reason="an advised run did not complete: " + "; ".join(
            f"{n}: {r.status if r else 'missing'}" for (n, _), r in zip(planned, records)))
    elif metric not in advice.source.scores:
        out.update(status="failed", reason=f"the source runs have no per-example {metric} scores to pair with")
    else:
        try:
            advised = [load_scores(confirm_dir / name / PREDICTIONS_FILE)[metric] for name, _ in planned]
            difference = paired_difference(advised, advice.source.scores[metric], settings.confidence,
                                           settings.resamples, settings.seed)
        except (OSError, KeyError, ValueError) as exc:  # no predictions.npz, other dev examples, ...
            out.update(status="failed", reason=f"no paired difference: {type(exc).__name__}: {exc}")
            atomic_write_text(confirm_dir / "confirm.json", json.dumps(out, indent=2, default=str) + "\n")
            return out
        source_mean = advice.source.intervals[metric].mean
        allowed = margin(source_mean, settings.max_drop, settings.drop_unit)
        out.update(
            status="completed", source_mean=source_mean,
            advised_mean=sum(s.value() for s in advised) / len(advised),
            difference={"estimate": difference.estimate, "low": difference.low, "high": difference.high},
            allowed_drop=allowed, max_drop=settings.max_drop, drop_unit=settings.drop_unit,
            verdict=verdict(difference, allowed, lower_is_better=metric in LOWER_IS_BETTER),
            advised_params=_mean([r.efficiency.get("trainable_params") for r in records]),
            source_params=advice.source.trainable_params)
    atomic_write_text(confirm_dir / "confirm.json", json.dumps(out, indent=2, default=str) + "\n")
    return out


def _mean(values: list[Any]) -> float:
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else math.nan
