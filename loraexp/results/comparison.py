"""Compare a sweep's configurations: replicates grouped over seeds, intervals, paired
differences to the baseline, the protocol verdict, and the Pareto fronts (docs/results.md,
"Statistics"). The math is in :mod:`loraexp.results.statistics`; this module reads the runs' records
and ``predictions.npz`` files and builds the rows the summary and the console show.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.results.record import STATUS_COMPLETED, RunRecord
from loraexp.results.statistics import (
    LOWER_IS_BETTER,
    PREDICTIONS_FILE,
    Difference,
    SeedInterval,
    load_scores,
    margin,
    paired_difference,
    pareto_front,
    seed_interval,
    verdict,
)

logger = logging.getLogger(__name__)

# Metrics given intervals when a run has them (classification: accuracy, F1; causal LM: loss,
# perplexity; generation: exact match; squad_v2: F1 and exact, percent).
STAT_METRICS = ("accuracy", "f1", "exact", "exact_match", "loss", "perplexity")


@dataclass
class Settings:
    """What the comparison needs from ``sweep``: the main ``metric``, the ``baseline`` method
    (None: ``full`` when the sweep has full fine-tuning runs), ``max_drop`` and ``drop_unit``,
    the ``confidence`` level and the bootstrap's ``resamples`` and ``seed``."""

    metric: str = "accuracy"
    baseline: str | None = None
    max_drop: float = 0.03
    drop_unit: str = "relative"
    confidence: float = 0.95
    resamples: int = 10000
    seed: int = 0

    @classmethod
    def from_config(cls, cfg, metric: str) -> Settings:
        """From an :class:`~loraexp.config.schema.ExperimentConfig`'s ``sweep`` section."""
        s = cfg.sweep
        return cls(metric=metric, baseline=s.baseline, max_drop=s.max_drop, drop_unit=s.drop_unit,
                   confidence=s.confidence, resamples=s.bootstrap_resamples, seed=s.bootstrap_seed)


@dataclass
class Configuration:
    """One configuration (the runs that differ only in ``seed``): its seed intervals per
    metric, its paired difference to its baseline (``baseline``: the baseline configuration
    with the same model, task, data and budget) and verdict per metric, cost figures (means
    over its completed runs: trainable parameters, peak memory in bytes, train time in
    seconds) and its place on the Pareto fronts of the main metric."""

    name: str
    method: str
    runs: list[str]
    completed: int
    seeds: list[int]
    intervals: dict[str, SeedInterval] = field(default_factory=dict)
    differences: dict[str, Difference] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    allowed_drop: float | None = None
    trainable_params: float = math.nan
    peak_mem_bytes: float = math.nan
    train_seconds: float = math.nan
    pareto_params: bool = False
    pareto_time: bool = False
    is_baseline: bool = False
    config: Any = field(default=None, repr=False)
    baseline: str | None = None
    baseline_key: str | None = None
    scores: dict[str, list] = field(default_factory=dict, repr=False)
    key: str = ""  # unique among the sweep's configurations: the name, or name#run-id when names collided


@dataclass
class Pairwise:
    """Paired difference ``first − second`` of the main metric between two configurations;
    ``differ`` when the interval excludes 0."""

    first: str
    second: str
    difference: Difference

    @property
    def differ(self) -> bool:
        return self.difference.low > 0 or self.difference.high < 0


@dataclass
class Comparison:
    """Every configuration of a sweep (in run order), the baseline's name, the pairwise
    differences between non-baseline configurations, and the settings used."""

    configurations: list[Configuration]
    baseline: str | None
    pairwise: list[Pairwise]
    settings: Settings

    def verdict_lines(self) -> list[str]:
        """One sentence per configuration compared with the baseline (main metric)."""
        s = self.settings
        if self.baseline is None:
            return []
        unit = f"{s.max_drop * 100:g}% relative" if s.drop_unit == "relative" else f"{s.max_drop:g} absolute"
        lines = []
        for c in self.configurations:
            d = c.differences.get(s.metric)
            if c.is_baseline or d is None:
                continue
            few = "; one seed: the interval holds the dev-set sampling only" if c.completed < 2 else ""
            lines.append(f"{c.name}: within {unit} of {c.baseline} on {s.metric}? {c.verdicts[s.metric]} "
                         f"(difference {d.estimate:+.4f}, {s.confidence:.0%} CI [{d.low:+.4f}, {d.high:+.4f}], "
                         f"allowed drop {c.allowed_drop:.4f}; {c.completed} seeds{few})")
        return lines


