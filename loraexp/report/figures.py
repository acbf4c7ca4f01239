"""The report's figures, one PNG each (matplotlib, drawn on a ``Figure`` object without pyplot's
global state). Every function takes the :class:`~loraexp.report.sweep_data.SweepData`, writes
its PNG under ``figures_dir`` and returns a :class:`Figure` with the caption and the numbers the
report's text quotes, or None when the sweep has nothing to draw for it (no LoRA run, one seed,
no rank pair)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.comparison import Configuration
from loraexp.errors import LoraexpError
from loraexp.report.sweep_data import SweepData, format_value, short_key

DPI = 150
MAX_PANELS = 12  # rank-use panels drawn (the first configurations in sweep order)
NUMERIC_AXES = ("lora.r", "lora.lora_alpha", "training.learning_rate")
LAYER_PATTERN = re.compile(r"^(?:.*?\.)?(\d+)\.(.+)$")  # bert.encoder.layer.3.attention.self.query


@dataclass
class Figure:
    """One written figure: file ``path``, ``title``, ``caption`` (what it shows and how to read
    it) and ``facts`` (figures the report's text quotes)."""

    name: str
    path: Path
    title: str
    caption: str
    facts: dict[str, Any] = field(default_factory=dict)


def _new_figure(width: float = 7.0, height: float = 4.2, **kwargs):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def layer_and_kind(module: str) -> tuple[int | None, str]:
    """``bert.encoder.layer.3.attention.self.query`` -> ``(3, "attention.self.query")``; a
    module outside a numbered block -> ``(None, name)``."""
    match = LAYER_PATTERN.match(module)
    return (int(match.group(1)), match.group(2)) if match else (None, module)


def _lora_configurations(data: SweepData) -> list[Configuration]:
    return [c for c in data.configurations if c.method != "full" and data.completed_runs(c)]


def plain_delta(data: SweepData, c: Configuration) -> bool:
    """Whether the configuration's adapters are ΔW = s·B·A on the unchanged base (not PiSSA,
    OLoRA or another initialisation that rewrote it: their saved adapter is PEFT's rank-2r
    conversion [A; A0], whose A0, from the SVD of W, is the same for every seed)."""
    runs = data.completed_runs(c)
    return bool(runs) and all(s.get("delta_form", "BA") == "BA" for _, r in runs
                              for s in r.adapter_statistics.values())


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
    fig = _new_figure()
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
    colors = _colors(len(series))
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
    path = _save(fig, figures_dir / "metric.png")
    return Figure("metric", path, f"Dev {metric} by {_axis_title(axis) if axis else 'configuration'}",
                  f"Mean dev {metric} over seeds per configuration with its {settings.confidence:.0%} Student-t "
                  f"interval over seeds" + (f"; the band is the {data.label(baseline)} interval." if baseline else "."))


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
    fig = _new_figure(11 if has_eval else 7, 4.2)
    axes = fig.subplots(1, 2 if has_eval else 1, squeeze=False)[0]
    colors = _colors(len(shown))
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
    path = _save(fig, figures_dir / "loss_curves.png")
    return Figure("loss_curves", path, "Loss curves",
                  "Training loss (as logged by the Trainer every `logging_steps`) against the optimizer step; the "
                  "line is the mean over seeds and the band spans the seeds" +
                  ("; right: eval loss during training." if has_eval else
                   "; the runs did not evaluate during training, so there is no eval curve."))


# -- rank use ---------------------------------------------------------------------------------
def _module_means(data: SweepData, c: Configuration, key: str) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for _, record in data.completed_runs(c):
        for module, stats in record.adapter_statistics.items():
            if isinstance(stats.get(key), (int, float)):
                values[module].append(float(stats[key]))
    return {m: sum(v) / len(v) for m, v in values.items()}


def rank_use(data: SweepData, figures_dir: Path) -> Figure | None:
    """A layer x module heatmap of the effective rank of ΔW (mean over seeds) per LoRA
    configuration, one panel each, on one colour scale."""
    panels = [(c, _module_means(data, c, "effective_rank")) for c in _lora_configurations(data)]
    panels = [(c, m) for c, m in panels if m]
    if not panels:
        return None
    left_out = max(0, len(panels) - MAX_PANELS)
    panels = panels[:MAX_PANELS]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    kinds = list(dict.fromkeys(layer_and_kind(m)[1] for _, means in panels for m in means))
    layers = sorted({layer_and_kind(m)[0] for _, means in panels for m in means if layer_and_kind(m)[0] is not None})
    if not layers:
        layers = [0]
    vmax = max(v for _, means in panels for v in means.values()) or 1.0
    fig = _new_figure(3.4 * cols + 0.8, max(2.6, 0.32 * len(layers) + 1.6) * rows)
    grid = fig.subplots(rows, cols, squeeze=False)
    image = None
    for index, (c, means) in enumerate(panels):
        ax = grid[index // cols][index % cols]
        matrix = [[math.nan] * len(kinds) for _ in layers]
        for module, value in means.items():
            layer, kind = layer_and_kind(module)
            matrix[layers.index(layer) if layer in layers else 0][kinds.index(kind)] = value
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        if len(layers) * len(kinds) <= 80:
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    if not math.isnan(value):
                        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                                color="white" if value < 0.6 * vmax else "black")
        ax.set_xticks(range(len(kinds)), [k.split(".")[-1] if len({x.split(".")[-1] for x in kinds}) == len(kinds)
                                          else k for k in kinds], rotation=30, ha="right", fontsize=7)
        step = max(1, len(layers) // 12)
        ax.set_yticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)], fontsize=7)
        ax.set_ylabel("layer")
        r = data.completed_runs(c)[0][1].config.get("lora", {}).get("r")
        label = data.label(c)
        ax.set_title(label if label.startswith("r=") else f"{label} (r={r})", fontsize=9)
    for index in range(len(panels), rows * cols):
        grid[index // cols][index % cols].set_visible(False)
    fig.colorbar(image, ax=grid, label="effective rank of ΔW (exp of spectral entropy)", shrink=0.9)
    path = _save(fig, figures_dir / "rank_use.png")
    return Figure("rank_use", path, "Rank use per layer and module",
                  "Effective rank of ΔW = s·B·A (Roy & Vetterli 2007: exp of the entropy of the normalised singular "
                  "values) per layer and target module, mean over seeds; the panel title gives the adapter's r" +
                  (f"; {left_out} more configurations are left out (the first {MAX_PANELS} are drawn)." if left_out
                   else "."))


def spectra(data: SweepData, figures_dir: Path) -> Figure | None:
    """Singular values of ΔW of the most and the least used module (highest and lowest
    effective rank) of each LoRA configuration's first seed."""
    chosen = []
    for c in _lora_configurations(data):
        _, record = data.completed_runs(c)[0]
        stats = {m: s for m, s in record.adapter_statistics.items() if s.get("singular_values")}
        if stats:
            ordered = sorted(stats, key=lambda m: stats[m]["effective_rank"])
            chosen.append((c, stats[ordered[-1]], ordered[-1], stats[ordered[0]], ordered[0]))
    if not chosen:
        return None
    fig = _new_figure(11, 4.2)
    axes = fig.subplots(1, 2)
    facts = {}
    for color, (c, most, most_name, least, least_name) in zip(_colors(len(chosen)), chosen):
        for ax, stats, name in ((axes[0], most, most_name), (axes[1], least, least_name)):
            sigma = stats["singular_values"]
            ax.semilogy(range(1, len(sigma) + 1), [max(s, 1e-12) for s in sigma], "o-", ms=3, lw=1.2, color=color,
                        label=f"{data.label(c)}: {_short_module(name)} (eff. rank {stats['effective_rank']:.1f})")
        facts[c.key] = {"most_used": most_name, "least_used": least_name}
    for ax, what in zip(axes, ("most used module", "least used module")):
        ax.set_xlabel("singular value index i")
        ax.set_ylabel("σ_i of ΔW (log scale)")
        ax.set_title(f"ΔW spectrum of the {what} (first seed)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="lower left")
    path = _save(fig, figures_dir / "spectra.png")
    return Figure("spectra", path, "Singular-value spectra",
                  "Singular values of ΔW (factor-space SVD, docs/design.md) of each LoRA configuration's module with "
                  "the highest (left) and lowest (right) effective rank, first seed.", facts)


def _short_module(name: str) -> str:
    layer, kind = layer_and_kind(name)
    return f"L{layer}.{kind.split('.')[-1]}" if layer is not None else name.split(".")[-1]


# -- subspace similarity ------------------------------------------------------------------------
def _rank_pair(data: SweepData) -> tuple[Configuration, Configuration] | None:
    """The LoRA configurations with the smallest and the largest r among those that differ in r
    only (and lora_alpha)."""
    by_rest: dict[str, list[Configuration]] = defaultdict(list)
    for c in _lora_configurations(data):
        if c.config is None or not plain_delta(data, c):
            continue
        identity = c.config.identity()
        lora = dict(identity.get("lora", {}))
        lora.pop("r", None)
        lora.pop("lora_alpha", None)
        identity = {**identity, "lora": lora, "seed": None}
        by_rest[repr(sorted(identity.items(), key=str))].append(c)
    pairs = []
    for group in by_rest.values():
        ranks = {c.config.lora["r"]: c for c in group}
        if len(ranks) >= 2:
            pairs.append((ranks[min(ranks)], ranks[max(ranks)]))
    return max(pairs, key=lambda p: p[1].config.lora["r"] - p[0].config.lora["r"]) if pairs else None


def _similarity_panel(fig_axes, factors_1, factors_2, title_1: str, title_2: str, module: str):
    from loraexp.analysis.subspace import random_expectation, subspace_similarity

    heat_ax, layer_ax = fig_axes
    phi = subspace_similarity(factors_1[module], factors_2[module])
    d = factors_1[module].shape[1]
    image = heat_ax.imshow(phi.numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                           extent=(0.5, phi.shape[1] + 0.5, phi.shape[0] + 0.5, 0.5))
    from matplotlib.ticker import MaxNLocator

    heat_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    heat_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    heat_ax.set_xlabel(f"j (top-j directions of {title_2})")
    heat_ax.set_ylabel(f"i (top-i of {title_1})")
    heat_ax.set_title(f"φ(i, j) at {_short_module(module)}", fontsize=9)
    per_layer: dict[str, dict[int, float]] = defaultdict(dict)
    widths = {}
    for name in factors_1:
        if name in factors_2:
            layer, kind = layer_and_kind(name)
            per_layer[kind][layer if layer is not None else 0] = float(
                subspace_similarity(factors_1[name], factors_2[name])[0, 0])
            widths[kind] = factors_1[name].shape[1]
    for color, (kind, values) in zip(_colors(len(per_layer)), per_layer.items()):
        layers = sorted(values)
        layer_ax.plot(layers, [values[layer] for layer in layers], "o-", color=color, ms=4, lw=1.3,
                      label=kind.split(".")[-1])
    baselines = sorted({random_expectation(1, 1, w) for w in widths.values()})
    layer_ax.axhline(baselines[-1], color="0.4", ls=":", lw=1.2,
                     label=f"random subspaces: 1/d = {baselines[-1]:.4f}")
    layer_ax.set_yscale("log")
    layer_ax.set_ylim(min(0.3 * baselines[0], *(v for values in per_layer.values() for v in values.values() if v > 0)),
                      1.5)
    layer_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    layer_ax.set_xlabel("layer")
    layer_ax.set_ylabel("φ(1, 1): top directions' overlap (log scale)")
    layer_ax.set_title("per layer, i = j = 1", fontsize=9)
    layer_ax.grid(alpha=0.3)
    layer_ax.legend(fontsize=7, loc="best")
    top = {kind: {str(k): v for k, v in values.items()} for kind, values in per_layer.items()}
    return image, {"module": module, "phi_11": float(phi[0, 0]), "in_features": d,
                   "random_phi_11": random_expectation(1, 1, d), "phi_11_per_layer": top,
                   "phi_mean_grid": float(phi.mean()), "random_phi_mean_grid": float(sum(
                       random_expectation(i, j, d) for i in range(1, phi.shape[0] + 1)
                       for j in range(1, phi.shape[1] + 1)) / phi.numel())}


def _middle_module(factors: dict[str, Any]) -> str:
    """The first target module of the middle layer (the LoRA paper reads layer 48 of 96)."""
    layers = sorted({layer_and_kind(m)[0] for m in factors if layer_and_kind(m)[0] is not None})
    if not layers:
        return next(iter(factors))
    middle = layers[len(layers) // 2]
    return next(m for m in factors if layer_and_kind(m)[0] == middle)


def subspace_ranks(data: SweepData, figures_dir: Path) -> Figure | None:
    """LoRA paper §7.2 / Figure 3: φ between the adapters of the smallest and the largest r of
    two different seeds (where there are two), for one module as a heatmap (i over the smaller,
    j over the larger) and at i = j = 1 per layer, against the random-subspace expectation."""
    pair = _rank_pair(data)
    if pair is None:
        return None
    small, large = pair
    runs_small, runs_large = dict(data.completed_runs(small)), dict(data.completed_runs(large))
    seeds_small = {r.config.get("seed"): n for n, r in runs_small.items()}
    seeds_large = {r.config.get("seed"): n for n, r in runs_large.items()}
    # Different seeds where there are two: with one seed, the first module's lora_A of the larger
    # adapter starts with the smaller one's rows (the same random stream), which would count as overlap.
    pairs = [(a, b) for a in sorted(seeds_small) for b in sorted(seeds_large)]
    seed, other = next(((a, b) for a, b in pairs if a != b), pairs[0])
    f_small = data.lora_A_factors(seeds_small[seed])
    f_large = data.lora_A_factors(seeds_large[other])
    shared = [m for m in f_small if m in f_large]
    if not shared:
        return None
    r1, r2 = small.config.lora["r"], large.config.lora["r"]
    fig = _new_figure(11, 4.2)
    axes = fig.subplots(1, 2, width_ratios=(1, 1.3))
    image, facts = _similarity_panel(axes, f_small, f_large, f"r={r1}", f"r={r2}", _middle_module(
        {m: f_small[m] for m in shared}))
    fig.colorbar(image, ax=axes[0], label="φ(A_small, A_large, i, j)")
    fig.suptitle(f"Subspace similarity of lora_A, r={r1} (seed {seed}) vs r={r2} (seed {other})", fontsize=10)
    facts.update({"small": small.name, "large": large.name, "r_small": r1, "r_large": r2, "seeds": [seed, other]})
    path = _save(fig, figures_dir / "subspace_ranks.png")
    note = "" if other != seed else ": one seed only, so the first module's initial rows are shared"
    return Figure("subspace_ranks", path, f"Subspace similarity between r = {r1} and r = {r2}",
                  f"LoRA paper §7.2: φ(A_r{r1}, A_r{r2}, i, j) = ‖U_iᵀ V_j‖_F² / min(i, j) from the right-singular "
                  f"vectors of the saved lora_A factors (r = {r1} seed {seed}, r = {r2} seed {other}{note}). Left: one "
                  f"module, i over the r = {r1} "
                  f"adapter's top directions, j over the r = {r2} adapter's. Right: φ(1, 1) per layer; the dotted "
                  f"line is the expectation for random subspaces, max(i, j)/d = 1/d.", facts)


def subspace_seeds(data: SweepData, figures_dir: Path) -> Figure | None:
    """φ between the adapters of two seeds of the same configuration (the largest-r LoRA
    configuration with two seeds, plain LoRA preferred), as :func:`subspace_ranks` draws it."""
    candidates = [c for c in _lora_configurations(data)
                  if len(data.completed_runs(c)) >= 2 and c.config is not None and plain_delta(data, c)]
    if not candidates:
        return None
    chosen = max(candidates, key=lambda c: (c.method == "lora", c.config.lora["r"]))
    (name_1, record_1), (name_2, record_2) = data.completed_runs(chosen)[:2]
    f1, f2 = data.lora_A_factors(name_1), data.lora_A_factors(name_2)
    shared = [m for m in f1 if m in f2]
    if not shared:
        return None
    s1, s2 = record_1.config.get("seed"), record_2.config.get("seed")
    fig = _new_figure(11, 4.2)
    axes = fig.subplots(1, 2, width_ratios=(1, 1.3))
    image, facts = _similarity_panel(axes, f1, f2, f"seed {s1}", f"seed {s2}",
                                     _middle_module({m: f1[m] for m in shared}))
    fig.colorbar(image, ax=axes[0], label="φ(A_seed1, A_seed2, i, j)")
    fig.suptitle(f"Subspace similarity of lora_A between seeds {s1} and {s2}: {data.label(chosen)}", fontsize=10)
    facts.update({"configuration": chosen.name, "seeds": [s1, s2]})
    path = _save(fig, figures_dir / "subspace_seeds.png")
    return Figure("subspace_seeds", path, f"Subspace similarity between seeds ({data.label(chosen)})",
                  f"φ between the lora_A factors of seeds {s1} and {s2} of {chosen.name}, drawn as for the rank "
                  "pair; a random initialisation of lora_A that training barely rotates gives near-random overlap.",
                  facts)


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
    fig = _new_figure()
    ax = fig.add_subplot()
    lowest = 1.0
    for color, (c, curves) in zip(_colors(len(rows)), rows):
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
    path = _save(fig, figures_dir / "cka.png")
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
    fig = _new_figure(11, 4.4)
    axes = fig.subplots(1, 2)
    markers = "osD^v<>pPX*h"
    for ax, cost, flag, xlabel in ((axes[0], "trainable_params", "pareto_params", "trainable parameters (log scale)"),
                                   (axes[1], "train_seconds", "pareto_time", "train time per run (s)")):
        front = []
        for index, (color, c) in enumerate(zip(_colors(len(shown)), shown)):
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
    path = _save(fig, figures_dir / "efficiency.png")
    return Figure("efficiency", path, "Efficiency",
                  f"Mean dev {metric} ({settings.confidence:.0%} CI over seeds) against trainable parameters and "
                  "train time (mean over seeds). Filled markers lie on the Pareto front (no configuration is both "
                  "cheaper and better); on this shared 2-core machine train times vary by about ±10%.")


FIGURES = (metric_vs_axis, loss_curves, rank_use, spectra, subspace_ranks, subspace_seeds, representation_drift,
           efficiency)


def all_figures(data: SweepData, figures_dir: Path) -> list[Figure]:
    """Every figure the sweep has data for, in report order. A figure whose files cannot be read
    (a truncated adapter, say) is left out with a warning naming the error; the others are drawn."""
    import logging

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

