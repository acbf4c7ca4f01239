"""Stop training at a pruning rung, after a checkpoint, so the run can be evaluated there and
continued later (:mod:`loraexp.sweep.pruning`)."""

from __future__ import annotations

from transformers import TrainerCallback


class RungStopCallback(TrainerCallback):
    """At the end of optimizer step ``step``: save a checkpoint (``control.should_save``) and
    stop training (``control.should_training_stop``). The learning-rate schedule stays the full
    run's (``max_steps``), so continuing from that checkpoint trains exactly what an
    uninterrupted run trains (the resume is bit-identical on CPU, tests/test_pruning.py).

    Args:
        step: the rung, in optimizer steps (``1 <= step < max_steps``).
    """

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control
