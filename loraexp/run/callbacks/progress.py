"""The Trainer's progress bar without the raw log dicts on the console."""

from __future__ import annotations

import logging

from transformers.trainer_callback import ProgressCallback

logger = logging.getLogger(__name__)


class QuietProgressCallback(ProgressCallback):
    """``transformers.ProgressCallback`` (the training and evaluation bars) whose ``on_log``
    hands the log dict to ``logging`` at DEBUG level instead of writing it under the bar:
    the same figures are in ``history.jsonl`` (:class:`~loraexp.run.callbacks.history.HistoryCallback`),
    and ``--verbose`` shows them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            logger.debug("step %d: %s", state.global_step, logs)
