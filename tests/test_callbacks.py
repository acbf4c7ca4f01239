"""Verification callbacks: they catch broken invariants and name them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from loraexp.errors import VerificationError
from loraexp.model.load import attach_lora
from loraexp.run.callbacks import AdapterStatsCallback, FrozenBaseCallback, GradFlowCallback
from loraexp.run.callbacks.adapter_stats import flatten_statistics
from tests.conftest import tiny_classifier

INPUTS = {"input_ids": torch.randint(1, 100, (4, 10)), "attention_mask": torch.ones(4, 10, dtype=torch.long),
          "labels": torch.tensor([0, 1, 0, 1])}


def lora_model(**lora):
    model, _ = attach_lora(tiny_classifier("bert"), {"r": 4, "lora_alpha": 8, "target_modules": "standard", **lora})
    return model.train()


def state(step=0):
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def backward(model):
    model.zero_grad()
    model(**INPUTS).loss.backward()


def test_frozen_base_passes_for_untouched_base():
    model, cb = lora_model(), FrozenBaseCallback()
    cb.on_train_begin(None, state(), None, model=model)
    backward(model)
    cb.on_pre_optimizer_step(None, state(), None, model=model)
    cb.on_train_end(None, state(1), None, model=model)
    assert cb.result.passed and cb.result.base_tensors > 0


@pytest.mark.parametrize("breakage,phase,fragment", [
    ("requires_grad", "begin", "require grad"),
    ("grad", "step", "received a gradient"),
    ("change", "end", "changed during training"),
])
def test_frozen_base_detects_breakage(breakage, phase, fragment):
    model, cb = lora_model(), FrozenBaseCallback()
    weight = model.base_model.model.bert.encoder.layer[0].attention.self.key.weight
    if breakage == "requires_grad":
        weight.requires_grad_(True)
    with pytest.raises(VerificationError, match=fragment):
        cb.on_train_begin(None, state(), None, model=model)
        backward(model)
        if breakage == "grad":
            weight.grad = torch.zeros_like(weight)
        cb.on_pre_optimizer_step(None, state(), None, model=model)
        if breakage == "change":
            with torch.no_grad():
                weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(10.0))  # one ulp
        cb.on_train_end(None, state(1), None, model=model)
    assert cb.result.passed is False


def test_grad_flow_passes_on_real_training_steps():
    model, cb = lora_model(), GradFlowCallback(steps=2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        backward(model)
        cb.on_pre_optimizer_step(None, state(step), None, model=model)
        optimizer.step()
    assert cb.result.passed is True
    assert cb.result.lora_B_min_grad_norm_step1 > 0 and cb.result.lora_A_min_grad_norm > 0
    assert cb.result.lora_A_verified_step == 2


def test_grad_flow_waits_for_b_to_move_under_zero_lr_warmup():
    model, cb = lora_model(), GradFlowCallback(steps=2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    for step in range(2):  # lr 0: B never moves, lora_A cannot be verified yet
        backward(model)
        cb.on_pre_optimizer_step(None, state(step), None, model=model)
        optimizer.step()
    assert cb.result.passed is False
    cb.on_train_end(None, state(2), None, model=model)
    assert "lora_B never moved" in cb.result.reason


@pytest.mark.parametrize("corruption,fragment", [
    ("nan", "non-finite LoRA gradients at step 1"),
    ("zero_b", "lora_B gradient is exactly zero at step 1"),
    ("no_grad", "got no gradient at step 1"),
])
def test_grad_flow_detects_bad_gradients(corruption, fragment):
    model, cb = lora_model(), GradFlowCallback()
    backward(model)
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    if corruption == "nan":
        b.grad[0, 0] = float("nan")
    elif corruption == "zero_b":
        b.grad.zero_()
    else:
        b.grad = None
    with pytest.raises(VerificationError, match=fragment):
        cb.on_pre_optimizer_step(None, state(0), None, model=model)
    assert cb.result.passed is False


def test_adapter_stats_logs_design_keys_at_cadence_and_leaves_weights_alone():
    model = lora_model()
    logged = []
    cb = AdapterStatsCallback(lambda metrics, step: logged.append((step, metrics)), every=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in (1, 2, 3, 4):
        cb.on_step_end(None, state(step), None, model=model)
    cb.on_train_end(None, state(4), None, model=model)
    assert [s for s, _ in logged] == [2, 4, 4]
    keys = logged[0][1]
    module = "bert.encoder.layer.0.attention.self.query"
    for k in ("A_norm", "B_norm", "A_mean", "A_std", "B_mean", "B_std", "delta_norm"):
        assert f"lora_adapters/{module}/{k}" in keys
    for k in ("effective_rank", "stable_rank", "k90", "utilization"):
        assert f"lora_rank/{module}/{k}" in keys
    assert keys[f"lora_adapters/{module}/delta_norm"] == 0.0  # B = 0 at init
    assert set(cb.final) == {f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_flattened_delta_norm_matches_dense_delta_w():
    model = lora_model()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    from loraexp.analysis.adapter_stats import adapter_statistics

    flat = flatten_statistics(adapter_statistics(model))
    layer = model.base_model.model.bert.encoder.layer[1].attention.self.value
    dense = 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # alpha/r = 8/4
    assert flat["lora_adapters/bert.encoder.layer.1.attention.self.value/delta_norm"] == pytest.approx(
        float(dense.double().norm()), rel=1e-6)


def _train(model, cb, steps=3, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        backward(model)
        cb.on_pre_optimizer_step(None, state(step), None, model=model)
        optimizer.step()
    cb.on_train_end(None, state(steps), None, model=model)


@pytest.mark.parametrize("init, rule_parts, verified_a", [
    (True, ["lora_A non-zero once lora_B has moved", "lora_B non-zero from step 1"], 2),
    (False, ["lora_A non-zero from step 1", "lora_B non-zero from step 1"], 1),  # both factors random
    ("pissa", ["lora_A non-zero from step 1", "lora_B non-zero from step 1"], 1),
    ("olora", ["lora_A non-zero from step 1", "lora_B non-zero from step 1"], 1),
    ("gaussian", ["lora_A non-zero once lora_B has moved"], 2),
    ("mica", ["lora_A non-zero from step 1", "lora_B frozen: not applicable"], 1),
])
def test_grad_flow_states_and_checks_the_rule_of_each_initialisation(init, rule_parts, verified_a):
    model, cb = lora_model(init_lora_weights=init), GradFlowCallback(steps=2, init=str(init))
    _train(model, cb)
    assert cb.result.passed is True, cb.result.reason
    assert all(part in cb.result.rule for part in rule_parts), cb.result.rule
    assert cb.result.lora_A_verified_step == verified_a
    if init == "mica":
        assert cb.result.frozen_factors and all(f.endswith("lora_B") for f in cb.result.frozen_factors)
        assert cb.result.lora_B_verified_step is None  # B is frozen: never checked, never "verified"
    else:
        assert cb.result.frozen_factors == []


def test_grad_flow_with_both_factors_zero_is_never_passed():
    """A = B = 0: no factor can receive a gradient, so nothing is observable; the check fails
    with that reason instead of passing."""
    model = lora_model()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.zero_()
    cb = GradFlowCallback(steps=2)
    _train(model, cb, lr=0.0)
    assert cb.result.passed is False
    assert "never moved" in cb.result.reason


def test_dora_magnitude_gradient_is_checked_at_step_one():
    model, cb = lora_model(use_dora=True), GradFlowCallback(steps=2)
    _train(model, cb)
    assert cb.result.passed is True and cb.result.magnitude_min_grad_norm_step1 > 0
    model, cb = lora_model(use_dora=True), GradFlowCallback(steps=2)
    backward(model)
    for n, p in model.named_parameters():
        if "lora_magnitude_vector" in n:
            p.grad.zero_()
    with pytest.raises(VerificationError, match="DoRA magnitude gradient is exactly zero"):
        cb.on_pre_optimizer_step(None, state(0), None, model=model)


def test_full_training_check_names_a_tensor_that_did_not_move():
    from loraexp.run.callbacks import FullTrainingCallback

    model = tiny_classifier("bert").train()
    cb = FullTrainingCallback(steps=1)
    cb.on_train_begin(None, state(), None, model=model)
    backward(model)
    cb.on_pre_optimizer_step(None, state(0), None, model=model)
    with torch.no_grad():
        for p in list(model.parameters())[1:]:
            p.add_(1e-3)  # every tensor but the first moves
    with pytest.raises(VerificationError, match="did not change"):
        cb.on_train_end(None, state(1), None, model=model)
    assert cb.result.passed is False and len(cb.result.unchanged) == 1


def test_full_training_check_rejects_a_zero_gradient():
    from loraexp.run.callbacks import FullTrainingCallback

    model = tiny_classifier("bert").train()
    cb = FullTrainingCallback(steps=2)
    cb.on_train_begin(None, state(), None, model=model)
    backward(model)
    next(model.parameters()).grad.zero_()
    with pytest.raises(VerificationError, match="all-zero gradient at step 1"):
        cb.on_pre_optimizer_step(None, state(0), None, model=model)
    assert cb.result.zero_grad
