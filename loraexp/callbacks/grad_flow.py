"""Gradient-flow verification of the LoRA factors in the first optimizer steps."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from loraexp.errors import VerificationError
from loraexp.record import GradFlowCheck


def _factor_pairs(model) -> dict[str, dict[str, torch.nn.Parameter]]:
    """``{module: {"lora_A": param, "lora_B": param}}`` for the trainable LoRA factors."""
    pairs: dict[str, dict[str, torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and (".lora_A." in name or ".lora_B." in name):
            module, factor = name.split(".lora_")[0], "lora_" + name.split(".lora_")[1][0]
            pairs.setdefault(module, {})[factor] = p
    return pairs


class GradFlowCallback(TrainerCallback):
    """Checks LoRA gradients before optimizer steps (``on_pre_optimizer_step``):

    * steps 1..``steps``: every LoRA gradient exists and is finite;
    * step 1: every ``lora_B`` gradient is non-zero (B starts at zero, A does not, so B is
      the only factor that receives gradient at first; LoRA paper §4.1);
    * from the first step at which a module's ``lora_B`` is non-zero (B has moved; with a
      warmup starting at lr 0 that can be later than step 2): that module's ``lora_A``
      gradient is non-zero. Checked until every module has passed.

    Steps count from the start of this attempt (after ``--resume``, from the checkpoint). A
    resumed attempt whose checkpoint records a passed check (``prior``, from
    :func:`loraexp.checkpoints.read_verification`) carries that result forward and checks
    nothing more (so one or zero remaining steps do not fail it).
    Raises :class:`VerificationError` at the first violation. ``result`` is a
    :class:`~loraexp.record.GradFlowCheck` (``passed`` True once every check passed; False on
    failure or if training ended first).
    """

    def __init__(self, steps: int = 2, prior: GradFlowCheck | None = None):
        self.steps = steps
        self.carried = bool(prior and prior.passed)
        self.result = prior if self.carried else GradFlowCheck()
        self._a_pending: set[str] | None = None
        self._first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._first_step = state.global_step  # > 0 when resumed: steps count from there

    def _fail(self, message: str) -> None:
        self.result.passed = False
        self.result.reason = message
        raise VerificationError(f"gradient flow: {message}")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1 - self._first_step  # the optimizer step about to be taken, of this attempt
        if self.carried or (step > self.steps and not self._a_pending):
            return
        pairs = _factor_pairs(kwargs["model"])
        if not pairs:
            self._fail("the model has no trainable LoRA parameters")
        if self._a_pending is None:
            self._a_pending = set(pairs)
        if step <= self.steps:
            self._check_finite(pairs, step)
        if step == 1:
            norms = {m: float(f["lora_B"].grad.float().norm()) for m, f in pairs.items()}
            self.result.lora_B_min_grad_norm_step1 = min(norms.values())
            zero = [m for m, v in norms.items() if v == 0.0]
            if zero:
                self._fail(f"lora_B gradient is exactly zero at step 1 in {len(zero)} modules, e.g. {zero[:3]}")
        moved = [m for m in self._a_pending if bool(pairs[m]["lora_B"].detach().any())]
        for module in moved:
            norm = float(pairs[module]["lora_A"].grad.float().norm())
            previous = self.result.lora_A_min_grad_norm
            self.result.lora_A_min_grad_norm = norm if previous is None else min(previous, norm)
            if norm == 0.0:
                self._fail(f"lora_A gradient is exactly zero at step {step} in {module} although its lora_B has moved")
            self._a_pending.discard(module)
        if not self._a_pending and self.result.lora_A_verified_step is None:
            self.result.lora_A_verified_step = step
        self.result.passed = step >= self.steps and not self._a_pending

    def _check_finite(self, pairs, step: int) -> None:
        missing = [f"{m}.{k}" for m, f in pairs.items() for k, p in f.items() if p.grad is None]
        if missing:
            self._fail(f"{len(missing)} LoRA parameters got no gradient at step {step}, e.g. {missing[:3]}")
        nonfinite = [f"{m}.{k}" for m, f in pairs.items() for k, p in f.items() if not torch.isfinite(p.grad).all()]
        if nonfinite:
            self._fail(f"non-finite LoRA gradients at step {step} in {nonfinite[:3]}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.carried:
            return
        if self._a_pending is None:  # no optimizer step: nothing was observed
            self.result.reason = "no optimizer step was taken, so gradient flow could not be observed"
        elif self._a_pending:
            self.result.passed = False
            self.result.reason = (f"lora_B never moved in {len(self._a_pending)} modules, so lora_A gradient flow "
                                  "could not be verified (too few steps, or learning rate 0)")
        elif not self.result.passed:
            self.result.reason = (f"training ended after {state.global_step - self._first_step} optimizer steps, "
                                  f"fewer than the {self.steps} the check needs (verification.grad_flow_steps)")
