"""The report's figures, one PNG each: every function takes the
:class:`~loraexp.report.sweep_data.SweepData`, writes its PNG under ``figures_dir`` and returns
a :class:`~loraexp.report.plotting.Figure` with the caption and the numbers the report's text
quotes, or None when the sweep has nothing to draw for it (no LoRA run, one seed, no rank
pair). This module holds the metric, loss, drift and efficiency figures and the list of all of
them; the rank figures are in :mod:`loraexp.report.rank_figures`."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

from loraexp.errors import LoraexpError
from loraexp.report.plotting import Figure, new_figure, palette, save
from loraexp.report.rank_figures import rank_use, spectra, subspace_ranks, subspace_seeds
from loraexp.report.sweep_data import SweepData, format_value, short_key
from loraexp.results.comparison import Configuration

NUMERIC_AXES = ("lora.r", "lora.lora_alpha", "training.learning_rate")


# -- metric against the ablated axis ----------------------------------------------------------
def metric_vs_axis(data: SweepData, figures_dir: Path) -> Figure | None:
    """The main metric of each configuration against the first ablated axis (one line per value
    of the second axis, if any), mean over seeds with the Student-t interval as error bars, and
    the baseline's interval as a band."""
    metric, settings = data.metric, data.comparison.settings
    shown = [c for c in data.configurations if not c.is_baseline and metric in c.intervals]
    if not shown:
        return None
    axis = data.axes[0] if data.axes else None
    numeric = axis in NUMERIC_AXES and all(isinstance(data.values_of(c).get(axis), (int, float))
                                           for c in shown)
    categories = list(dict.fromkeys(format_value(data.values_of(c).get(axis)) if axis else data.label(c)
                                    for c in shown))
    series_axis = data.axes[1] if len(data.axes) > 1 else None
    series: dict[str, list[Configuration]] = defaultdict(list)
    for c in shown:
        series[format_value(data.values_of(c).get(series_axis)) if series_axis else ""].append(c)
    fig = new_figure()
    ax = fig.add_subplot()
    baselines = [c for c in data.configurations if c.is_baseline and metric in c.intervals]
    for index, baseline in enumerate(baselines):  # one per model/task/data/budget (a grid over models has several)
        iv = baseline.intervals[metric]
        name = data.label(baseline) if len(baselines) == 1 else f"baseline {baseline.name}"
        if iv.low is not None:
            ax.axhspan(iv.low, iv.high, color="0.6", alpha=0.3 / len(baselines), lw=0,
                       hatch=None if index == 0 else "//", label=f"{name}: {settings.confidence:.0%} CI")
        ax.axhline(iv.mean, color="0.35", lw=1.2, ls=("--", ":", "-.")[index % 3], label=f"{name}: mean {iv.mean:.4f}")
    baseline = baselines[0] if baselines else None
    references = _reference_lines(data, shown, metric)
    for index, (name, value) in enumerate(references.items()):
        ax.axhline(value, color=("tab:red", "tab:purple")[index % 2], lw=1.0, ls=":", label=f"{name}: {value:.4g}")
    colors = palette(len(series))
    width = 0.6 / max(1, len(series))
    for index, (value, members) in enumerate(series.items()):
        xs, ys, lows, highs = [], [], [], []
        for c in members:
            iv = c.intervals[metric]
            key = data.values_of(c).get(axis) if axis else None
            x = float(key) if numeric else categories.index(format_value(key) if axis else data.label(c))
            if not numeric and len(series) > 1:
                x += (index - (len(series) - 1) / 2) * width
            xs.append(x)
            ys.append(iv.mean)
            lows.append(iv.mean - iv.low if iv.low is not None else 0.0)
            highs.append(iv.high - iv.mean if iv.high is not None else 0.0)
        order = sorted(range(len(xs)), key=xs.__getitem__)
        label = (f"{short_key(series_axis)}={value}" if series_axis
                 else f"LoRA configurations (mean, {settings.confidence:.0%} CI)")
        ax.errorbar([xs[i] for i in order], [ys[i] for i in order],
                    yerr=[[lows[i] for i in order], [highs[i] for i in order]], fmt="o-" if numeric else "o",
                    capsize=4, color=colors[index], label=label, lw=1.5, ms=6)
    if numeric:
        ax.set_xscale("log", base=2 if axis in ("lora.r", "lora.lora_alpha") else 10)
        ticks = sorted({float(data.values_of(c)[axis]) for c in shown})
        ax.set_xticks(ticks, [format_value(int(t) if t.is_integer() else t) for t in ticks])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if max(map(len, categories)) > 8 else 0,
                      ha="right" if max(map(len, categories)) > 8 else "center")
        ax.set_xlim(-0.6, len(categories) - 0.4)
    seeds = sorted({c.completed for c in shown})
    bars = (f"{'/'.join(map(str, seeds))} seeds; error bars: {settings.confidence:.0%} Student-t CI" if max(seeds) > 1
            else "1 seed: no interval")
    ax.set_xlabel(_axis_title(axis) if axis else "configuration")
    ax.set_ylabel(f"dev {metric}" + (" (lower is better)" if data.direction == "minimize" else ""))
    ax.set_title(f"{metric} by {_axis_title(axis) if axis else 'configuration'} ({bars})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path = save(fig, figures_dir / "metric.png")
    return Figure("metric", path, f"Dev {metric} by {_axis_title(axis) if axis else 'configuration'}",
                  f"Mean dev {metric} over seeds per configuration with its {settings.confidence:.0%} Student-t "
                  f"interval over seeds" + (f"; the band is the {data.label(baseline)} interval" if baseline else "")
                  + "".join(f"; dotted: {name}" for name in references) + ".")


def _reference_lines(data: SweepData, shown: list[Configuration], metric: str) -> dict[str, float]:
    """Reference levels of ``metric`` every run of the sweep shares, drawn as dotted lines: the
    task's trivial baseline (``no_answer_<metric>`` in ``eval``: squad_v2's always-no-answer
    predictions) and the base model before training (``base_eval``: a causal LM's base, or
    squad_v2's untrained head), each only when all completed runs agree on it (the same base
    and dev set)."""
    records = [r for c in shown for _, r in data.completed_runs(c)]
    candidates = {"always no answer": [r.eval.get(f"no_answer_{metric}") for r in records],
                  "before training (adapters off)": [(r.base_eval or {}).get(metric) for r in records]}
    return {name: values[0] for name, values in candidates.items()
            if values and all(isinstance(v, (int, float)) for v in values) and max(values) - min(values) < 1e-9}


def _axis_title(axis: str | None) -> str:
    return {"lora.r": "rank r", "lora.lora_alpha": "lora_alpha", "lora.target_modules": "target modules",
            "method": "method", "quantization.method": "quantization", "training.learning_rate": "learning rate",
            "quantization.double_quant": "double quantization"}.get(axis or "", axis or "configuration")


# -- loss curves --------------------------------------------------------------------------------
def _curves(data: SweepData, c: Configuration, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps where every seed logged ``key`` and the mean, min and max over seeds there."""
    per_seed = []
    for name, _ in data.completed_runs(c):
        per_seed.append({row["step"]: row[key] for row in data.history(name)
                         if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), int)})
    if not per_seed:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    values = [[s[step] for s in per_seed] for step in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def loss_curves(data: SweepData, figures_dir: Path) -> Figure | None:
    """Training loss per configuration against the optimizer step (mean over seeds, band from
    the lowest to the highest seed) and, when runs evaluated during training (two or more
    evaluations), the eval loss beside it."""
    shown = [c for c in data.configurations if data.completed_runs(c)]
    curves = {c.key: _curves(data, c, "train/loss") for c in shown}
    shown = [c for c in shown if curves[c.key][0]]
    if not shown:
        return None
    evals = {c.key: _curves(data, c, "eval/loss") for c in shown}
    has_eval = any(len(evals[c.key][0]) >= 2 for c in shown)
    fig = new_figure(11 if has_eval else 7, 4.2)
    axes = fig.subplots(1, 2 if has_eval else 1, squeeze=False)[0]
    colors = palette(len(shown))
    for color, c in zip(colors, shown):
        for ax, (steps, mean, low, high) in zip(axes, (curves[c.key], evals[c.key])):
            if len(steps) < (2 if ax is not axes[0] else 1):
                continue
            ax.plot(steps, mean, color=color, lw=1.5, label=f"{data.label(c)} ({c.completed} seeds)")
            if c.completed > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
    for ax, what in zip(axes, ("training loss", "eval loss")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(what)
        ax.set_title(f"{what} (mean over seeds; band: min-max over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best", ncol=2 if len(shown) > 6 else 1)
    path = save(fig, figures_dir / "loss_curves.png")
    return Figure("loss_curves", path, "Loss curves",
                  "Training loss (as logged by the Trainer every `logging_steps`) against the optimizer step; the "
                  "line is the mean over seeds and the band spans the seeds" +
                  ("; right: eval loss during training." if has_eval else
                   "; the runs did not evaluate during training, so there is no eval curve."))




# -- representation drift -----------------------------------------------------------------------
def representation_drift(data: SweepData, figures_dir: Path) -> Figure | None:
    """Linear CKA per layer between the base and the trained model on the probe examples, mean
    over seeds per configuration (bars: min-max over seeds)."""
    sizes: dict[int, int] = defaultdict(int)
    for c in data.configurations:
        for _, r in data.completed_runs(c):
            if isinstance(r.representation_drift.get("cka"), list):
                sizes[r.representation_drift.get("probe_examples")] += 1
    if not sizes:
        return None
    probe_size = max(sizes, key=sizes.get)  # CKA values are comparable on one probe set only
    other_sizes = sum(n for size, n in sizes.items() if size != probe_size)
    rows = []
    for c in data.configurations:
        curves = [r.representation_drift["cka"] for _, r in data.completed_runs(c)
                  if isinstance(r.representation_drift.get("cka"), list)
                  and r.representation_drift.get("probe_examples") == probe_size]
        if curves and len({len(x) for x in curves}) == 1:
            rows.append((c, curves))
    if not rows:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    lowest = 1.0
    for color, (c, curves) in zip(palette(len(rows)), rows):
        layers = list(range(len(curves[0])))
        mean = [sum(col) / len(col) for col in zip(*curves)]
        lo = [m - min(col) for m, col in zip(mean, zip(*curves))]
        hi = [max(col) - m for m, col in zip(mean, zip(*curves))]
        ax.errorbar(layers, mean, yerr=[lo, hi], fmt="o-", ms=4, lw=1.3, capsize=3, color=color,
                    label=f"{data.label(c)} ({len(curves)} seeds)")
        lowest = min(lowest, min(mean))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("linear CKA(base, trained)")
    ax.set_title(f"Representation drift on {probe_size} dev examples (1 = unchanged)", fontsize=10)
    ax.set_ylim(max(0.0, lowest - 0.05 * (1 - lowest) - 0.005), 1.0 + 0.05 * (1 - lowest) + 0.001)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    path = save(fig, figures_dir / "cka.png")
    facts = {c.key: [sum(col) / len(col) for col in zip(*curves)] for c, curves in rows}
    return Figure("cka", path, "Representation drift (linear CKA)",
                  f"Linear CKA (Kornblith et al. 2019) between the base model's and the trained model's hidden "
                  f"states, each example mean-pooled over its tokens, on the first {probe_size} dev "
                  "examples; per layer, mean over seeds, bars from the lowest to the highest seed" +
                  (f"; {other_sizes} runs measured on another probe size are left out." if other_sizes else "."),
                  facts)


# -- efficiency ---------------------------------------------------------------------------------
def efficiency(data: SweepData, figures_dir: Path) -> Figure | None:
    """The main metric against trainable parameters (log scale) and against train time, each
    configuration a marker with its seed interval, the Pareto front joined."""
    metric, settings = data.metric, data.comparison.settings
    shown = [c for c in data.configurations if metric in c.intervals and not math.isnan(c.trainable_params)]
    if not shown:
        return None
    fig = new_figure(11, 4.4)
    axes = fig.subplots(1, 2)
    markers = "osD^v<>pPX*h"
    for ax, cost, flag, xlabel in ((axes[0], "trainable_params", "pareto_params", "trainable parameters (log scale)"),
                                   (axes[1], "train_seconds", "pareto_time", "train time per run (s)")):
        front = []
        for index, (color, c) in enumerate(zip(palette(len(shown)), shown)):
            iv = c.intervals[metric]
            x = getattr(c, cost)
            err = [[iv.mean - iv.low], [iv.high - iv.mean]] if iv.low is not None else None
            ax.errorbar([x], [iv.mean], yerr=err, fmt=markers[index % len(markers)], color=color, capsize=3, ms=7,
                        mfc=color if getattr(c, flag) else "white", label=data.label(c))
            if getattr(c, flag):
                front.append((x, iv.mean))
        if len(front) > 1:
            front.sort()
            ax.plot(*zip(*front), color="0.3", lw=1, ls="--", label="Pareto front (filled markers)")
        if cost == "trainable_params":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"dev {metric}")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("metric vs trainable parameters", fontsize=10)
    axes[1].set_title("metric vs train time", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    path = save(fig, figures_dir / "efficiency.png")
    return Figure("efficiency", path, "Efficiency",
                  f"Mean dev {metric} ({settings.confidence:.0%} CI over seeds) against trainable parameters and "
                  "train time (mean over seeds). Filled markers lie on the Pareto front (no configuration is both "
                  "cheaper and better); on this shared 2-core machine train times vary by about ±10%.")


FIGURES = (metric_vs_axis, loss_curves, rank_use, spectra, subspace_ranks, subspace_seeds, representation_drift,
           efficiency)


def all_figures(data: SweepData, figures_dir: Path) -> list[Figure]:
    """Every figure the sweep has data for, in report order. A figure whose files cannot be read
    (a truncated adapter, say) is left out with a warning naming the error; the others are drawn."""
    figures = []
    for make in FIGURES:
        try:
            figure = make(data, figures_dir)
        except (LoraexpError, OSError, ValueError, KeyError, RuntimeError) as exc:
            logging.getLogger(__name__).warning("figure %s not drawn: %s: %s", make.__name__, type(exc).__name__, exc)
            continue
        if figure is not None:
            figures.append(figure)
    return figures


