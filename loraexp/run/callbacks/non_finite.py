"""Stop training at the first NaN/inf loss or gradient, before the optimizer applies it."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from loraexp.errors import NonFiniteError


class NonFiniteCallback(TrainerCallback):
    """Raises :class:`~loraexp.errors.NonFiniteError` at the optimizer step whose loss or
    trainable-parameter gradients are not finite.

    * The loss is checked by a forward hook on the model (training forwards only). The
      Trainer's ``logging_nan_inf_filter`` hides a NaN loss from the logged average, so
      the logs cannot be used for this.
    * The gradients (after clipping, all-reduced across processes under DDP, so every rank
      stops at the same step) are checked in ``on_pre_optimizer_step``, before
      ``optimizer.step()``: the bad gradient is never applied and every checkpoint saved so
      far holds finite weights.

    ``result`` holds ``failed_step`` and ``reason`` once it has fired.
    """

    def __init__(self):
        self.result: dict = {}
        self._bad_loss: float | None = None
        self._hook = None
        self._trainable: list = []

    def _check_loss(self, module, args, output) -> None:
        loss = getattr(output, "loss", None)
        if module.training and loss is not None and self._bad_loss is None and not torch.isfinite(loss).all():
            self._bad_loss = float(loss.detach().float().mean())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook = model.register_forward_hook(self._check_loss)
        self._trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1  # the step about to be taken
        reason = None
        if self._bad_loss is not None:
            reason = f"training loss is {self._bad_loss}"
        else:
            grads = {n: p.grad for n, p in self._trainable if p.grad is not None}
            # one device sync per step: max |g| is inf/nan iff some element is (torch.max propagates NaN)
            peaks = [g.detach().abs().max().float() for g in grads.values()]
            if peaks and not torch.isfinite(torch.stack(peaks)).all():
                name = next(n for n, g in grads.items() if not torch.isfinite(g).all())
                reason = f"gradient of {name} is not finite"
        if reason is not None:
            if self._hook is not None:
                self._hook.remove()
            self.result = {"failed_step": step, "reason": reason}
            raise NonFiniteError(step, reason)
