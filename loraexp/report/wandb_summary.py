"""The sweep's W&B summary run: one run in the sweep's group (``job_type="report"``) holding the
summary and configurations tables (``wandb.Table``) and every report figure (``wandb.Image``)
(docs/report.md, "W&B dashboard")."""

from __future__ import annotations

import csv
import logging
from typing import Any

logger = logging.getLogger(__name__)


def _table_rows(path) -> tuple[list[str], list[list[Any]]]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        columns = next(reader, [])
        return columns, [row for row in reader]


def log_report(report, mode: str | None = None) -> str | None:
    """Log ``report`` (a :class:`~loraexp.report.build.Report`) as the W&B run
    ``<sweep>-report`` of group ``<sweep>``.

    Args:
        mode: ``online`` | ``offline`` | ``disabled``; None: the sweep's ``tracking.wandb``
            (``online`` yields to ``WANDB_MODE=offline|disabled``,
            :func:`loraexp.run.tracking.effective_mode`).

    Returns:
        The W&B run's directory, or None when W&B is disabled or failed (a failure is logged,
        never raised: the report on disk is written already).
    """
    from loraexp.run import tracking as tracking_module
    from loraexp.run.tracking import effective_mode

    data = report.data
    first = next((r for r in data.records.values() if r is not None and r.config), None)
    tracking = (first.config.get("tracking") if first else None) or {}
    mode = effective_mode(mode or tracking.get("wandb", "disabled"))
    if mode == "disabled":
        return None
    if mode == "online" and tracking_module._online_failure is not None:  # the runs went offline: so does this
        logger.warning("W&B summary run logged offline: online init failed earlier in this process (%s)",
                       tracking_module._online_failure)
        mode = "offline"
    sweep = data.sweep_dir.name
    try:
        import wandb

        run = wandb.init(mode=mode, project=tracking.get("project", "loraexp"), entity=tracking.get("entity"),
                         group=sweep, name=f"{sweep}-report", job_type="report", dir=str(data.sweep_dir),
                         config={"sweep_dir": str(data.sweep_dir), "metric": data.metric}, reinit="finish_previous")
        logged: dict[str, Any] = {}
        for name in ("summary.csv", "configurations.csv"):
            path = data.sweep_dir / name
            if path.is_file():
                columns, rows = _table_rows(path)
                logged[f"report/{name.removesuffix('.csv')}"] = wandb.Table(columns=columns, data=rows)
        for figure in report.figures:
            logged[f"report/{figure.name}"] = wandb.Image(str(figure.path), caption=figure.title)
        run.log(logged)
        run.summary.update({"report/markdown": str(report.markdown_path), "report/html": str(report.html_path)})
        directory = run.dir
        run.finish()
        return str(directory)
    except Exception as exc:  # the report is on disk; W&B's failure is not the report's  # noqa: BLE001
        logger.error("W&B summary run of %s not logged: %s", sweep, exc)
        return None
