"""Gradient-flow verification of the LoRA factors in the first optimizer steps.

The rule follows from ΔW = s·B·A: for an output gradient G and input x, ∂L/∂B = s·G·(A x)ᵀ
and ∂L/∂A = s·Bᵀ·G·xᵀ, so a factor's gradient is non-zero whenever the *other* factor is
non-zero (and the loss depends on the layer). The check applies that rule to what it
observes, so it states the right rule for every initialisation:

* B = 0 at init (PEFT's default, EVA, Gaussian): lora_B is checked from step 1, lora_A once
  its module's lora_B has moved (LoRA paper §4.1);
* both factors non-zero at init (PiSSA, OLoRA, LoftQ, orthogonal, ``init_lora_weights=False``):
  both are checked from step 1;
* a frozen factor (MiCA freezes lora_B) is not checked, and named in ``frozen_factors``;
* DoRA's magnitude vector is checked at step 1 (its gradient never depends on B alone).

A factor whose partner never becomes non-zero cannot be checked: the result is then failed
with that reason, never passed.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from loraexp.errors import VerificationError
from loraexp.results.record import GradFlowCheck

FACTORS = ("lora_A", "lora_B")
PARTNER = {"lora_A": "lora_B", "lora_B": "lora_A"}


def _lora_parameters(model) -> tuple[dict[str, dict[str, torch.nn.Parameter]], dict[str, torch.nn.Parameter]]:
    """``({module: {"lora_A": p, "lora_B": p}}, {module: magnitude})`` of every LoRA module,
    frozen factors included (their ``requires_grad`` is False)."""
    pairs: dict[str, dict[str, torch.nn.Parameter]] = {}
    magnitudes: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            module, factor = name.split(".lora_")[0], "lora_" + name.split(".lora_")[1][0]
            pairs.setdefault(module, {})[factor] = p
        elif ".lora_magnitude_vector." in name and p.requires_grad:
            magnitudes[name.split(".lora_magnitude_vector.")[0]] = p
    return pairs, magnitudes


def describe_rule(a_zero: bool, b_zero: bool, frozen: set[str]) -> str:
    """The gradient-flow rule for factors observed at step 1 (``a_zero``/``b_zero``: the factor
    is zero in every module; ``frozen``: factor names that do not train)."""
    parts = []
    for factor in FACTORS:
        partner_zero = b_zero if factor == "lora_A" else a_zero
        if factor in frozen:
            parts.append(f"{factor} frozen: not applicable")
        elif partner_zero:
            parts.append(f"{factor} non-zero once {PARTNER[factor]} has moved ({PARTNER[factor]} = 0 at init)")
        else:
            parts.append(f"{factor} non-zero from step 1 ({PARTNER[factor]} non-zero at init)")
    return "; ".join(parts)


class GradFlowCallback(TrainerCallback):
    """Checks LoRA gradients before optimizer steps (``on_pre_optimizer_step``):

    * steps 1..``steps``: every trainable LoRA parameter has a finite gradient;
    * from the first step at which a factor's partner is non-zero (see the module docstring),
      that factor's gradient is non-zero; checked until every trainable factor has passed;
    * step 1: a DoRA magnitude vector's gradient is non-zero.

    Steps count from the start of this attempt (after ``--resume``, from the checkpoint). A
    resumed attempt whose checkpoint records a passed check (``prior``) carries that result
    forward and checks nothing more. Raises :class:`VerificationError` at the first violation.
    ``result`` is a :class:`~loraexp.results.record.GradFlowCheck` (``passed`` True once every check
    passed; False on failure or if training ended first; ``init`` is set by the recipe).
    """

    def __init__(self, steps: int = 2, prior: GradFlowCheck | None = None, init: str | None = None):
        self.steps = steps
        self.carried = bool(prior and prior.passed)
        self.result = prior if self.carried else GradFlowCheck(init=init)
        self._pending: set[tuple[str, str]] | None = None
        self._trained_kinds: set[str] = set()  # factor kinds with at least one trainable module
        self._first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._first_step = state.global_step  # > 0 when resumed: steps count from there

    def _fail(self, message: str) -> None:
        self.result.passed = False
        self.result.reason = message
        raise VerificationError(f"gradient flow: {message}")

    def _start(self, pairs) -> None:
        """At the first step: which factors train, and the rule the initialisation implies."""
        frozen = sorted(f"{m}.{k}" for m, f in pairs.items() for k, p in f.items() if not p.requires_grad)
        self.result.frozen_factors = frozen[:20]
        self._pending = {(m, k) for m, f in pairs.items() for k, p in f.items() if p.requires_grad}
        self._trained_kinds = {k for _, k in self._pending}
        zero = {k: all(not bool(f[k].detach().any()) for f in pairs.values()) for k in FACTORS}
        frozen_kinds = {k for k in FACTORS if all(not f[k].requires_grad for f in pairs.values())}
        self.result.rule = describe_rule(zero["lora_A"], zero["lora_B"], frozen_kinds)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1 - self._first_step  # the optimizer step about to be taken, of this attempt
        if self.carried or (step > self.steps and not self._pending):
            return
        pairs, magnitudes = _lora_parameters(kwargs["model"])
        if not any(p.requires_grad for f in pairs.values() for p in f.values()):
            self._fail("the model has no trainable LoRA parameters")
        if self._pending is None:
            self._start(pairs)
        if step <= self.steps:
            self._check_finite(pairs, magnitudes, step)
        if step == 1:
            self._check_magnitudes(magnitudes)
        self._check_factors(pairs, step)
        self.result.passed = step >= self.steps and not self._pending

    def _check_factors(self, pairs, step: int) -> None:
        ready: dict[str, list[tuple[str, float]]] = {k: [] for k in FACTORS}
        for module, factor in sorted(self._pending):
            if bool(pairs[module][PARTNER[factor]].detach().any()):
                ready[factor].append((module, float(pairs[module][factor].grad.float().norm())))
        for factor, norms in ready.items():
            if not norms:
                continue
            zero = [m for m, v in norms if v == 0.0]
            if zero:
                moved = "has moved" if factor == "lora_A" else "is non-zero"
                self._fail(f"{factor} gradient is exactly zero at step {step} in {len(zero)} modules although "
                           f"their {PARTNER[factor]} {moved}, e.g. {zero[:3]}")
            smallest = min(v for _, v in norms)
            if factor == "lora_A":
                previous = self.result.lora_A_min_grad_norm
                self.result.lora_A_min_grad_norm = smallest if previous is None else min(previous, smallest)
            elif step == 1:
                self.result.lora_B_min_grad_norm_step1 = smallest
            self._pending -= {(m, factor) for m, _ in norms}
        for factor in self._trained_kinds:  # a frozen factor is never "verified"
            field = f"{factor}_verified_step"
            if getattr(self.result, field) is None and not any(k == factor for _, k in self._pending):
                setattr(self.result, field, step)

    def _check_magnitudes(self, magnitudes) -> None:
        if not magnitudes:
            return
        norms = {m: float(p.grad.float().norm()) for m, p in magnitudes.items()}
        self.result.magnitude_min_grad_norm_step1 = min(norms.values())
        zero = [m for m, v in norms.items() if v == 0.0]
        if zero:
            self._fail(f"DoRA magnitude gradient is exactly zero at step 1 in {len(zero)} modules, e.g. {zero[:3]}")

    def _check_finite(self, pairs, magnitudes, step: int) -> None:
        params = {f"{m}.{k}": p for m, f in pairs.items() for k, p in f.items() if p.requires_grad}
        params.update({f"{m}.lora_magnitude_vector": p for m, p in magnitudes.items()})
        missing = [n for n, p in params.items() if p.grad is None]
        if missing:
            self._fail(f"{len(missing)} LoRA parameters got no gradient at step {step}, e.g. {missing[:3]}")
        nonfinite = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
        if nonfinite:
            self._fail(f"non-finite LoRA gradients at step {step} in {nonfinite[:3]}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.carried:
            return
        if self._pending is None:  # no optimizer step: nothing was observed
            self.result.reason = "no optimizer step was taken, so gradient flow could not be observed"
        elif self._pending:
            factor, partner = ("lora_A", "lora_B") if any(k == "lora_A" for _, k in self._pending) else (
                "lora_B", "lora_A")
            count = len({m for m, k in self._pending if k == factor})
            self.result.passed = False
            self.result.reason = (f"{partner} never moved in {count} modules, so {factor} gradient flow could not be "
                                  "verified (too few steps, or learning rate 0)")
        elif not self.result.passed:
            self.result.reason = (f"training ended after {state.global_step - self._first_step} optimizer steps, "
                                  f"fewer than the {self.steps} the check needs (verification.grad_flow_steps)")
