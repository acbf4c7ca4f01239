"""The sweep summary: one row per run, derived from each run's :class:`~loraexp.results.record.RunRecord`.

``summary.csv`` and ``summary.md`` hold every column (:data:`COLUMNS`; a column no run has a
value for is left out of the markdown); the console shows the key ones (:mod:`loraexp.cli.console`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from loraexp.results.record import STATUS_PRUNED, RunRecord
from loraexp.results.storage import RunStore, atomic_write_text

SUMMARY_LOCK = ".summary.lock"
SUMMARY_LOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Column:
    """A summary column: its name and how a record gives its value (None: no value)."""

    name: str
    value: Callable[[RunRecord], Any]


def _lora(r: RunRecord) -> dict[str, Any]:
    return r.config.get("lora") or {}


def _training(r: RunRecord) -> dict[str, Any]:
    return r.config.get("training") or {}


def _is_lora(r: RunRecord) -> bool:
    return r.config.get("method", "lora") != "full"


def _targets(r: RunRecord) -> str | None:
    targets = _lora(r).get("target_modules")
    return targets if isinstance(targets, str) or targets is None else "+".join(targets)


def _quantization(r: RunRecord) -> str | None:
    q = r.config.get("quantization") or {}
    method = q.get("method", "none")
    return None if method == "none" else method + ("+dq" if q.get("double_quant") else "")


def _verification(r: RunRecord) -> str | None:
    if r.verification.passed:
        return "passed"
    return "failed" if r.verification.observed else None


COLUMNS: tuple[Column, ...] = (
    Column("run_name", lambda r: r.run_name),
    Column("status", lambda r: r.status),
    Column("failed_step", lambda r: r.failed_step),
    Column("method", lambda r: r.config.get("method") or "lora"),
    Column("r", lambda r: _lora(r).get("r") if _is_lora(r) else None),
    Column("lora_alpha", lambda r: _lora(r).get("lora_alpha") if _is_lora(r) else None),
    Column("target_modules", lambda r: _targets(r) if _is_lora(r) else None),
    Column("quantization", _quantization),
    Column("learning_rate", lambda r: (r.resolved.learning_rate if r.resolved and r.resolved.learning_rate
                                       else _training(r).get("learning_rate"))),
    Column("seed", lambda r: r.config.get("seed")),
    Column("eval_accuracy", lambda r: r.eval.get("accuracy")),
    Column("base_accuracy", lambda r: (r.base_eval or {}).get("accuracy")),
    Column("eval_f1", lambda r: r.eval.get("f1")),
    Column("eval_loss", lambda r: r.eval.get("loss") if "perplexity" in r.eval else None),
    Column("eval_perplexity", lambda r: r.eval.get("perplexity")),
    Column("base_perplexity", lambda r: (r.base_eval or {}).get("perplexity")),
    Column("eval_exact_match", lambda r: r.eval.get("exact_match")),
    Column("eval_exact", lambda r: r.eval.get("exact")),  # squad_v2 (percent), with its breakdown
    Column("eval_HasAns_f1", lambda r: r.eval.get("HasAns_f1")),
    Column("eval_NoAns_f1", lambda r: r.eval.get("NoAns_f1")),
    Column("no_answer_f1", lambda r: r.eval.get("no_answer_f1")),
    Column("base_f1", lambda r: (r.base_eval or {}).get("f1")),
    Column("base_HasAns_f1", lambda r: (r.base_eval or {}).get("HasAns_f1")),
    Column("base_exact_match", lambda r: (r.base_eval or {}).get("exact_match")),
    Column("lora_params", lambda r: r.efficiency.get("lora_params")),
    Column("trainable_params", lambda r: r.efficiency.get("trainable_params")),
    Column("trainable_pct", lambda r: r.efficiency.get("trainable_pct")),
    Column("trainable_bytes", lambda r: r.training_efficiency.get("trainable_bytes")),
    Column("optimizer_state_bytes", lambda r: r.training_efficiency.get("optimizer_state_bytes")),
    Column("base_weight_bytes", lambda r: r.training_efficiency.get("base_weight_bytes")),
    Column("peak_mem_bytes", lambda r: r.training_efficiency.get("peak_mem_bytes")),
    Column("tokens_per_s", lambda r: r.training_efficiency.get("tokens_per_s")),
    Column("mean_effective_rank", lambda r: r.lora_rank.get("mean_effective_rank")),
    Column("mean_utilization", lambda r: r.lora_rank.get("mean_utilization")),
    Column("merge_max_abs_diff", lambda r: r.verification.merge.max_abs_diff),
    Column("reload_max_abs_diff", lambda r: r.verification.reload.max_abs_diff),
    Column("quantization_gap", lambda r: r.verification.merge.quantization_gap_max_abs_diff),
    Column("verification", _verification),
    Column("train_seconds", lambda r: r.training_efficiency.get("train_seconds")),
    Column("trained_steps", lambda r: r.completion.trained_steps),
    Column("pruned_at_step", lambda r: r.pruning.step if r.pruning else None),
    Column("rung_value", lambda r: r.pruning.value if r.pruning else None),
    Column("loss_decrease_pct", lambda r: r.verification.convergence.loss_decrease_pct),
    Column("run_id", lambda r: r.run_id or None),
    Column("error", lambda r: (r.error or "")[:120] or None),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)


def summary_row(record: RunRecord) -> dict[str, Any]:
    """Every column of :data:`COLUMNS` for one run."""
    return {c.name: c.value(record) for c in COLUMNS}


def missing_row(run_name: str) -> dict[str, Any]:
    """The row of a run without a readable ``metrics.json``."""
    return {**dict.fromkeys(COLUMN_NAMES), "run_name": run_name, "status": "missing"}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``rows`` (a column with no value in any row is dropped)."""
    kept = [c for c in COLUMN_NAMES if any(r.get(c) not in (None, "") for r in rows)]
    lines = ["| " + " | ".join(kept) + " |", "| " + " | ".join("---" for _ in kept) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in kept) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass
