"""Experiment tracking: W&B (online / offline) or a no-op tracker (disabled).

The no-op tracker follows nanochat's ``DummyWandb``: same methods, does nothing, needs
nothing. Offline W&B writes under the run directory and needs no network or login.

W&B never ends a run or a sweep (docs/results.md, "Weights & Biases"): an ``online`` run whose
``wandb.init`` fails (no network, a bad API key, a server down) logs offline instead, and later
runs of the same process go offline at once; a run whose offline init fails too is not tracked;
a failing ``log``/``summary``/``table``/``finish`` is logged once per run and training goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, Protocol

logger = logging.getLogger(__name__)


STEP_METRIC = "train/global_step"  # the shared x axis of every per-step chart (optimizer steps)

INIT_TIMEOUT_ENV = "WANDB_INIT_TIMEOUT"  # wandb's own variable for ``Settings.init_timeout``
DEFAULT_INIT_TIMEOUT_S = 30.0
"""Seconds an ``online`` ``wandb.init`` may wait for the server, unless ``WANDB_INIT_TIMEOUT``
is set. wandb's default is 90 s (about 100 s with its 10 s grace) of retries before it raises;
30 s is what wandb's own sweep scheduler allows a run's init, far above a healthy init (a few
seconds), and a slow server that misses it costs nothing but a later ``wandb sync``."""

_online_failure: str | None = None
"""Why an ``online`` ``wandb.init`` failed in this process (None: none failed); once set, later
runs go offline without trying the server again (restart the process to try again)."""


class Tracker(Protocol):
    mode: str

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def table(self, key: str, columns: list[str], rows: list[list[Any]],
              line: tuple[str, ...] | None = None) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NoOpTracker:
    """Tracker that records nothing (W&B disabled, or not the main process).

    Args:
        mode: the mode actually used, for the run record: ``disabled``, or
            ``disabled (fallback: <reason>)`` when W&B could not start at all.
    """

    def __init__(self, mode: str = "disabled"):
        self.mode = mode

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
    loss and learning-rate curves of all runs of a group on one step axis (docs/report.md,
    "W&B dashboard").

    Once started, the tracker never raises: the first failing ``log``/``summary``/``table``/
    ``finish`` of the run is logged as a warning, later ones at debug level, and each is counted
    in :attr:`failures`, so training goes on.

    Args:
        mode: ``online`` or ``offline``. ``online`` waits at most ``WANDB_INIT_TIMEOUT`` seconds
            for the server, :data:`DEFAULT_INIT_TIMEOUT_S` when that is unset.
        group: the sweep's name (``sweep.name``, else its directory's), so runs of one sweep share
            a W&B group.
        config: the resolved run config, stored as ``wandb.config``.
        directory: where W&B writes its files (the run directory).
        fallback: why this run is offline although ``online`` was asked, recorded in :attr:`mode`.

    Attributes:
        mode: the mode actually used: ``online``, ``offline``, or ``offline (fallback: <reason>)``.
        sync_dir: the run's W&B directory (``<directory>/wandb/offline-run-…`` offline), the
            argument of ``wandb sync``.
        failures: how many tracker calls failed after init.

    Raises:
        Exception: whatever ``wandb.init`` raises (``wandb.errors.CommError`` when the server
            cannot be reached in time, ``OSError`` for an unwritable ``directory``, …);
            :func:`make_tracker` turns it into a fallback.
    """

    def __init__(self, mode: str, project: str, entity: str | None, group: str, name: str,
                 config: dict[str, Any], directory: str, fallback: str | None = None):
        import wandb

        extra: dict[str, Any] = {}
        if mode == "online" and not os.environ.get(INIT_TIMEOUT_ENV):  # a user's value wins
            extra["settings"] = wandb.Settings(init_timeout=DEFAULT_INIT_TIMEOUT_S)
        self.name = name
        self.failures = 0
        self._run = wandb.init(mode=mode, project=project, entity=entity, group=group, name=name,
                               config=config, dir=directory, reinit="finish_previous", **extra)
        self.mode = f"{mode} (fallback: {fallback})" if fallback else mode
        settings = getattr(self._run, "settings", None)
        self.sync_dir = str(getattr(settings, "sync_dir", None) or os.path.join(directory, "wandb"))
        with self._guard("define_metric"):
            self._run.define_metric(STEP_METRIC)
            self._run.define_metric("*", step_metric=STEP_METRIC)

    @contextlib.contextmanager
    def _guard(self, call: str) -> Iterator[None]:
        """Run a W&B call; log its failure (a warning for the run's first, debug after), never raise."""
        try:
            yield
        except Exception as exc:  # W&B must not end training  # noqa: BLE001
            self.failures += 1
            log = logger.warning if self.failures == 1 else logger.debug
            log("W&B %s failed in run %s (%s); training goes on%s", call, self.name, _cause(exc),
                "; later W&B failures of this run are logged at debug level" if self.failures == 1 else "")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if step is not None:
            metrics = {STEP_METRIC: step, **metrics}
        with self._guard("log"):
            self._run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], rows: list[list[Any]],
              line: tuple[str, ...] | None = None) -> None:
        """Log ``rows`` as a ``wandb.Table`` under ``key``; with ``line = (x, y, title[, stroke])``
        also a line chart of it (``wandb.plot.line``, one line per ``stroke`` value) under
        ``key + "_chart"``."""
        with self._guard(f"table {key}"):
            import wandb

            table = wandb.Table(columns=columns, data=rows)
            logged: dict[str, Any] = {key: table}
            if line is not None:
                x, y, title, *stroke = line
                logged[f"{key}_chart"] = wandb.plot.line(table, x, y, stroke=stroke[0] if stroke else None,
                                                         title=title)
            self._run.log(logged)

    def summary(self, metrics: dict[str, Any]) -> None:
        with self._guard("summary"):
            self._run.summary.update(metrics)

    def finish(self, exit_code: int = 0) -> None:
        with self._guard("finish"):
            self._run.finish(exit_code=exit_code)


