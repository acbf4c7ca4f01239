"""Save a checkpoint at the last optimizer step, so nothing trained is lost after training."""

from __future__ import annotations

from transformers import TrainerCallback


class FinalCheckpointCallback(TrainerCallback):
    """Asks the Trainer for a checkpoint (``control.should_save``) at the end of the last
    optimizer step (``global_step >= max_steps``). A run stopped after training -- a signal
    during evaluation or the checks, a kill, a full disk -- then continues from it without
    training again (:meth:`loraexp.run.strategies.LoraStrategy.restore`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = True
        return control
