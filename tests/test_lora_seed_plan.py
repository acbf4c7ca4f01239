"""The seed LoRA test plan, with exact figures, on tiny models built here."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from loraexp.analysis.params import is_base_parameter, parameter_report


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = torch.nn.Linear(10, 20)
        self.lin1 = torch.nn.Linear(20, 7)
        self.head = torch.nn.Linear(7, 2)

    def forward(self, x):
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


LAYER_SHAPES = {"lin0": (10, 20), "lin1": (20, 7), "head": (7, 2)}

CASES = [  # (r, target_modules)
    (1, ["lin0"]),
    (4, ["lin0", "lin1"]),
    (8, ["lin0", "lin1", "head"]),
    (16, ["lin1"]),
]


def make(r, targets, seed=0):
    torch.manual_seed(seed)
    base = TinyMLP()
    torch.manual_seed(seed + 1)
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))


@pytest.mark.parametrize("r,targets", CASES)
def test_trainable_count_is_r_times_in_plus_out(r, targets):
    model = make(r, targets)
    expected = sum(r * (LAYER_SHAPES[t][0] + LAYER_SHAPES[t][1]) for t in targets)
    assert parameter_report(model)["trainable_params"] == expected
    assert parameter_report(model)["lora_params"] == expected
    for t in targets:
        layer = dict(model.named_modules())[f"base_model.model.{t}"]
        assert layer.lora_A["default"].weight.shape == (r, LAYER_SHAPES[t][0])
        assert layer.lora_B["default"].weight.shape == (LAYER_SHAPES[t][1], r)


def _one_step(model, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = torch.randn(8, 10)
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 2, (8,)))
    loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("r,targets", CASES)
def test_base_bit_identical_and_lora_changes_after_optimizer_step(r, targets):
    model = make(r, targets)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if is_base_parameter(n)}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    _one_step(model)
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), f"base parameter {n} changed"
    # B starts at zero and gets gradient at step 1; A only once B is non-zero.
    changed_b = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, lora_before[n])]
    assert len(changed_b) == len(targets)


@pytest.mark.parametrize("r,targets", CASES)
def test_only_trainable_parameters_get_gradients(r, targets):
    model = make(r, targets)
    model(torch.randn(4, 10)).sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert "lora_" in n
            assert p.grad is not None, n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("r,targets", CASES)
def test_output_equals_base_at_init_and_differs_after_update(r, targets):
    torch.manual_seed(0)
    base = TinyMLP().eval()
    x = torch.randn(5, 10)
    with torch.no_grad():
        base_out = base(x).clone()
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets)).eval()
    with torch.no_grad():
        assert torch.equal(model(x), base_out)  # B = 0: exactly the base function
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
        assert not torch.allclose(model(x), base_out, atol=1e-3)
