"""Expand one base config into the run configs of a sweep or ablation, with stable names.

* ``single``: the config itself.
* ``sweep``: learning rates x seeds (warmup stays a ratio of each run's steps).
* ``ablation`` ``rank`` | ``alpha`` | ``modules`` | ``quantization``: the axes of :mod:`loraexp.variants`.
* ``ablation`` ``grid``: the cartesian product of ``sweep.grid`` (dotted keys -> values).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from loraexp import variants
from loraexp.config import apply_overrides
from loraexp.schema import ExperimentConfig


def format_lr(lr: float) -> str:
    """``3e-4`` style: mantissa without trailing zeros, exponent without padding."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def model_label(model: str) -> str:
    """Short model name for run names: the alias, or the last path / Hub-id component."""
    return Path(model.rstrip("/")).name.lower() or model


def targets_label(target_modules: str | list[str]) -> str:
    """Preset name, or the explicit module names' last parts joined by ``+``."""
    if isinstance(target_modules, str):
        return target_modules
    return "+".join(t.split(".")[-1] for t in target_modules)


def quantization_label(cfg: ExperimentConfig) -> str | None:
    """``nf4``, ``nf4dq``, ``int8`` ...; None for a full-precision base."""
    q = cfg.quantization
    if q.method == "none":
        return None
    return q.method + ("dq" if q.double_quant else "")


def run_name(cfg: ExperimentConfig) -> str:
    """Readable run name, e.g. ``sst2-minilm-r8-a16-standard-lr1e-3-s42`` (``-nf4dq`` after
    the target modules for a quantized base)."""
    lora = cfg.lora
    parts = [cfg.task, model_label(cfg.model), f"r{lora['r']}", f"a{lora['lora_alpha']:g}",
             targets_label(lora["target_modules"]), quantization_label(cfg),
             f"lr{format_lr(cfg.training['learning_rate'])}", f"s{cfg.seed}"]
    return "-".join(p for p in parts if p)


def sweep_name(cfg: ExperimentConfig) -> str:
    """``sweep.name``, else ``<task>-<mode>[-<ablation_type>]``."""
    if cfg.sweep.name:
        return cfg.sweep.name
    parts = [cfg.task, cfg.sweep.mode]
    if cfg.sweep.mode == "ablation":
        parts.append(cfg.sweep.ablation_type)
    return "-".join(parts)


def _prefixed(axis: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{f"{prefix}{k}": v for k, v in point.items()} for point in axis]


def overrides_for(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The list of dotted-key overrides, one per run, that ``cfg.sweep`` asks for."""
    s = cfg.sweep
    if s.mode == "single":
        return [{}]
    if s.mode == "sweep":
        return [{"training.learning_rate": lr, "seed": seed}
                for lr, seed in itertools.product(s.learning_rates, s.seeds)]
    if s.ablation_type == "rank":
        return _prefixed(variants.rank_axis(s.ranks), "lora.")
    if s.ablation_type == "alpha":
        return _prefixed(variants.alpha_axis(s.alphas, s.alpha_ablation_r), "lora.")
    if s.ablation_type == "modules":
        return _prefixed(variants.module_axis(s.presets), "lora.")
    if s.ablation_type == "quantization":
        return _prefixed(variants.quantization_axis(s.quantizations), "quantization.")
    keys = list(s.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(s.grid[k] for k in keys))]


def expand(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """``(run_name, config)`` for every run of the sweep, in a stable order.

    Each run config is the base with its overrides applied and ``sweep.mode`` set to
    ``single`` (so a saved config reproduces exactly one run). Names that collide (a
    grid over a field the name does not show) get the run id appended.

    Raises:
        ConfigError: an override produces an invalid config.
    """
    runs = []
    for point in overrides_for(cfg):
        run_cfg = apply_overrides(cfg, {**point, "sweep.mode": "single", "sweep.ablation_type": None,
                                        "sweep.name": sweep_name(cfg)})
        runs.append(run_cfg)
    names = [run_name(c) for c in runs]
    duplicated = {n for n in names if names.count(n) > 1}
    return [(f"{n}-{c.run_id}" if n in duplicated else n, c) for n, c in zip(names, runs)]
