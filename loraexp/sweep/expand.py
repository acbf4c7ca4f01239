"""Expand one base config into the run configs of a sweep or ablation, with stable names.

* ``single``: the config itself.
* ``sweep``: learning rates x seeds (warmup stays a ratio of each run's steps).
* ``ablation`` ``rank`` | ``alpha`` | ``modules`` | ``quantization``: the axes of :mod:`loraexp.sweep.axes`.
* ``ablation`` ``method``: one point per run type of ``sweep.methods`` (:mod:`loraexp.config.methods`).
* ``ablation`` ``grid``: the cartesian product of ``sweep.grid`` (dotted keys -> values).

``sweep.seeds`` replicates every point (one run per seed), and ``sweep.baseline`` adds the
baseline's runs (one per seed) unless a point already is the baseline.
"""

from __future__ import annotations

import itertools
from typing import Any

from loraexp.config.load import apply_overrides
from loraexp.config.precision import resolve_device_defaults
from loraexp.config.schema import PROTOCOL_SEEDS, ExperimentConfig
from loraexp.results.naming import effective_identity, run_name, sweep_name
from loraexp.sweep import axes as variants


def _prefixed(axis: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{f"{prefix}{k}": v for k, v in point.items()} for point in axis]


def seeds_for(cfg: ExperimentConfig) -> list[int]:
    """The seeds every point runs with: ``sweep.seeds``, else the research protocol's three in
    sweep mode and the config's ``seed`` otherwise."""
    if cfg.sweep.seeds:
        return list(cfg.sweep.seeds)
    return list(PROTOCOL_SEEDS) if cfg.sweep.mode == "sweep" else [cfg.seed]


def points_for(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The dotted-key overrides of each point ``cfg.sweep`` asks for, before seeds."""
    s = cfg.sweep
    if s.mode == "single":
        return [{}]
    if s.mode == "sweep":
        return [{"training.learning_rate": lr} for lr in s.learning_rates]
    if s.ablation_type == "rank":
        return _prefixed(variants.rank_axis(s.ranks), "lora.")
    if s.ablation_type == "alpha":
        return _prefixed(variants.alpha_axis(s.alphas, s.alpha_ablation_r), "lora.")
    if s.ablation_type == "modules":
        return _prefixed(variants.module_axis(s.presets), "lora.")
    if s.ablation_type == "quantization":
        return _prefixed(variants.quantization_axis(s.quantizations), "quantization.")
    if s.ablation_type == "method":
        return [{"method": m} for m in s.methods]
    keys = list(s.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(s.grid[k] for k in keys))]


# Dotted-key prefixes a baseline does not share with the point it is the baseline of: what
# makes a point a LoRA configuration (the rest, e.g. model, task, data budget, stays).
METHOD_SPECIFIC = ("lora.", "method", "quantization.", "training.learning_rate")


def baseline_points(cfg: ExperimentConfig, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``sweep.baseline`` points: for each distinct part of the points that is not
    method-specific (:data:`METHOD_SPECIFIC`; e.g. ``model`` in a grid over models), one
    baseline point with the same values, ``method`` set to the baseline and a full-precision
    base. None when the points already include that baseline."""
    baseline = cfg.sweep.baseline
    if not baseline:
        return []
    out: list[dict[str, Any]] = []
    for point in points:
        if point.get("method", cfg.method) == baseline:
            continue
        shared = {k: v for k, v in point.items() if not k.startswith(METHOD_SPECIFIC)}
        candidate = {**shared, "method": baseline, "quantization.method": "none", "quantization.double_quant": False}
        if candidate not in out and not any(p.get("method", cfg.method) == baseline and
                                            {k: v for k, v in p.items() if not k.startswith(METHOD_SPECIFIC)} == shared
                                            for p in points):
            out.append(candidate)
    return out


def overrides_for(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The list of dotted-key overrides, one per run, that ``cfg.sweep`` asks for: every point
    of :func:`points_for` once per seed of :func:`seeds_for` (a point that sets ``seed`` itself,
    a grid over seeds, is kept as is), then the baseline's runs (:func:`baseline_points`, one
    per seed)."""
    points = points_for(cfg)
    points += baseline_points(cfg, points)
    seeds = seeds_for(cfg)
    if seeds == [cfg.seed]:  # no replicates: the points as they are (an external grid gets no seed axis)
        return points
    return [point if "seed" in point else {**point, "seed": seed} for point in points
            for seed in (seeds if "seed" not in point else [point["seed"]])]


def expand(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """``(run_name, config)`` for every run of the sweep, in a stable order.

    Each run config is the base with its overrides applied, its ``auto`` dtypes resolved for this
    device (:func:`~loraexp.config.precision.resolve_device_defaults`) and ``sweep.mode`` set to
    ``single`` (so a saved config reproduces exactly one run). Points that give the same run
    (:func:`effective_identity`) run once. Names that collide (a
    grid over a field the name does not show) get the run id appended.

    Raises:
        ConfigError: an override produces an invalid config.
    """
    runs, seen = [], set()
    for point in overrides_for(cfg):
        single = {**point, "sweep.mode": "single", "sweep.ablation_type": None, "sweep.name": sweep_name(cfg)}
        run_cfg = resolve_device_defaults(apply_overrides(cfg, single))
        key = effective_identity(run_cfg)
        if key not in seen:  # e.g. full fine-tuning in a grid over lora.r: one run, not one per r
            seen.add(key)
            runs.append(run_cfg)
    names = [run_name(c) for c in runs]
    duplicated = {n for n in names if names.count(n) > 1}
    return [(f"{n}-{c.run_id}" if n in duplicated else n, c) for n, c in zip(names, runs)]
