"""Local results store (DESIGN.md, "Run identity and results").

Layout: ``<output_dir>/<sweep>/<run>/`` with ``config.yaml``, ``metrics.json``,
``history.jsonl`` and ``adapter/``; per sweep ``summary.csv`` and ``summary.md``.
Every file except the append-only history is written atomically (temp file + rename).
Concurrency: a run is trained while holding ``<run>/.lock`` (so two processes never train
it at once) and the summary is rewritten while holding ``<sweep>/.summary.lock``; both are
``filelock`` locks (``flock`` on Linux), released by the OS when a process is killed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_FAILED_VERIFICATION = "failed_verification"
STATUS_RUNNING = "running"
STATUS_SKIPPED = "skipped"  # completed earlier; not run again
STATUS_BUSY = "busy"  # being trained by another process right now; not run here

RUN_LOCK = ".lock"
SUMMARY_LOCK = ".summary.lock"
SUMMARY_LOCK_TIMEOUT_S = 120


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``,
    so readers see either the old or the new file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class RunStore:
    """Files of one run under ``run_dir``.

    With ``writable=False`` (a non-main process of a multi-process run) every ``write_*``,
    ``start_history`` and ``append_history`` does nothing, so results are written once.
    """

    def __init__(self, run_dir: str | os.PathLike, writable: bool = True):
        self.run_dir = Path(run_dir)
        self.writable = writable
        self.config_path = self.run_dir / "config.yaml"
        self.metrics_path = self.run_dir / "metrics.json"
        self.history_path = self.run_dir / "history.jsonl"
        self.adapter_dir = self.run_dir / "adapter"

    def read_metrics(self) -> dict[str, Any] | None:
        """The run's ``metrics.json``, or None if absent or unreadable."""
        try:
            return json.loads(self.metrics_path.read_text())
        except (OSError, ValueError):
            return None

    def read_config(self) -> dict[str, Any] | None:
        """The run's saved ``config.yaml``, or None if absent or unreadable."""
        try:
            return yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold the run's lock (``<run_dir>/.lock``) for the ``with`` block. Yields True when
        acquired, False (holding nothing) when another process holds it; never waits."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.run_dir / RUN_LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def is_completed(self) -> bool:
        """True when ``metrics.json`` says ``completed``."""
        return (self.read_metrics() or {}).get("status") == STATUS_COMPLETED

    def write_config(self, config: dict[str, Any]) -> None:
        """Atomically write the resolved config as ``config.yaml``."""
        if not self.writable:
            return
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Atomically write ``metrics.json`` (sets become sorted lists, tensors numbers)."""
        if not self.writable:
            return
        atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2, default=_json_default) + "\n")

    def start_history(self, keep_until_step: int | None = None) -> None:
        """Start ``history.jsonl`` for a new attempt of the run: truncated, or -- when resuming
        from the checkpoint at optimizer step ``keep_until_step`` -- keeping the records up to
        and including that step, so the curve continues where the checkpoint left it."""
        if not self.writable:
            return
        kept = []
        if keep_until_step is not None and self.history_path.is_file():
            for line in self.history_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if record.get("step", 0) <= keep_until_step:
                    kept.append(line + "\n")
        atomic_write_text(self.history_path, "".join(kept))

    def write_jsonl(self, name: str, records: list[dict[str, Any]]) -> None:
        """Atomically write ``records`` as JSON lines to ``<run_dir>/<name>``."""
        if not self.writable:
            return
        atomic_write_text(self.run_dir / name, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))

    def append_history(self, record: dict[str, Any]) -> None:
        """Append one JSON line (e.g. ``{"step": 10, "train/loss": 0.6}``)."""
        if not self.writable:
            return
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")


SUMMARY_COLUMNS = ("run_name", "status", "failed_step", "r", "lora_alpha", "target_modules", "quantization",
                   "learning_rate", "seed", "eval_accuracy", "base_accuracy", "eval_f1", "eval_loss", "eval_perplexity",
                   "base_perplexity", "eval_exact_match", "base_exact_match", "lora_params", "trainable_params",
                   "trainable_pct", "base_weight_bytes", "peak_mem_bytes", "tokens_per_s", "mean_effective_rank",
                   "mean_utilization", "merge_max_abs_diff", "quantization_gap", "verification", "train_seconds",
                   "run_id", "error")


def summary_row(run_name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """One row of the sweep summary from a run's ``metrics.json`` content."""
    cfg = metrics.get("config", {})
    lora, training = cfg.get("lora", {}), cfg.get("training", {})
    evals = metrics.get("eval", {})
    eff = metrics.get("efficiency", {})
    rank = metrics.get("lora_rank", {})
    ver = metrics.get("verification", {})
    base = metrics.get("base_eval", {})
    efficiency = metrics.get("training_efficiency", {})
    quant = cfg.get("quantization") or {}
    method = quant.get("method", "none")
    targets = lora.get("target_modules")
    return {
        "run_name": run_name, "status": metrics.get("status"), "failed_step": metrics.get("failed_step"),
        "r": lora.get("r"),
        "lora_alpha": lora.get("lora_alpha"),
        "target_modules": targets if isinstance(targets, str) else "+".join(targets or []),
        "learning_rate": training.get("learning_rate"), "seed": cfg.get("seed"),
        "quantization": None if method == "none" else method + ("+dq" if quant.get("double_quant") else ""),
        "eval_accuracy": evals.get("accuracy"), "base_accuracy": base.get("accuracy"), "eval_f1": evals.get("f1"),
        "eval_loss": evals.get("loss") if "perplexity" in evals else None,
        "eval_perplexity": evals.get("perplexity"), "base_perplexity": base.get("perplexity"),
        "eval_exact_match": evals.get("exact_match"), "base_exact_match": base.get("exact_match"),
        "base_weight_bytes": efficiency.get("base_weight_bytes"), "peak_mem_bytes": efficiency.get("peak_mem_bytes"),
        "tokens_per_s": efficiency.get("tokens_per_s"),
        "lora_params": eff.get("lora_params"), "trainable_params": eff.get("trainable_params"),
        "trainable_pct": eff.get("trainable_pct"),
        "mean_effective_rank": rank.get("mean_effective_rank"), "mean_utilization": rank.get("mean_utilization"),
        "merge_max_abs_diff": ver.get("merge_max_abs_diff"),
        "quantization_gap": ver.get("quantization_gap_max_abs_diff"),
        "verification": "passed" if ver.get("passed") else ("failed" if ver else None),
        "train_seconds": efficiency.get("train_seconds"),
        "run_id": metrics.get("run_id"), "error": (metrics.get("error") or "")[:120] or None,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown table of summary rows (columns with no value in any row are dropped)."""
    columns = [c for c in SUMMARY_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_sweep_summary(sweep_dir: str | os.PathLike, run_names: list[str]) -> str:
    """Write ``summary.csv`` and ``summary.md`` for ``run_names`` (read back from each
    run's ``metrics.json``; runs without one are listed as ``missing``). Returns the markdown.

    Holds ``<sweep_dir>/.summary.lock`` while reading and writing, so processes sharing the
    sweep directory (workers, trials) write one after the other, each from the latest files.

    Raises:
        filelock.Timeout: the lock was held for more than ``SUMMARY_LOCK_TIMEOUT_S`` seconds.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(sweep_dir / SUMMARY_LOCK, timeout=SUMMARY_LOCK_TIMEOUT_S):
        rows = []
        for name in run_names:
            metrics = RunStore(sweep_dir / name).read_metrics() or {"status": "missing"}
            rows.append(summary_row(name, metrics))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(sweep_dir / "summary.csv", buffer.getvalue())
        markdown = render_markdown(rows)
        atomic_write_text(sweep_dir / "summary.md", markdown)
    return markdown