def _cause(exc: BaseException) -> str:
    """``Type: first line of the message`` (wandb's messages go on with advice), at most 300 characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
    :class:`NoOpTracker` (also on non-main processes, so a multi-process run logs once).

    W&B never ends the run: when ``online`` init fails (within ``WANDB_INIT_TIMEOUT`` seconds,
    default :data:`DEFAULT_INIT_TIMEOUT_S`), the run logs offline under ``directory`` with one
    warning naming the cause and the ``wandb sync`` command, and every later ``online`` run of
    this process goes offline at once (one warning line each) instead of waiting again. When
    offline init fails too (e.g. ``directory`` is not writable), the run gets a
    :class:`NoOpTracker` and a warning. The mode actually used is the tracker's ``mode``.

    Raises:
        Nothing derived from ``Exception``; ``KeyboardInterrupt`` passes through.
    """
    global _online_failure
    mode = effective_mode(mode)
    if mode == "disabled" or not is_main_process:
        return NoOpTracker()
    args = (project, entity, group, name, config, directory)
    fallback, waited = None, None
    if mode == "online" and _online_failure is not None:
        fallback = f"online init failed earlier in this process: {_online_failure}"
    elif mode == "online":
        started = time.monotonic()
        try:
            return WandbTracker("online", *args)
        except Exception as exc:  # the run goes on offline  # noqa: BLE001
            _online_failure = fallback = _cause(exc)
            waited = time.monotonic() - started
    try:
        tracker = WandbTracker("offline", *args, fallback=fallback)
    except Exception as exc:  # the run goes on untracked  # noqa: BLE001
        reason = _cause(exc) if fallback is None else f"{fallback}; offline: {_cause(exc)}"
        logger.warning("W&B could not start for run %s (%s); it is not tracked in W&B, its local results are "
                       "written as usual", name, reason)
        return NoOpTracker(mode=f"disabled (fallback: {reason})")
    if waited is not None:
        logger.warning("W&B online init failed after %.0f s (%s); run %s logs offline to %s, upload it later with "
                       "`wandb sync %s`; later runs of this process go offline at once (init timeout %s s, "
                       "set %s to change it)", waited, fallback, name, tracker.sync_dir, tracker.sync_dir,
                       os.environ.get(INIT_TIMEOUT_ENV) or f"{DEFAULT_INIT_TIMEOUT_S:g}", INIT_TIMEOUT_ENV)
    elif fallback is not None:
        logger.warning("W&B online init failed earlier in this process; run %s logs offline, sync it later with "
                       "`wandb sync %s`", name, tracker.sync_dir)
    return tracker