def _group_key(name: str, record: RunRecord | None) -> str:
    """The configuration a run belongs to: its name without the ``-s<seed>`` suffix (run
    names are :func:`~loraexp.results.naming.configuration_name` plus the seed). A name with its run id
    appended (names that collided in a grid) is grouped by the run id of its config without
    the seed, ``<configuration name>#<id>``."""
    from loraexp.config.load import build_config
    from loraexp.errors import ConfigError
    from loraexp.results.naming import configuration_name

    match = re.fullmatch(r"(.+)-s\d+", name)
    if match:
        return match.group(1)
    if record is None or not record.config:
        return name
    try:
        cfg = build_config({k: v for k, v in record.config.items() if k != "seed"})
    except ConfigError:
        return name
    return configuration_name(cfg) + "#" + cfg.run_id


PAIRWISE_MAX = 10  # configurations beyond which pairwise differences are left out (k·(k−1)/2 bootstraps)


def compare(sweep_dir: str | Path, records: list[tuple[str, RunRecord | None]], settings: Settings) -> Comparison:
    """Group ``records`` (run name, record or None) by configuration and compare them.

    Only completed runs count. The baseline of a configuration is the configuration of the
    baseline method (``settings.baseline``, else ``full`` when the sweep has full fine-tuning
    runs) that it would be with that method: same model, task, data and budget
    (:func:`baseline_key`). A configuration whose runs lack ``predictions.npz`` gets seed
    intervals but no paired difference. Pairwise differences between the other
    configurations are computed for at most :data:`PAIRWISE_MAX` of them.
    """
    groups: dict[str, list[tuple[str, RunRecord | None]]] = {}
    for name, record in dict(records).items():  # a name listed twice is one run
        groups.setdefault(_group_key(name, record), []).append((name, record))
    configurations = [_configuration(Path(sweep_dir), key, members, settings) for key, members in groups.items()]
    baseline_method = settings.baseline or ("full" if any(c.method == "full" for c in configurations) else None)
    baselines = {}
    if baseline_method:
        for c in configurations:
            c.baseline_key = baseline_key(c.config, baseline_method) if c.config is not None else None
            if c.method == baseline_method and c.completed and c.baseline_key is not None:
                c.is_baseline = True
                baselines.setdefault(c.baseline_key, c)
    for c in configurations:
        baseline = baselines.get(c.baseline_key)
        if baseline is not None and not c.is_baseline:
            c.baseline = baseline.name
            _compare_with(c, baseline, settings)
    _mark_pareto(configurations, settings.metric)
    others = [c for c in configurations if not c.is_baseline and settings.metric in c.scores]
    pairwise = []
    if len(others) <= PAIRWISE_MAX:
        for a, b in itertools.combinations(others, 2):
            difference = _difference(a, b, settings.metric, settings)
            if difference is not None:
                pairwise.append(Pairwise(a.name, b.name, difference))
    first = next((c.name for c in configurations if c.is_baseline), None)
    return Comparison(configurations, first, pairwise, settings)


def baseline_key(cfg, method: str) -> str | None:
    """The run id (seed 0) the configuration ``cfg`` has as ``method`` on a full-precision
    base: equal for a configuration and its baseline. None when that config is invalid."""
    from loraexp.config.load import apply_overrides
    from loraexp.errors import ConfigError
    from loraexp.results.naming import effective_identity

    try:
        return effective_identity(apply_overrides(cfg, {"method": method, "seed": 0, "quantization.method": "none",
                                                        "quantization.double_quant": False}))
    except ConfigError:
        return None


