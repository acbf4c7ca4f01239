"""Verification of full fine-tuning: every weight trains."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from loraexp.analysis.base_weights import changed_tensors, tensor_fingerprint
from loraexp.errors import VerificationError
from loraexp.results.record import FullTrainingCheck

LISTED = 20  # offending tensor names kept in the record


class FullTrainingCallback(TrainerCallback):
    """Checks the invariants of full fine-tuning (docs/verification.md, "Full fine-tuning"):

    * train begin: every parameter has ``requires_grad``; fingerprint every tensor (BLAKE2b
      of its bytes, as the frozen-base check does);
    * optimizer steps 1..``steps`` (``on_pre_optimizer_step``): every parameter's gradient
      exists, is finite, and is non-zero (L2 norm > 0);
    * train end: every tensor differs from its start; passed only when all ``steps`` gradient
      checks were observed too.

    A resumed attempt gets ``prior``, the state :meth:`state_now` wrote into its checkpoint:
    the start fingerprints (so "moved" compares with the weights before the first attempt)
    and the gradient checks already observed. Raises :class:`VerificationError` at the first
    violation; ``result`` is a :class:`~loraexp.results.record.FullTrainingCheck` (``passed`` None
    until train end). Tied parameters count once (``named_parameters`` lists each once).
    """

    def __init__(self, steps: int = 2, prior: dict | None = None):
        self.steps = steps
        self.result = FullTrainingCheck(steps=steps)
        self._start: dict[str, str] = {}
        self._checked = 0  # gradient checks observed, over all attempts
        if isinstance(prior, dict) and isinstance(prior.get("start"), dict):
            self._start = dict(prior["start"])
            self._checked = int(prior.get("steps_checked") or 0)
            self.result.min_grad_norm = (prior.get("check") or {}).get("min_grad_norm")
        self._first_step = 0

    def _fail(self, what: str, names: list[str], field: str) -> None:
        setattr(self.result, field, names[:LISTED])
        self.result.passed = False
        self.result.reason = f"full fine-tuning: {len(names)} tensors {what}, e.g. {names[:3]}"
        raise VerificationError(self.result.reason)

    def state_now(self, model) -> dict:
        """What a checkpoint records for a resumed attempt: the result so far, the start
        fingerprints and the number of gradient checks observed."""
        import dataclasses

        return {"check": dataclasses.asdict(self.result), "start": self._start, "steps_checked": self._checked}

    def on_train_begin(self, args, state, control, **kwargs):
        model = kwargs["model"]
        self._first_step = state.global_step
        params = dict(model.named_parameters())
        self.result.tensors = len(params)
        frozen = [n for n, p in params.items() if not p.requires_grad]
        if frozen:
            self._fail("do not require grad", frozen, "not_trainable")
        if not self._start:  # a resumed attempt keeps the fingerprints of the first one
            self._start = {n: tensor_fingerprint(p) for n, p in params.items()}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._checked >= self.steps:
            return
        step = self._checked + 1
        params = dict(kwargs["model"].named_parameters())
        missing = [n for n, p in params.items() if p.grad is None]
        if missing:
            self._fail(f"got no gradient at step {step}", missing, "without_grad")
        nonfinite = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
        if nonfinite:
            self._fail(f"have non-finite gradients at step {step}", nonfinite, "nonfinite_grad")
        norms = {n: float(p.grad.float().norm()) for n, p in params.items()}
        zero = [n for n, v in norms.items() if v == 0.0]
        if zero:
            self._fail(f"have an all-zero gradient at step {step}", zero, "zero_grad")
        smallest = min(norms.values())
        self.result.min_grad_norm = smallest if self.result.min_grad_norm is None else min(
            self.result.min_grad_norm, smallest)
        self._checked = step

    def _conclude(self, model) -> None:
        if self._checked < self.steps:
            self.result.passed = False
            self.result.reason = (f"{self._checked} optimizer steps observed, fewer than the {self.steps} the gradient "
                                  "check needs (verification.grad_flow_steps)")
            return
        after = {n: tensor_fingerprint(p) for n, p in model.named_parameters()}
        unchanged = sorted(set(self._start) - set(changed_tensors(self._start, after)))
        if unchanged:
            self._fail("did not change during training", unchanged, "unchanged")
        self.result.passed = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._start:
            self._conclude(kwargs["model"])

    def finish_restored(self, model) -> None:
        """Conclude for a run restored from its final checkpoint (no training loop in this
        attempt): the carried gradient checks and the start fingerprints decide; without
        them (a checkpoint without a record) the check fails as not observed."""
        if not self._start:
            self.result.passed = False
            self.result.reason = "the final checkpoint has no verification record, so full training was not observed"
            return
        self._conclude(model)
