"""Convergence: how much the training loss fell between the first and the last logging window
(the research plan's convergence test asks for at least 30% over 100 steps)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from loraexp.results.record import ConvergenceCheck

LOSS_KEY = "train/loss"  # the Trainer's logged loss: the mean over the steps since the previous log


def loss_decrease(history: Iterable[dict[str, Any]], window_steps: int,
                  min_loss_decrease: float | None = None) -> ConvergenceCheck:
    """The loss decrease of one run from its ``history.jsonl`` rows.

    The Trainer logs the mean training loss of every ``logging_steps`` optimizer steps (the
    last window may be shorter); the first logged value is the mean over steps
    1..``window_steps``, the last the mean over the final window. ``loss_decrease_pct`` =
    100 · (first − last) / first.

    Args:
        history: rows with ``step`` (optimizer step) and, on logging steps, ``train/loss``.
        window_steps: ``training.logging_steps``, in optimizer steps (recorded, not used to
            cut windows: the Trainer already averaged them).
        min_loss_decrease: percent; when given, the check passes when the decrease is at least
            this much, else ``passed`` stays None (figures only).

    Returns:
        A :class:`~loraexp.results.record.ConvergenceCheck`; unobserved (``passed`` None, a reason)
        with fewer than two logged losses or a first loss that is not positive; failed (with a
        threshold) when any logged loss is NaN or infinite.
    """
    logged = [(int(r["step"]), float(r[LOSS_KEY])) for r in history if isinstance(r.get(LOSS_KEY), (int, float))]
    rows = [(step, loss) for step, loss in logged if math.isfinite(loss)]
    check = ConvergenceCheck(window_steps=window_steps, min_loss_decrease=min_loss_decrease)
    diverged = [step for step, loss in logged if not math.isfinite(loss)]
    if diverged:  # a loss that fell and then diverged has not converged
        check.reason = f"the logged training loss is not finite at step {diverged[0]}"
        check.passed = False if min_loss_decrease is not None else None
        return check
    if len(rows) < 2:
        check.reason = (f"the training loss was logged {len(rows)} time(s); the decrease needs two logging windows "
                        f"(lower training.logging_steps, now {window_steps}, or train longer)")
        return check
    (check.first_step, check.first_loss), (check.last_step, check.last_loss) = rows[0], rows[-1]
    if check.first_loss <= 0:
        check.reason = f"the first logged training loss is {check.first_loss:.4g}; a relative decrease needs it > 0"
        return check
    check.loss_decrease_pct = 100.0 * (check.first_loss - check.last_loss) / check.first_loss
    if min_loss_decrease is not None:
        check.passed = check.loss_decrease_pct >= min_loss_decrease
        if not check.passed:
            check.reason = (f"training loss fell {check.loss_decrease_pct:.1f}% (from {check.first_loss:.4g} over "
                            f"steps 1-{check.first_step} to {check.last_loss:.4g} at step {check.last_step}), below "
                            f"verification.min_loss_decrease {min_loss_decrease:g}%")
    return check
