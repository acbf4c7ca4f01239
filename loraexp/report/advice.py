"""Rank advice for a sweep: which configuration's spectra it reads, and the advice
(:mod:`loraexp.analysis.rank_advice`) with its reasoning."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from loraexp.analysis.rank_advice import ModuleSpectra, RankAdvice, advise_ranks, reasoning
from loraexp.report.sweep_data import SweepData
from loraexp.results.comparison import Configuration

# Methods whose ΔW is s·B·A on an unchanged base, so rank_pattern and the energy rank apply as
# they are (PiSSA/OLoRA save a rank-2r converted adapter; full fine-tuning has no rank).
ADVISABLE_METHODS = ("lora", "rslora", "dora", "lora-plus")
logger = logging.getLogger(__name__)


@dataclass
class SweepAdvice:
    """The advice, the configuration it was read from and the paragraph explaining it."""

    advice: RankAdvice
    source: Configuration
    seeds: list[int]
    text: str


def advice_source(data: SweepData) -> Configuration | None:
    """The configuration whose spectra the advice reads: among the completed LoRA
    configurations of an advisable method, the one with the largest r (the most room to show
    how much rank is used), plain LoRA first, then the best mean metric."""
    candidates = [c for c in data.configurations if c.method in ADVISABLE_METHODS and c.config is not None
                  and data.plain_delta(c)]
    if not candidates:
        return None
    sign = 1 if data.direction == "maximize" else -1
    return max(candidates, key=lambda c: (c.config.lora["r"], c.method == "lora",
                                          sign * c.intervals[data.metric].mean if data.metric in c.intervals else 0))


def sweep_advice(data: SweepData, energy: float = 0.9) -> SweepAdvice | None:
    """Rank advice from :func:`advice_source`'s ΔW spectra (every completed seed), or None when
    the sweep has no advisable configuration or its records hold no spectra."""
    source = advice_source(data)
    if source is None:
        return None
    runs = data.completed_runs(source)
    modules: dict[str, ModuleSpectra] = {}
    for name, record in runs:
        shapes = None
        for module, stats in record.adapter_statistics.items():
            features = (stats.get("in_features"), stats.get("out_features"))
            if None in features:  # records written before loraexp kept the shapes
                shapes = _factor_shapes(data, name) if shapes is None else shapes
                features = shapes.get(module, (None, None))
            entry = _spectra(stats, features)
            if entry is None:
                logger.warning("%s/metrics.json: module %s has no usable r, shape or singular values; the rank "
                               "advice leaves it out", name, module)
                continue
            if module in modules:  # another seed of the module
                modules[module].singular_values.extend(entry.singular_values)
            else:
                modules[module] = entry
    if not modules:
        return None
    first = runs[0][1]
    use_rslora = bool((first.config.get("lora") or {}).get("use_rslora")) or source.method == "rslora"
    scalings = [m.scaling for m in modules.values() if m.scaling is not None]
    scaling = max(set(scalings), key=scalings.count) if scalings else 1.0  # the most common: the adapter's s
    advice = advise_ranks(modules, energy=energy, scaling=scaling, use_rslora=use_rslora)
    seeds = [r.config.get("seed") for _, r in runs]
    return SweepAdvice(advice, source, seeds, reasoning(advice, source.name, len(seeds)))


def _spectra(stats: dict, features: tuple) -> ModuleSpectra | None:
    """One seed's :class:`ModuleSpectra` of a module from its ``adapter_statistics`` entry, or
    None when a field is missing or of the wrong type."""
    sigma, r, scaling = stats.get("singular_values"), stats.get("r"), stats.get("scaling")
    numbers = (int, float)
    if (not isinstance(r, int) or r < 1 or not isinstance(sigma, list) or not sigma
            or not all(isinstance(s, numbers) for s in sigma) or not all(isinstance(f, int) for f in features)):
        return None
    return ModuleSpectra(r, features[0], features[1], [[float(s) for s in sigma]],
                         float(scaling) if isinstance(scaling, numbers) else None)


def _factor_shapes(data: SweepData, run_name: str) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` per module from the saved adapter (records written before
    loraexp kept them beside the spectra)."""
    from safetensors import safe_open

    path = data.sweep_dir / run_name / "adapter" / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    shapes: dict[str, dict[str, int]] = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                for factor, axis, what in (("lora_A", 1, "in"), ("lora_B", 0, "out")):
                    marker = f".{factor}."
                    if marker in key:
                        module = key.split(marker)[0].removeprefix("base_model.model.")
                        shapes.setdefault(module, {})[what] = fh.get_slice(key).get_shape()[axis]
    except Exception as exc:  # safetensors' SafetensorError is no OSError  # noqa: BLE001
        logger.warning("%s is not a readable safetensors file (%s); its shapes are unknown", path, exc)
        return {}
    return {m: (s["in"], s["out"]) for m, s in shapes.items() if "in" in s and "out" in s}
