"""``loraexp report SWEEP_DIR``: read the sweep, draw the figures, write ``report.md``,
``report.html`` and ``figures/*.png`` in the sweep directory (docs/results.md, "Report")."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loraexp.report.advice import SweepAdvice, sweep_advice
from loraexp.report.figures import Figure, all_figures
from loraexp.report.render import markdown_to_html
from loraexp.report.sweep_data import SweepData, load_sweep
from loraexp.results.comparison import render_markdown as configurations_markdown
from loraexp.results.statistics import LOWER_IS_BETTER
from loraexp.results.storage import atomic_write_text
from loraexp.results.summary import pruning_markdown

logger = logging.getLogger(__name__)

FIGURES_DIR = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CONFIRM_JSON = Path("confirm") / "confirm.json"


@dataclass
class Report:
    """What :func:`write_report` wrote and read."""

    markdown_path: Path
    html_path: Path
    figures: list[Figure]
    data: SweepData
    advice: SweepAdvice | None = None
    confirmation: dict[str, Any] | None = None


def write_report(sweep_dir: str | Path, energy: float = 0.9, data: SweepData | None = None,
                 advice: SweepAdvice | None = None) -> Report:
    """Write the sweep's report.

    Args:
        sweep_dir: ``<output_dir>/<sweep name>``.
        energy: the fraction of each module's ‖ΔW‖_F² the rank advice keeps (0 < f ≤ 1).
        data: the sweep already read (:func:`~loraexp.report.sweep_data.load_sweep`).
        advice: the sweep's rank advice already computed for ``energy`` (``--confirm``).

    Returns:
        The :class:`Report`; ``report.md``, ``report.html`` and ``figures/*.png`` are written
        (the two documents atomically).

    Raises:
        ConfigError: ``sweep_dir`` holds no readable run.
    """
    sweep_dir = Path(sweep_dir)
    data = data or load_sweep(sweep_dir)
    figures = all_figures(data, sweep_dir / FIGURES_DIR)
    advice = advice or sweep_advice(data, energy)
    confirmation = read_confirmation(sweep_dir, advice)
    title = f"loraexp report: {sweep_dir.name}"
    markdown_text = "\n".join([f"# {title}", "", header_line(data), "",
                               summary_section(data, figures, advice, confirmation),
                               configurations_markdown(data.comparison),
                               pruning_markdown([(n, data.records.get(n)) for n in data.names]),
                               figures_section(figures, data)])
    md_path, html_path = sweep_dir / REPORT_MD, sweep_dir / REPORT_HTML
    atomic_write_text(md_path, markdown_text)
    atomic_write_text(html_path, markdown_to_html(markdown_text, sweep_dir, title))
    return Report(md_path, html_path, figures, data, advice, confirmation)


def header_line(data: SweepData) -> str:
    records = [r for r in data.records.values() if r is not None]
    statuses: dict[str, int] = {}
    for name in data.names:
        record = data.records.get(name)
        status = record.status if record else "missing"
        statuses[status] = statuses.get(status, 0) + 1
    versions = next((r.versions for r in records if r.versions), {})
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Sweep directory `{data.sweep_dir}`: {len(data.names)} runs ("
            + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + f") in {len(data.configurations)} "
            f"configurations; main metric: dev {data.metric} ({data.direction}). Written {stamp} by loraexp "
            f"{versions.get('loraexp', '?')} (peft {versions.get('peft', '?')}, transformers "
            f"{versions.get('transformers', '?')}).")


def _fmt_interval(iv) -> str:
    return f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]" if iv.low is not None else f"{iv.mean:.4f} (one seed)"


def summary_section(data: SweepData, figures: list[Figure], advice: SweepAdvice | None,
                    confirmation: dict[str, Any] | None) -> str:
    """The text: the best configuration, which differences are significant, the figures'
    headline numbers and the rank advice."""
    metric, s = data.metric, data.comparison.settings
    lines = ["## Summary", ""]
    scored = [c for c in data.configurations if metric in c.intervals]
    if scored:
        sign = -1 if metric in LOWER_IS_BETTER or data.direction == "minimize" else 1
        best = max(scored, key=lambda c: sign * c.intervals[metric].mean)
        interval = (f" ({s.confidence:.0%} Student-t CI over {best.completed} seeds)" if best.completed > 1 else "")
        lines.append(f"- **Best mean dev {metric}**: {best.name} ({data.label(best)}), "
                     f"{_fmt_interval(best.intervals[metric])}{interval}. A best mean is not a significant winner: "
                     "see the differences below.")
    verdicts = data.comparison.verdict_lines()
    if verdicts:
        lines.append(f"- **Against the baseline** ({data.comparison.baseline}; paired bootstrap over dev examples and "
                     "seeds; `yes` when the whole interval lies above the allowed drop):")
        lines += [f"    - {v}" for v in verdicts]
    if data.comparison.pairwise:
        differ = [p for p in data.comparison.pairwise if p.differ]
        lines.append(f"- **Between configurations** ({len(data.comparison.pairwise)} pairs, paired bootstrap "
                     f"{s.confidence:.0%} CI on {metric}): " + (
                         "; ".join(f"{p.first} − {p.second} = {p.difference.estimate:+.4f} "
                                   f"[{p.difference.low:+.4f}, {p.difference.high:+.4f}]" for p in differ)
                         + f" differ; the other {len(data.comparison.pairwise) - len(differ)} pairs' intervals "
                           "include 0." if differ else "no pair's interval excludes 0."))
    lines += _figure_facts(figures, data)
    lines += ["", "### Rank advice", ""]
    if advice is None:
        lines.append("No advice: the sweep has no completed plain LoRA, rsLoRA, DoRA or LoRA+ configuration with "
                     "recorded spectra.")
    else:
        a = advice.advice
        lines += [advice.text, "", "```yaml", "lora:", f"  r: {a.r}", f"  lora_alpha: {a.lora_alpha:g}"]
        if a.rank_pattern:
            lines.append("  rank_pattern:")
            lines += [f"    {name}: {k}" for name, k in a.rank_pattern.items()]
            lines.append("  alpha_pattern:")
            lines += [f"    {name}: {v:g}" for name, v in a.alpha_pattern.items()]
        lines += ["```", ""]
        lines.append(confirmation_text(confirmation) if confirmation else
                     f"Not confirmed yet: `loraexp report {data.sweep_dir} --confirm` trains this adapter with the "
                     f"sweep's seeds ({', '.join(map(str, advice.seeds))}) and compares it with {advice.source.name}.")
    return "\n".join(lines) + "\n"


def _figure_facts(figures: list[Figure], data: SweepData) -> list[str]:
    lines = []
    by_name = {f.name: f for f in figures}
    for name, what in (("subspace_ranks", "different ranks"), ("subspace_seeds", "different seeds")):
        f = by_name.get(name)
        if f is None:
            continue
        facts = f.facts
        layers = [v for kind in facts["phi_11_per_layer"].values() for v in kind.values()]
        pair = (f"r = {facts['r_small']} vs r = {facts['r_large']}" if name == "subspace_ranks"
                else f"seeds {facts['seeds'][0]} vs {facts['seeds'][1]} of {facts['configuration']}")
        lines.append(f"- **Subspace similarity, {what}** ({pair}): top directions φ(1, 1) = {facts['phi_11']:.3f} at "
                     f"{facts['module']}; over all {len(layers)} modules φ(1, 1) ranges {min(layers):.3f}–"
                     f"{max(layers):.3f} (median {sorted(layers)[len(layers) // 2]:.3f}), against "
                     f"{facts['random_phi_11']:.4f} for random subspaces (1/d, d = {facts['in_features']}). Mean φ "
                     f"over the i×j grid {facts['phi_mean_grid']:.3f} vs {facts['random_phi_mean_grid']:.3f} random.")
    cka = by_name.get("cka")
    if cka is not None:
        lowest = sorted(((min(v), data.label(next(c for c in data.configurations if c.key == n)))
                         for n, v in cka.facts.items()))
        lines.append("- **Representation drift** (lowest per-layer CKA, mean over seeds): " +
                     ", ".join(f"{label} {value:.3f}" for value, label in lowest) + ".")
    return lines


def confirmation_text(confirmation: dict[str, Any]) -> str:
    """The sentence of a ``--confirm`` result (``confirm/confirm.json``)."""
    d = confirmation.get("difference")
    if confirmation.get("status") != "completed" or not d:
        return f"Confirmation run: {confirmation.get('status', 'incomplete')} ({confirmation.get('reason', '')})."
    c = confirmation
    return (f"**Confirmed with {c['seeds']} seeds** ({c['advised']} vs {c['source']}): "
            f"dev {c['metric']} {c['advised_mean']:.4f} vs {c['source_mean']:.4f}, "
            f"difference {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] ({c['confidence']:.0%} "
            f"paired bootstrap), allowed drop {c['allowed_drop']:.4f}: as good? **{c['verdict']}**"
            f"; trainable parameters {c['advised_params']:,.0f} vs {c['source_params']:,.0f}.")


def figures_section(figures: list[Figure], data: SweepData) -> str:
    lines = ["## Figures", ""]
    if not figures:
        lines.append("No figure: the sweep has no completed run.")
    for f in figures:
        rel = f.path.relative_to(data.sweep_dir).as_posix()
        lines += [f"### {f.title}", "", f"![{f.title}]({rel})", "", f"{f.caption}", ""]
    return "\n".join(lines)


CONFIRMATION_FIELDS = {"metric": str, "source": str, "advised": str, "seeds": int, "confidence": float,
                       "advised_mean": float, "source_mean": float, "allowed_drop": float, "verdict": str,
                       "advised_params": float, "source_params": float}


def read_confirmation(sweep_dir: Path, advice: SweepAdvice | None) -> dict[str, Any] | None:
    """``confirm/confirm.json`` of an earlier ``--confirm`` of this very advice (same ``lora``
    overrides), or None: absent, unreadable, of another advice, or with a field of the wrong
    type."""
    path = sweep_dir / CONFIRM_JSON
    if advice is None or not path.is_file():
        return None
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(out, dict) or out.get("overrides") != json.loads(json.dumps(advice.advice.lora_overrides())):
        return None
    if out.get("status") != "completed":
        return out if isinstance(out.get("status"), str) else None
    numbers = (int, float)
    fine = all(isinstance(out.get(k), numbers if kind in (int, float) else kind) for k, kind in
               CONFIRMATION_FIELDS.items())
    d = out.get("difference")
    fine = fine and isinstance(d, dict) and all(isinstance(d.get(k), numbers) for k in ("estimate", "low", "high"))
    return out if fine else None
