"""Save a checkpoint every N minutes of training, whatever ``save_steps`` says."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class TimedCheckpointCallback(TrainerCallback):
    """Asks the Trainer for a checkpoint (``control.should_save``) at the first optimizer step
    end at least ``every_seconds`` (seconds of wall-clock time) after the start of training or
    the last save, so a run killed without notice (SIGKILL, a crashed VM) loses at most that
    much training. The Trainer's ``save_total_limit`` prunes old checkpoints as for step-based
    saves."""

    def __init__(self, every_seconds: float):
        self.every_seconds = every_seconds
        self.last = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.last >= self.every_seconds:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()
