"""Frozen-base verification: the pretrained weights neither train nor change."""

from __future__ import annotations

import dataclasses

from transformers import TrainerCallback

from loraexp.analysis.base_weights import base_parameters, changed_tensors, fingerprint_base
from loraexp.errors import VerificationError
from loraexp.results.record import FrozenBaseCheck


class FrozenBaseCallback(TrainerCallback):
    """Checks the frozen-base invariant (docs/design.md, "Frozen base") and raises :class:`VerificationError` when
    it breaks.

    * train begin: no base parameter has ``requires_grad``; fingerprint every base tensor;
    * first optimizer step (``on_pre_optimizer_step``, gradients present): no base
      parameter has a ``.grad``;
    * train end: every base tensor is bit-identical to its start (BLAKE2b of raw bytes).

    ``result`` is a :class:`~loraexp.results.record.FrozenBaseCheck` (``passed`` stays None until
    train end). The fingerprints are taken after the adapter's initialisation, so for PiSSA
    and OLoRA the frozen base is the residual W − s·B0·A0 they produce (``reference`` says so).
    With ``stop`` False (``loraexp validate``) a violation is recorded and training goes on, so
    every part of the check is observed.
    """

    def __init__(self, reference: str | None = None, stop: bool = True):
        self.reference = reference
        self.stop = stop
        self.result = FrozenBaseCheck(reference=reference)
        self._start: dict[str, str] = {}
        self._grads_checked = False

    def _fail(self, what: str, names: list[str]) -> None:
        self.result.passed = False
        if self.stop:
            raise VerificationError(f"frozen base violated: {len(names)} base tensors {what}, e.g. {names[:5]}")

    def on_train_begin(self, args, state, control, **kwargs):
        model = kwargs["model"]
        params = base_parameters(model)
        requires = [n for n, p in params.items() if p.requires_grad]
        self.result = FrozenBaseCheck(base_tensors=len(params), base_requires_grad=requires, reference=self.reference)
        if requires:
            self._fail("require grad", requires)
        self._start = fingerprint_base(model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._grads_checked:
            return
        self._grads_checked = True
        with_grad = [n for n, p in base_parameters(kwargs["model"]).items() if p.grad is not None]
        self.result.base_with_grad = with_grad
        if with_grad:
            self._fail("received a gradient", with_grad)

    def state_now(self, model) -> FrozenBaseCheck:
        """``result`` as it would be if training ended now (for a checkpoint's record)."""
        changed = changed_tensors(self._start, fingerprint_base(model))
        return dataclasses.replace(self.result, changed_tensors=changed, passed=not (
            changed or self.result.base_requires_grad or self.result.base_with_grad))

    def on_train_end(self, args, state, control, **kwargs):
        changed = changed_tensors(self._start, fingerprint_base(kwargs["model"]))
        self.result.changed_tensors = changed
        if changed:
            self._fail("changed during training", changed)
        self.result.passed = not (changed or self.result.base_requires_grad or self.result.base_with_grad)