def _configuration(sweep_dir: Path, key: str, members, settings: Settings) -> Configuration:
    done = [(n, r) for n, r in members if r is not None and r.status == STATUS_COMPLETED]
    first = next((r for _, r in members if r is not None), None)
    c = Configuration(name=key.split("#")[0], key=key, method=(first.config.get("method") or "lora") if first else "?",
                      runs=[n for n, _ in members], completed=len(done),
                      seeds=[r.config.get("seed") for _, r in done], config=_config_of(first))
    if not done:
        return c
    for name, _ in done:
        path = sweep_dir / name / PREDICTIONS_FILE
        if not path.is_file():
            continue
        try:
            for metric, scores in load_scores(path).items():
                c.scores.setdefault(metric, []).append(scores)
        except Exception as exc:  # a truncated or foreign file must not end the summary  # noqa: BLE001
            logger.warning("%s: unreadable %s: %s", name, PREDICTIONS_FILE, exc)
    c.scores = {m: s for m, s in c.scores.items() if len(s) == len(done)}  # every seed, or none
    for metric in STAT_METRICS:  # the main metric and those scored per example
        if metric in c.scores:  # the same definition the bootstrap uses (Σ num / Σ den over examples)
            values = [s.value() for s in c.scores[metric]]
        else:
            values = [r.eval[metric] for _, r in done if isinstance(r.eval.get(metric), (int, float))]
        if len(values) == len(done) and (metric == settings.metric or metric in c.scores):
            c.intervals[metric] = seed_interval(values, settings.confidence)
    mean = lambda values: sum(values) / len(values) if values else math.nan  # noqa: E731
    c.trainable_params = mean([r.efficiency.get("trainable_params") for _, r in done
                               if r.efficiency.get("trainable_params") is not None])
    c.peak_mem_bytes = mean([r.training_efficiency.get("peak_mem_bytes") for _, r in done
                             if r.training_efficiency.get("peak_mem_bytes") is not None])
    c.train_seconds = mean([r.training_efficiency.get("train_seconds") for _, r in done
                            if r.training_efficiency.get("train_seconds") is not None])
    return c


def _config_of(record: RunRecord | None):
    """The :class:`~loraexp.config.schema.ExperimentConfig` of a record (None when unreadable)."""
    from loraexp.config.load import build_config
    from loraexp.errors import ConfigError

    if record is None or not record.config:
        return None
    try:
        return build_config(record.config)
    except ConfigError:
        return None


def _difference(config: Configuration, baseline: Configuration, metric: str, settings: Settings) -> Difference | None:
    if metric not in config.scores or metric not in baseline.scores:
        return None
    try:
        return paired_difference(config.scores[metric], baseline.scores[metric], settings.confidence,
                                 settings.resamples, settings.seed)
    except (ValueError, IndexError) as exc:
        logger.warning("no paired difference %s vs %s on %s: %s", config.name, baseline.name, metric, exc)
        return None


def _compare_with(config: Configuration, baseline: Configuration, settings: Settings) -> None:
    for metric in config.scores:
        difference = _difference(config, baseline, metric, settings)
        if difference is None or metric not in baseline.intervals:
            continue
        allowed = margin(baseline.intervals[metric].mean, settings.max_drop, settings.drop_unit)
        config.differences[metric] = difference
        config.verdicts[metric] = verdict(difference, allowed, lower_is_better=metric in LOWER_IS_BETTER)
        if metric == settings.metric:
            config.allowed_drop = allowed