class SweepSummary:
    """What :func:`write_sweep_summary` wrote: one row per run (every column of
    :data:`COLUMNS`) and, when asked for, the configurations' comparison."""

    rows: list[dict[str, Any]]
    comparison: Any = None  # loraexp.results.comparison.Comparison


def write_sweep_summary(sweep_dir: str | os.PathLike, run_names: list[str], settings: Any = None) -> SweepSummary:
    """Write ``summary.csv`` and ``summary.md`` for ``run_names`` (runs without a readable
    ``metrics.json`` are listed as ``missing``). With ``settings`` (a
    :class:`loraexp.results.comparison.Settings`), the runs are also grouped into configurations and
    compared (:func:`loraexp.results.comparison.compare`): ``configurations.csv`` and the
    ``## Configurations`` section of ``summary.md``. A sweep with a pruner gets a ``## Pruning``
    section (:func:`loraexp.sweep.pruning.pruning_markdown`).

    Holds ``<sweep_dir>/.summary.lock`` while reading and writing, so processes sharing the
    sweep directory (workers, trials) write one after the other, each from the latest files.

    Raises:
        filelock.Timeout: the lock was held for more than ``SUMMARY_LOCK_TIMEOUT_S`` seconds.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(sweep_dir / SUMMARY_LOCK, timeout=SUMMARY_LOCK_TIMEOUT_S):
        records = [(name, RunStore(sweep_dir / name).read_record()) for name in run_names]
        rows = [summary_row(r) if r else missing_row(n) for n, r in records]
        atomic_write_text(sweep_dir / "summary.csv", _csv(rows, COLUMN_NAMES))
        markdown = "## Runs\n\n" + render_markdown(rows)
        comparison = None
        if settings is not None:
            from loraexp.results import comparison as cmp

            comparison = cmp.compare(sweep_dir, records, settings)
            table = cmp.configuration_rows(comparison)
            names = list(dict.fromkeys(k for row in table for k in row))
            atomic_write_text(sweep_dir / "configurations.csv", _csv(table, names))
            markdown = cmp.render_markdown(comparison) + "\n" + markdown
        pruned = pruning_markdown(records)
        if pruned:
            markdown += "\n" + pruned
        atomic_write_text(sweep_dir / "summary.md", markdown)
    return SweepSummary(rows, comparison)


def _csv(rows: list[dict[str, Any]], names) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(names))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def steps_used(records: list[RunRecord | None]) -> int:
    """Optimizer steps the sweep's runs trained (``completion.trained_steps``; a pruned run
    stops at its rung)."""
    return sum(r.completion.trained_steps or 0 for r in records if r is not None)


def pruning_markdown(records: list[tuple[str, RunRecord | None]]) -> str:
    """The ``## Pruning`` section of ``summary.md``: each pruned run's rung, step, value and the
    configuration mean it was stopped with, and the optimizer steps trained against the steps
    every run trained to the end would take. Empty when no run was evaluated at a rung."""
    known = [(n, r) for n, r in records if r is not None]
    if not any(r.rungs or r.pruning for _, r in known):
        return ""
    planned = sum(int((r.config.get("training") or {}).get("max_steps") or 0) for _, r in known)
    used = steps_used([r for _, r in known])
    pruned = [(n, r) for n, r in known if r.status == STATUS_PRUNED and r.pruning]
    lines = ["## Pruning", "",
             f"{len(pruned)} of {len(known)} runs pruned; optimizer steps trained: {used} of {planned} "
             f"({used / planned:.0%} of the unpruned sweep)." if planned else "", ""]
    if pruned:
        lines += ["| run | pruner | rung | step | run's value | configuration mean | decided at |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in sorted(pruned, key=lambda x: (x[1].pruning.step, x[0])):
            p = r.pruning
            lines.append(f"| {name} | {p.pruner} | {p.rung} | {p.step} | {_fmt(p.value)} | "
                         f"{_fmt(p.configuration_value)} ({p.metric}) | {p.decided_at or ''} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else ""
