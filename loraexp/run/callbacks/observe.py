"""Callbacks that observe a short training for ``loraexp validate`` (:mod:`loraexp.run.checklist`):
the loss of every step, and a run's check that stops at its first violation without stopping
training."""

from __future__ import annotations

from transformers import TrainerCallback

from loraexp.errors import VerificationError


class LossRecorder(TrainerCallback):
    """The training loss of every optimizer step, in ``values`` (the Trainer's ``loss`` log at
    ``logging_steps: 1``)."""

    def __init__(self):
        self.values: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.values.append(float(logs["loss"]))


class UntilFailure(TrainerCallback):
    """Forwards train begin, the pre-optimizer steps and train end to ``callback`` until it
    raises a :class:`~loraexp.errors.VerificationError`, whose message it keeps in ``error``
    (without the check's ``name: `` prefix); training goes on. The check's ``result`` stays
    what it was when it raised."""

    def __init__(self, callback, prefix: str = "gradient flow: "):
        self.callback = callback
        self.prefix = prefix
        self.error: str | None = None

    def _forward(self, event: str, *args, **kwargs):
        if self.error is not None:
            return None
        try:
            return getattr(self.callback, event)(*args, **kwargs)
        except VerificationError as exc:
            self.error = str(exc).removeprefix(self.prefix)
            return None

    def on_train_begin(self, args, state, control, **kwargs):
        return self._forward("on_train_begin", args, state, control, **kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        return self._forward("on_pre_optimizer_step", args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        return self._forward("on_train_end", args, state, control, **kwargs)