def _mark_pareto(configurations: list[Configuration], metric: str) -> None:
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    quality = [sign * c.intervals[metric].mean if metric in c.intervals else math.nan for c in configurations]
    for flags, attribute in ((pareto_front([c.trainable_params for c in configurations], quality), "pareto_params"),
                             (pareto_front([c.train_seconds for c in configurations], quality), "pareto_time")):
        for c, flag in zip(configurations, flags):
            setattr(c, attribute, flag)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def configuration_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One flat row per configuration (``configurations.csv`` and the markdown table):
    per metric ``<m>_mean``, ``<m>_std``, ``<m>_ci_low``/``high``, and against the baseline
    ``<m>_diff``, ``<m>_diff_ci_low``/``high``, ``<m>_within_max_drop``."""
    rows = []
    for c in comparison.configurations:
        row: dict[str, Any] = {"configuration": c.name + (" (baseline)" if c.is_baseline else ""), "method": c.method,
                               "seeds": c.completed, "runs": len(c.runs)}
        for metric, iv in c.intervals.items():
            row.update({f"{metric}_mean": iv.mean, f"{metric}_std": iv.std, f"{metric}_ci_low": iv.low,
                        f"{metric}_ci_high": iv.high})
            d = c.differences.get(metric)
            if d is not None:
                row.update({f"{metric}_diff": d.estimate, f"{metric}_diff_ci_low": d.low,
                            f"{metric}_diff_ci_high": d.high, f"{metric}_within_max_drop": c.verdicts.get(metric)})
        row.update({"trainable_params": c.trainable_params, "peak_mem_bytes": c.peak_mem_bytes,
                    "train_seconds": c.train_seconds, "pareto_params": c.pareto_params, "pareto_time": c.pareto_time})
        rows.append(row)
    return rows


def render_markdown(comparison: Comparison) -> str:
    """The ``## Configurations`` section of ``summary.md``: a compact table (mean ± std, CI,
    difference to the baseline with its CI and verdict, per metric with intervals; costs;
    Pareto marks), the verdict lines and the pairwise differences."""
    s = comparison.settings
    metrics = [m for m in STAT_METRICS if any(m in c.intervals for c in comparison.configurations)]
    head = ["configuration", "seeds"]
    for m in metrics:
        head += [f"{m} mean ± std", f"{m} {s.confidence:.0%} CI"]
        if comparison.baseline:
            head += [f"Δ{m} vs baseline [{s.confidence:.0%} CI]", f"{m} within max drop"]
    head += ["trainable params", "peak memory (MiB)", "train time (s)", "Pareto (params / time)"]
    lines = ["## Configurations", "",
             f"Replicates grouped over seeds. CI over seeds: Student t; Δ: configuration − baseline on the same dev "
             f"examples, two-level bootstrap over examples and seeds ({s.resamples} resamples, seed {s.seed}). "
             f"Max drop: {s.max_drop:g} ({s.drop_unit}).", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for c in comparison.configurations:
        cells = [c.name + (" (baseline)" if c.is_baseline else ""), str(c.completed)]
        for m in metrics:
            iv = c.intervals.get(m)
            cells.append(f"{iv.mean:.4f} ± {_fmt(iv.std)}" if iv else "")
            cells.append(f"[{iv.low:.4f}, {iv.high:.4f}]" if iv and iv.low is not None else "")
            if comparison.baseline:
                d = c.differences.get(m)
                cells.append(f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if d else "")
                cells.append(c.verdicts.get(m, ""))
        cells += [f"{c.trainable_params:,.0f}" if not math.isnan(c.trainable_params) else "",
                  _fmt(c.peak_mem_bytes / 2**20, 0) if not math.isnan(c.peak_mem_bytes) else "",
                  _fmt(c.train_seconds, 1),
                  " / ".join(("yes" if f else "no") for f in (c.pareto_params, c.pareto_time))]
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = comparison.verdict_lines()
    if verdicts:
        lines += ["", "### Verdict", ""] + [f"- {v}" for v in verdicts]
    if comparison.pairwise:
        lines += ["", f"### Pairwise differences ({s.metric}, configurations other than the baseline)", ""]
        lines += [f"- {p.first} − {p.second}: {p.difference.estimate:+.4f} [{p.difference.low:+.4f}, "
                  f"{p.difference.high:+.4f}]: {'differ' if p.differ else 'no difference shown'}"
                  for p in comparison.pairwise]
    return "\n".join(lines) + "\n"
