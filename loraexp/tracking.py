"""Experiment tracking: W&B (online / offline) or a no-op tracker (disabled).

The no-op tracker follows nanochat's ``DummyWandb``: same methods, does nothing, needs
nothing. Offline W&B writes under the run directory and needs no network or login.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

logger = logging.getLogger(__name__)


STEP_METRIC = "train/global_step"  # the shared x axis of every per-step chart (optimizer steps)


class Tracker(Protocol):
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def table(self, key: str, columns: list[str], rows: list[list[Any]],
              line: tuple[str, ...] | None = None) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NoOpTracker:
    """Tracker that records nothing (W&B disabled, or not the main process)."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def table(self, key: str, columns: list[str], rows: list[list[Any]],
              line: tuple[str, ...] | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """One W&B run: ``wandb.init(mode, project, entity, group, name, config, dir)``.

    Every per-step metric is plotted against :data:`STEP_METRIC` (the optimizer step, logged
    with each row; ``define_metric("*", step_metric=...)``), so the default workspace shows the
    loss and learning-rate curves of all runs of a group on one step axis (docs/results.md,
    "W&B dashboard").

    Args:
        mode: ``online`` or ``offline``.
        group: the sweep's name (``sweep.name``, else its directory's), so runs of one sweep share
            a W&B group.
        config: the resolved run config, stored as ``wandb.config``.
        directory: where W&B writes its files (the run directory).
    """

    def __init__(self, mode: str, project: str, entity: str | None, group: str, name: str,
                 config: dict[str, Any], directory: str):
        import wandb

        self._run = wandb.init(mode=mode, project=project, entity=entity, group=group, name=name,
                               config=config, dir=directory, reinit="finish_previous")
        self._run.define_metric(STEP_METRIC)
        self._run.define_metric("*", step_metric=STEP_METRIC)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if step is not None:
            metrics = {STEP_METRIC: step, **metrics}
        self._run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], rows: list[list[Any]],
              line: tuple[str, ...] | None = None) -> None:
        """Log ``rows`` as a ``wandb.Table`` under ``key``; with ``line = (x, y, title[, stroke])``
        also a line chart of it (``wandb.plot.line``, one line per ``stroke`` value) under
        ``key + "_chart"``."""
        import wandb

        table = wandb.Table(columns=columns, data=rows)
        logged: dict[str, Any] = {key: table}
        if line is not None:
            x, y, title, *stroke = line
            logged[f"{key}_chart"] = wandb.plot.line(table, x, y, stroke=stroke[0] if stroke else None, title=title)
        self._run.log(logged)

    def summary(self, metrics: dict[str, Any]) -> None:
        self._run.summary.update(metrics)

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


def effective_mode(mode: str) -> str:
    """The W&B mode a run uses: ``mode`` from the config, except that ``online`` yields to
    ``WANDB_MODE=offline|disabled`` in the environment (W&B's own switch), so a trial of an
    exported sweep can be run without a server."""
    env = os.environ.get("WANDB_MODE")
    if mode == "online" and env in ("offline", "disabled"):
        return env
    return mode


def make_tracker(mode: str, *, project: str, entity: str | None, group: str, name: str,
                 config: dict[str, Any], directory: str, is_main_process: bool = True) -> Tracker:
    """A :class:`WandbTracker` for ``online``/``offline`` (see :func:`effective_mode`), else a
    :class:`NoOpTracker` (also on non-main processes, so a multi-process run logs once)."""
    mode = effective_mode(mode)
    if mode == "disabled" or not is_main_process:
        return NoOpTracker()
    return WandbTracker(mode, project, entity, group, name, config, directory)
