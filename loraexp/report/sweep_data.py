"""What a sweep report reads: the sweep's runs (their records, per-step history and saved
``lora_A`` factors), its configurations compared over seeds (:mod:`loraexp.results.comparison`) and
the config keys its configurations differ in (the ablated axes)."""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.errors import ConfigError, DataError
from loraexp.results.comparison import Comparison, Configuration, Settings, compare
from loraexp.results.record import STATUS_COMPLETED, RunRecord
from loraexp.results.storage import RunStore

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = Path("adapter") / "adapter_model.safetensors"
# Axis keys in the order a plot prefers them when several vary together (r and lora_alpha in a
# rank ablation: the axis is r).
AXIS_PREFERENCE = ("lora.r", "lora.target_modules", "method", "quantization.method", "quantization.double_quant",
                   "lora.lora_alpha", "training.learning_rate")
# Config keys that never define an axis: the seed is the replicate, not a configuration.
NOT_AXES = ("seed",)


@dataclass
class SweepData:
    """A sweep directory read for a report.

    ``names``: the sweep's runs in sweep order; ``records``: their records (None when
    ``metrics.json`` is missing); ``comparison``: the configurations over seeds; ``axes``: the
    config keys whose value differs between the non-baseline configurations, most telling
    first (:data:`AXIS_PREFERENCE`), a key that is a function of an earlier axis left out;
    ``axis_values``: per configuration name, its value of
    each axis.
    """

    sweep_dir: Path
    names: list[str]
    records: dict[str, RunRecord | None]
    comparison: Comparison
    direction: str
    axes: list[str] = field(default_factory=list)
    axis_values: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.comparison.settings.metric

    @property
    def configurations(self) -> list[Configuration]:
        return self.comparison.configurations

    def completed_runs(self, configuration: Configuration) -> list[tuple[str, RunRecord]]:
        """``(run name, record)`` of the configuration's completed runs, in seed order."""
        out = [(n, self.records[n]) for n in configuration.runs
               if self.records.get(n) is not None and self.records[n].status == STATUS_COMPLETED]
        return sorted(out, key=lambda item: item[1].config.get("seed", 0))

    def history(self, run_name: str) -> list[dict[str, Any]]:
        """The run's ``history.jsonl`` rows (empty when absent; unreadable lines skipped)."""
        path = self.sweep_dir / run_name / "history.jsonl"
        rows = []
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        return rows

    def lora_A_factors(self, run_name: str) -> dict[str, Any]:
        """The run's saved ``lora_A`` factors ``(r, in_features)`` by module name (without
        ``base_model.model.``); empty when the run saved no adapter.

        Raises:
            DataError: the adapter file is unreadable (truncated, not safetensors).
        """
        from safetensors.torch import load_file

        path = self.sweep_dir / run_name / ADAPTER_WEIGHTS
        if not path.is_file():
            return {}
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors' SafetensorError is no OSError  # noqa: BLE001
            raise DataError(f"{path} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
        out = {}
        for key, tensor in tensors.items():
            match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_A(?:\.[^.]+)?\.weight", key)
            if match:
                out[match.group(1)] = tensor
        return out

    def lora_configurations(self) -> list[Configuration]:
        """The configurations with an adapter (not full fine-tuning) and a completed run."""
        return [c for c in self.configurations if c.method != "full" and self.completed_runs(c)]

    def plain_delta(self, configuration: Configuration) -> bool:
        """Whether the configuration's adapters are ΔW = s·B·A on the unchanged base (not PiSSA,
        OLoRA or another initialisation that rewrote it: their saved adapter is PEFT's rank-2r
        conversion [A; A0], whose A0, from the SVD of W, is the same for every seed)."""
        runs = self.completed_runs(configuration)
        return bool(runs) and all(s.get("delta_form", "BA") == "BA" for _, r in runs
                                  for s in r.adapter_statistics.values())

    def values_of(self, configuration: Configuration) -> dict[str, Any]:
        """The configuration's value of each axis (empty when its config could not be rebuilt)."""
        return self.axis_values.get(configuration.key or configuration.name, {})

    def label(self, configuration: Configuration) -> str:
        """A short label: the configuration's axis values (``r=16``, ``method=dora``), or
        ``full FT (baseline)``; its name when the sweep has no axis."""
        if configuration.is_baseline:
            return f"{configuration.method} (baseline)" if configuration.method != "full" else "full FT (baseline)"
        values = self.values_of(configuration)
        if not self.axes:
            return configuration.name
        return ", ".join(f"{short_key(k)}={format_value(values.get(k))}" for k in self.axes)


def short_key(key: str) -> str:
    """``lora.r`` -> ``r``, ``quantization.method`` -> ``quantization``."""
    return {"quantization.method": "quantization", "training.learning_rate": "lr"}.get(key, key.split(".")[-1])


def format_value(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_names(sweep_dir: Path) -> list[str]:
    """The sweep's runs: those ``summary.csv`` lists (the latest invocation's), else every
    subdirectory holding a ``metrics.json``."""
    summary = sweep_dir / "summary.csv"
    if summary.is_file():
        try:
            with open(summary, newline="") as fh:
                names = [row["run_name"] for row in csv.DictReader(fh) if row.get("run_name")]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:  # unreadable: fall back to the directories
            logger.warning("%s is unreadable (%s); reporting on every run directory instead", summary, exc)
            names = []
        safe = [n for n in names if n not in (".", "..") and "/" not in n and "\\" not in n]
        if len(safe) < len(names):
            logger.warning("%s lists run names that are not a directory of the sweep; left out: %s", summary,
                           sorted(set(names) - set(safe))[:5])
        if safe:
            return list(dict.fromkeys(safe))
    return sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key in ("lora", "quantization", "training", "method_options"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def ablated_axes(configurations: list[Configuration]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The config keys (dotted) whose values differ between the non-baseline configurations,
    and every configuration's values of them. A key whose value follows from a preferred axis
    (lora_alpha = 2r in a rank ablation) is folded into it."""
    identities = {}
    for c in configurations:
        if c.config is None:
            continue
        identity = _flatten(c.config.identity())
        identity.setdefault("method", c.method)
        identities[c.key or c.name] = identity
    compared = [identities[c.key or c.name] for c in configurations
                if (c.key or c.name) in identities and not c.is_baseline]
    keys = sorted({k for d in compared for k in d} - set(NOT_AXES))
    varying = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True, default=str) for d in compared}) > 1]
    order = {k: i for i, k in enumerate(AXIS_PREFERENCE)}
    ranked = sorted(varying, key=lambda k: (order.get(k, len(order)), k))
    axes: list[str] = []
    for key in ranked:
        pattern = [json.dumps(d.get(key), default=str) for d in compared]
        if not any(_determined_by(pattern, [json.dumps(d.get(a), default=str) for d in compared]) for a in axes):
            axes.append(key)
    values = {name: {k: d.get(k) for k in axes} for name, d in identities.items()}
    return axes, values


def _determined_by(values: list[str], axis: list[str]) -> bool:
    """Whether ``values`` is a function of ``axis`` over the configurations (``lora_alpha`` of ``r``
    in a rank ablation; LoRA+'s ``loraplus_lr_ratio`` of ``method``)."""
    return len(set(zip(axis, values))) == len(set(axis))


def _sane(name: str, record: RunRecord | None) -> RunRecord | None:
    """``record`` when its sections have the types the report reads, else None (with a
    warning naming the run and the section): a hand-edited or foreign ``metrics.json`` is a
    missing run, not a traceback."""
    if record is None:
        return None
    checks = {"config": dict, "eval": dict, "efficiency": dict, "training_efficiency": dict,
              "adapter_statistics": dict, "representation_drift": dict, "versions": dict}
    bad = [key for key, kind in checks.items() if not isinstance(getattr(record, key), kind)]
    if not bad and not all(isinstance(s, dict) for s in record.adapter_statistics.values()):
        bad = ["adapter_statistics.<module>"]
    if bad:
        logger.warning("%s/metrics.json: %s of an unexpected type; the run is left out of the report", name,
                       ", ".join(f"`{key}`" for key in bad))
        return None
    return record


def load_sweep(sweep_dir: str | Path, settings: Settings | None = None,
               comparison: Comparison | None = None) -> SweepData:
    """Read ``sweep_dir`` for a report.

    Args:
        settings: the comparison settings; default: from the sweep's config (the first
            readable run's ``sweep`` section and objective).
        comparison: the sweep's comparison when the caller has just computed it (the end of a
            sweep), so its bootstraps are not run twice; it must cover the runs of
            ``summary.csv``.

    Raises:
        ConfigError: ``sweep_dir`` is not a directory or holds no run with a readable
            ``metrics.json``, or the first run's config cannot be read.
    """
    from loraexp.config.load import build_config
    from loraexp.sweep.metric import sweep_metric

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"`SWEEP_DIR` {str(sweep_dir)!r} is not a directory; give a sweep directory "
                          f"(<output_dir>/<sweep name>, the one holding summary.csv)")
    names = run_names(sweep_dir)
    records = {name: _sane(name, RunStore(sweep_dir / name, writable=False).read_record()) for name in names}
    first = next((r for r in records.values() if r is not None and r.config), None)
    if first is None:
        hint = (f"; it is a run directory: give the sweep directory {str(sweep_dir.parent)!r}"
                if (sweep_dir / "metrics.json").is_file() else "")
        raise ConfigError(f"`SWEEP_DIR` {str(sweep_dir)!r} holds no run with a readable metrics.json{hint}")
    try:
        cfg = build_config(first.config)
    except ConfigError as exc:
        raise ConfigError(f"{first.run_name}/metrics.json holds a config this loraexp cannot read: {exc}") from exc
    metric, direction = sweep_metric(cfg)
    settings = settings or Settings.from_config(cfg, metric)
    if comparison is None:
        comparison = compare(sweep_dir, list(records.items()), settings)
    axes, values = ablated_axes(comparison.configurations)
    return SweepData(sweep_dir, names, records, comparison, direction, axes, values)

