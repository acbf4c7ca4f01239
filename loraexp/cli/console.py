"""What a person watching a sweep sees: the progress bars, one line when a run starts and one
when it ends, and a compact table at the end with the best run marked.

Machine records go to files (``history.jsonl``, ``summary.csv``/``summary.md``); third-party
warnings that are not the user's business are silenced unless ``--verbose``
(:data:`QUIET_WARNINGS`, :data:`QUIET_LOGGERS`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import warnings
from typing import IO, Any

# (category, message regex): warnings about library internals that a user cannot act on.
QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # transformers 5 deprecates a property PEFT still reads on every forward pass
    (FutureWarning, r".*is_gradient_checkpointing.*"),
    # ... and the method PEFT's prepare_model_for_kbit_training calls on a quantized base
    (FutureWarning, r".*gradient_checkpointing_enable.*"),
    # the Trainer asks for pinned memory; torch warns on a machine without an accelerator
    (UserWarning, r".*'pin_memory' argument is set as true but no accelerator is found.*"),
)
# logger -> level: bitsandbytes' CPU backend logs that an optional kernel package is missing
# ("Failed to load CPU gemm_4bit_forward from kernels-community"); transformers' and
# datasets' own INFO/WARNING chatter repeats what the run lines say.
QUIET_LOGGERS = {"bitsandbytes": logging.ERROR, "transformers": logging.ERROR, "datasets": logging.ERROR,
                 "accelerate": logging.ERROR, "peft": logging.ERROR, "wandb": logging.ERROR, "httpx": logging.ERROR}


class TqdmHandler(logging.Handler):
    """Writes log lines with ``tqdm.write`` so they appear between the progress bars instead
    of breaking them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the run
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(verbose: bool = False) -> None:
    """Set up the console: loraexp's INFO lines through :class:`TqdmHandler`; with
    ``verbose``, DEBUG lines (the Trainer's log dicts) and every third-party warning and log
    message; without, :data:`QUIET_WARNINGS` and :data:`QUIET_LOGGERS` are silenced."""
    handler = TqdmHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("loraexp").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    if verbose:
        root.setLevel(logging.INFO)
        return
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # transformers and datasets keep their own verbosity and progress bars ("Loading weights",
    # "Map"), read from their environment variables at import
    for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(variable, "1")
    os.environ.setdefault("WANDB_SILENT", "true")  # wandb's own "[INFO] Running in WANDB offline mode" lines
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
        sys.modules["transformers"].logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def best_row(rows: list[dict[str, Any]], column: str, direction: str) -> int | None:
    """Index of the completed row with the best finite ``column`` value (``direction``:
    maximize | minimize), or None."""
    scored = [(i, r[column]) for i, r in enumerate(rows)
              if r.get("status") == "completed" and isinstance(r.get(column), (int, float))
              and math.isfinite(r[column])]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda item: item[1])[0]


HEADERS = {"run_name": "run", "status": "status", "trainable_pct": "trainable", "train_seconds": "train time",
           "verification": "verification"}


def _cell(value: Any, column: str) -> str:
    if value is None or value == "":
        return ""
    if column == "train_seconds":
        return f"{value:.0f} s"
    if column == "trainable_pct":
        return f"{value:.3f}%"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_summary(result, file: IO[str] | None = None) -> None:
    """A compact table of a :class:`~loraexp.sweep.runner.SweepResult`: run, status, the main metric,
    trainable share (% of all parameters), training time (seconds) and verification, the best
    run marked with ``*``; then where the full summary is."""
    from rich.console import Console
    from rich.table import Table

    rows = result.rows
    metric_column = f"eval_{result.metric}"
    columns = ["run_name", "status", metric_column, "trainable_pct", "train_seconds", "verification"]
    columns = [c for c in columns if c in ("run_name", "status") or any(r.get(c) not in (None, "") for r in rows)]
    best = best_row(rows, metric_column, result.direction)
    table = Table(title=f"{result.sweep_dir.name}: {len(rows)} run{'s' if len(rows) != 1 else ''}",
                  title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(HEADERS.get(column, result.metric), no_wrap=True,
                         justify="left" if column in ("run_name", "status") else "right")
    for index, row in enumerate(rows):
        cells = [_cell(row.get(c), c) for c in columns]
        cells[0] = ("* " if index == best else "  ") + cells[0]
        table.add_row(*cells, style="bold" if index == best else None)
    width = max(shutil.get_terminal_size((120, 24)).columns, 100)
    console = Console(file=file or sys.stdout, width=width, highlight=False)
    console.print(table)
    if best is not None:
        console.print(f"* best {result.metric} ({result.direction})")
    comparison = getattr(result, "comparison", None)
    if comparison is not None and (comparison.baseline or any(c.completed > 1 for c in comparison.configurations)):
        console.print(configurations_table(comparison))
        for line in comparison.verdict_lines():
            console.print(line)
    console.print(f"Every column: {result.sweep_dir / 'summary.md'} and summary.csv"
                  + (", configurations.csv" if comparison is not None else ""))


def short_names(names: list[str]) -> list[str]:
    """``names`` without the ``-``-separated parts they all start with (the task and model):
    ``sst2-minilm-r8-a16-standard-lr2e-3`` -> ``r8-a16-standard-lr2e-3``."""
    parts = [n.split("-") for n in names]
    common = 0
    while len(names) > 1 and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return ["-".join(p[common:]) for p in parts]


def configurations_table(comparison):
    """Rich table of a :class:`~loraexp.results.comparison.Comparison`: per configuration the seeds,
    the main metric's mean ± std and seed CI, the difference to the baseline with its bootstrap
    CI and the verdict, trainable parameters, train time, and Pareto marks."""
    from rich.table import Table

    s = comparison.settings
    m = s.metric
    table = Table(title=f"configurations ({m}; {s.confidence:.0%} intervals)", title_justify="left",
                  header_style="bold")
    headers = ["configuration", "seeds", f"{m} mean ± std", "CI over seeds"]
    if comparison.baseline:
        headers += ["Δ vs baseline [CI]", "within max drop"]
    headers += ["trainable", "train s", "Pareto"]
    for h in headers:
        table.add_column(h, no_wrap=True, justify="left" if h == "configuration" else "right")
    names = short_names([c.name for c in comparison.configurations])
    for c, name in zip(comparison.configurations, names):
        iv, d = c.intervals.get(m), c.differences.get(m)
        cells = [name + (" (baseline)" if c.is_baseline else ""), str(c.completed),
                 f"{iv.mean:.4f} ± {iv.std:.4f}" if iv and iv.std is not None else (f"{iv.mean:.4f}" if iv else ""),
                 f"[{iv.low:.4f}, {iv.high:.4f}]" if iv and iv.low is not None else ""]
        if comparison.baseline:
            cells += [f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if d else "", c.verdicts.get(m, "")]
        marks = "/".join(name for name, flag in (("params", c.pareto_params), ("time", c.pareto_time)) if flag)
        cells += [f"{c.trainable_params:,.0f}" if c.trainable_params == c.trainable_params else "",
                  f"{c.train_seconds:.0f}" if c.train_seconds == c.train_seconds else "", marks]
        table.add_row(*cells)
    return table
