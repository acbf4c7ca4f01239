"""Stop training gracefully when a signal arrived (:mod:`loraexp.run.preemption`)."""

from __future__ import annotations

from transformers import TrainerCallback


class StopOnSignalCallback(TrainerCallback):
    """At the end of each optimizer step (``on_step_end``), if ``guard`` received SIGTERM or
    SIGINT: ask the Trainer to save a checkpoint now and stop training. The Trainer saves in
    the same step (``_maybe_log_save_evaluate``), so at most the step in progress when the
    signal came is trained after it, and none is lost."""

    def __init__(self, guard):
        self.guard = guard

    def on_step_end(self, args, state, control, **kwargs):
        if self.guard.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
