"""Where an attempt of a run starts: from the newest complete checkpoint of an earlier attempt,
or over (docs/reliability.md, "Preemption: SIGTERM and SIGINT" and "Verification across
attempts"). Read from the run directory before the attempt writes anything."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.results.record import STATUS_INTERRUPTED, STATUS_PAUSED, STATUS_PRUNED, STATUS_RUNNING, RunRecord

logger = logging.getLogger(__name__)


@dataclass
class ResumePlan:
    """What an attempt continues from.

    Attributes:
        checkpoint: the Trainer checkpoint directory to resume from, None to start over.
        prior: the verification state recorded with that checkpoint
            (:func:`~loraexp.run.checkpoints.read_verification`; empty without one).
        previous: the earlier attempt's record (``metrics.json``), if any.
        rungs: the earlier attempt's pruning-rung evaluations up to the checkpoint's step.
    """

    checkpoint: str | None = None
    prior: dict[str, Any] = field(default_factory=dict)
    previous: RunRecord | None = None
    rungs: list[dict[str, Any]] = field(default_factory=list)


def plan_resume(previous: RunRecord | None, checkpoints_dir: Path, data_fingerprint: str | None, run_name: str,
                resume: bool, start_over: bool, main: bool) -> ResumePlan:
    """Decide where this attempt starts. An earlier attempt stopped with a checkpoint
    (``interrupted`` by a signal, ``paused`` or ``pruned`` at a rung) always continues, unless
    ``start_over`` (``--rerun``); one that ended without a record (``running``: killed, or the
    disk was full) continues only with ``resume``; a run whose data files changed since its
    earlier attempt never does (logged). Starting over removes the earlier checkpoints (on the
    ``main`` process), so no older attempt's files mix in; a checkpoint cut short by a kill is
    skipped (:func:`~loraexp.run.checkpoints.last_complete_checkpoint`).

    Args:
        data_fingerprint: today's fingerprint of the task's data files.
    """
    from loraexp.run.checkpoints import checkpoint_step, last_complete_checkpoint, read_verification

    if previous is not None and previous.status in (STATUS_INTERRUPTED, STATUS_PAUSED, STATUS_PRUNED) \
            and not start_over:
        resume = True  # stopped with a checkpoint (a signal, a pruning rung): continue from it
    elif previous is not None and previous.status == STATUS_RUNNING:
        logger.warning("run %s: an earlier attempt ended without a record (killed, or the disk was full)%s",
                       run_name, "; resuming from its last complete checkpoint" if resume else
                       "; starting over (--resume continues from its last complete checkpoint)")
    recorded = previous.resolved.data_fingerprint if previous is not None and previous.resolved else None
    if resume and recorded and recorded != data_fingerprint:
        logger.warning("run %s: the data files changed since its earlier attempt (%s, now %s): starting over "
                       "instead of resuming its checkpoint", run_name, recorded, data_fingerprint)
        resume = False
    plan = ResumePlan(previous=previous)
    if resume:
        plan.checkpoint = last_complete_checkpoint(checkpoints_dir, remove_incomplete=main)
        plan.prior = read_verification(plan.checkpoint) if plan.checkpoint else {}
    elif checkpoints_dir.is_dir() and main:
        logger.info("run %s: starting over, removing the checkpoints of an earlier attempt", run_name)
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
    if plan.checkpoint and previous is not None:  # the rungs up to the checkpoint stay evaluated
        plan.rungs = [r for r in previous.rungs if r["step"] <= checkpoint_step(plan.checkpoint)]
    return plan
