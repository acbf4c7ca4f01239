"""Graceful preemption (docs/reliability.md, "Preemption: SIGTERM and SIGINT").

Cloud preemption notices, Kubernetes, SLURM and ``timeout`` send SIGTERM; Ctrl-C sends SIGINT.
While a :class:`PreemptionGuard` is active (a sweep, a trial), either signal is handled so that
nothing trained is lost:

* during training, the signal only sets a flag; :class:`~loraexp.run.callbacks.preemption.StopOnSignalCallback`
  then saves a Trainer checkpoint after the optimizer step in progress and stops training, and
  the run is recorded ``interrupted`` (signal, step, checkpoint);
* anywhere else (loading, evaluation, the checks, between runs), :class:`Preempted` is raised at
  once: the work there is cheap to redo and a preemption notice is short (30 s on GCP and Azure
  spot VMs, 2 min on AWS);
* a second signal while training is stopping raises :class:`Preempted` at once;
* while a run's record is being written (:meth:`PreemptionGuard.deferred`), every signal
  waits until it is on disk.

The CLI writes the sweep summary and exits with ``128 + signal number`` (143 for SIGTERM, 130
for SIGINT), the shell's convention for a process ended by a signal. Signal handlers can only be
installed from the main thread of a single process; elsewhere (a worker thread, ``accelerate
launch`` with several processes) the guard does nothing and the default behaviour stays.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_active: PreemptionGuard | None = None


class Preempted(BaseException):
    """A run or sweep stopped by a signal. A ``BaseException`` (like ``KeyboardInterrupt``), so
    the ``except Exception`` that records a failing run does not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """``128 + signum``: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


class PreemptionGuard:
    """Handles SIGTERM and SIGINT while active (a context manager). ``signum`` is the first
    signal received (None until one arrives); inside :meth:`training`, the first signal only
    sets it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_training = False
        self.installed = False
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionGuard:
        global _active
        if threading.current_thread() is threading.main_thread() and _multi_process() is False:
            self._previous = {s: signal.getsignal(s) for s in HANDLED_SIGNALS}
            self.install()
            _active = self
        return self

    def __exit__(self, *exc_info) -> None:
        global _active
        if self.installed:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self.installed = False
            _active = None

    def install(self) -> None:
        """(Re-)register the handlers: the Trainer's ``enable_jit_checkpoint`` replaces the
        SIGTERM handler when a Trainer is built, so the recipe calls this after building it."""
        for s in HANDLED_SIGNALS:
            signal.signal(s, self._handle)
        self.installed = True

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """The span in which a first signal waits for the optimizer step in progress."""
        self.in_training = True
        try:
            yield
        finally:
            self.in_training = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """The span in which a signal only sets :attr:`signum` (recording a run: a half-written
        record would be lost); :class:`Preempted` is raised when the span ends if one arrived
        in it.

        Raises:
            Preempted: a signal arrived during the span.
        """
        before, was = self.signum, self.in_training
        self.in_training, self._deferring = True, True
        try:
            yield
        finally:
            self.in_training, self._deferring = was, False
        if before is None:
            self.raise_if_signalled()

    def raise_if_signalled(self) -> None:
        """Raise :class:`Preempted` if a signal has arrived (e.g. after training stopped for it).

        Raises:
            Preempted: a signal was received.
        """
        if self.signum is not None:
            raise Preempted(self.signum)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        name = signal.Signals(signum).name
        if self._deferring:  # recording the run: stop when the record is written
            logger.warning("%s received: stopping once the run's record is written", name)
            return
        if self.in_training and first:
            logger.warning("%s received: stopping after the optimizer step in progress and saving a checkpoint "
                           "(send it again to stop at once)", name)
            return
        raise Preempted(self.signum)


def active() -> PreemptionGuard | None:
    """The guard in effect in this process, if any."""
    return _active


def deferred(guard_: PreemptionGuard | None) -> contextlib.AbstractContextManager[None]:
    """:meth:`PreemptionGuard.deferred` of ``guard_``, or nothing without a guard."""
    return guard_.deferred() if guard_ is not None else contextlib.nullcontext()


def guard() -> contextlib.AbstractContextManager[PreemptionGuard | None]:
    """A new :class:`PreemptionGuard`, or -- when one is already active (a sweep calling a
    run) -- a context that keeps it."""
    return contextlib.nullcontext(_active) if _active is not None else PreemptionGuard()


def _multi_process() -> bool:
    from loraexp.run.distributed import world_size

    return world_size() > 1
