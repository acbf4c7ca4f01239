"""The report's rank figures: where each adapter uses its rank (effective rank per layer and
module, ΔW spectra) and whether adapters of different rank or seed learn the same directions
(LoRA paper §7.2 subspace similarity, :mod:`loraexp.analysis.subspace`)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from loraexp.report.plotting import Figure, layer_and_kind, new_figure, palette, save, short_module
from loraexp.report.sweep_data import SweepData
from loraexp.results.comparison import Configuration

MAX_PANELS = 12  # rank-use panels drawn (the first configurations in sweep order)


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
    panels = [(c, _module_means(data, c, "effective_rank")) for c in data.lora_configurations()]
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
    fig = new_figure(3.4 * cols + 0.8, max(2.6, 0.32 * len(layers) + 1.6) * rows)
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
    path = save(fig, figures_dir / "rank_use.png")
    return Figure("rank_use", path, "Rank use per layer and module",
                  "Effective rank of ΔW = s·B·A (Roy & Vetterli 2007: exp of the entropy of the normalised singular "
                  "values) per layer and target module, mean over seeds; the panel title gives the adapter's r" +
                  (f"; {left_out} more configurations are left out (the first {MAX_PANELS} are drawn)." if left_out
                   else "."))


def spectra(data: SweepData, figures_dir: Path) -> Figure | None:
    """Singular values of ΔW of the most and the least used module (highest and lowest
    effective rank) of each LoRA configuration's first seed."""
    chosen = []
    for c in data.lora_configurations():
        _, record = data.completed_runs(c)[0]
        stats = {m: s for m, s in record.adapter_statistics.items() if s.get("singular_values")}
        if stats:
            ordered = sorted(stats, key=lambda m: stats[m]["effective_rank"])
            chosen.append((c, stats[ordered[-1]], ordered[-1], stats[ordered[0]], ordered[0]))
    if not chosen:
        return None
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 2)
    facts = {}
    for color, (c, most, most_name, least, least_name) in zip(palette(len(chosen)), chosen):
        for ax, stats, name in ((axes[0], most, most_name), (axes[1], least, least_name)):
            sigma = stats["singular_values"]
            ax.semilogy(range(1, len(sigma) + 1), [max(s, 1e-12) for s in sigma], "o-", ms=3, lw=1.2, color=color,
                        label=f"{data.label(c)}: {short_module(name)} (eff. rank {stats['effective_rank']:.1f})")
        facts[c.key] = {"most_used": most_name, "least_used": least_name}
    for ax, what in zip(axes, ("most used module", "least used module")):
        ax.set_xlabel("singular value index i")
        ax.set_ylabel("σ_i of ΔW (log scale)")
        ax.set_title(f"ΔW spectrum of the {what} (first seed)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="lower left")
    path = save(fig, figures_dir / "spectra.png")
    return Figure("spectra", path, "Singular-value spectra",
                  "Singular values of ΔW (factor-space SVD, docs/design.md) of each LoRA configuration's module with "
                  "the highest (left) and lowest (right) effective rank, first seed.", facts)



# -- subspace similarity ------------------------------------------------------------------------
def _rank_pair(data: SweepData) -> tuple[Configuration, Configuration] | None:
    """The LoRA configurations with the smallest and the largest r among those that differ in r
    only (and lora_alpha)."""
    by_rest: dict[str, list[Configuration]] = defaultdict(list)
    for c in data.lora_configurations():
        if c.config is None or not data.plain_delta(c):
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
    heat_ax.set_title(f"φ(i, j) at {short_module(module)}", fontsize=9)
    per_layer: dict[str, dict[int, float]] = defaultdict(dict)
    widths = {}
    for name in factors_1:
        if name in factors_2:
            layer, kind = layer_and_kind(name)
            per_layer[kind][layer if layer is not None else 0] = float(
                subspace_similarity(factors_1[name], factors_2[name])[0, 0])
            widths[kind] = factors_1[name].shape[1]
    for color, (kind, values) in zip(palette(len(per_layer)), per_layer.items()):
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
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 2, width_ratios=(1, 1.3))
    image, facts = _similarity_panel(axes, f_small, f_large, f"r={r1}", f"r={r2}", _middle_module(
        {m: f_small[m] for m in shared}))
    fig.colorbar(image, ax=axes[0], label="φ(A_small, A_large, i, j)")
    fig.suptitle(f"Subspace similarity of lora_A, r={r1} (seed {seed}) vs r={r2} (seed {other})", fontsize=10)
    facts.update({"small": small.name, "large": large.name, "r_small": r1, "r_large": r2, "seeds": [seed, other]})
    path = save(fig, figures_dir / "subspace_ranks.png")
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
    candidates = [c for c in data.lora_configurations()
                  if len(data.completed_runs(c)) >= 2 and c.config is not None and data.plain_delta(c)]
    if not candidates:
        return None
    chosen = max(candidates, key=lambda c: (c.method == "lora", c.config.lora["r"]))
    (name_1, record_1), (name_2, record_2) = data.completed_runs(chosen)[:2]
    f1, f2 = data.lora_A_factors(name_1), data.lora_A_factors(name_2)
    shared = [m for m in f1 if m in f2]
    if not shared:
        return None
    s1, s2 = record_1.config.get("seed"), record_2.config.get("seed")
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 2, width_ratios=(1, 1.3))
    image, facts = _similarity_panel(axes, f1, f2, f"seed {s1}", f"seed {s2}",
                                     _middle_module({m: f1[m] for m in shared}))
    fig.colorbar(image, ax=axes[0], label="φ(A_seed1, A_seed2, i, j)")
    fig.suptitle(f"Subspace similarity of lora_A between seeds {s1} and {s2}: {data.label(chosen)}", fontsize=10)
    facts.update({"configuration": chosen.name, "seeds": [s1, s2]})
    path = save(fig, figures_dir / "subspace_seeds.png")
    return Figure("subspace_seeds", path, f"Subspace similarity between seeds ({data.label(chosen)})",
                  f"φ between the lora_A factors of seeds {s1} and {s2} of {chosen.name}, drawn as for the rank "
                  "pair; a random initialisation of lora_A that training barely rotates gives near-random overlap.",
                  facts)

