"""Merge equivalence (PEFT's fp32 tolerance 1e-4, never vacuous) and adapter save/load."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from loraexp.analysis.merge import check_merge_equivalence
from loraexp.models import attach_lora
from tests.conftest import tiny_classifier

BATCHES = [{"input_ids": torch.randint(1, 100, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
           for _ in range(2)]


def _perturb_lora(model, scale=0.5):
    torch.manual_seed(123)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("preset", ["standard", "all-linear"])
def test_merged_model_matches_adapter_model(arch, preset):
    model, _ = attach_lora(tiny_classifier(arch), {"r": 4, "lora_alpha": 8, "target_modules": preset,
                                                   "lora_dropout": 0.1})
    _perturb_lora(model)
    merged, result = check_merge_equivalence(model, BATCHES, atol=1e-4, latency_repeats=1)
    assert result.passed, result
    assert result.adapter_vs_base_max_abs_diff > 1e-4  # not vacuous
    assert result.max_abs_diff <= 1e-4
    assert result.adapter_latency_s > 0 and result.merged_latency_s > 0
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_check_fails_when_the_adapter_does_not_change_the_output():
    # B = 0 and no trained head: adapter == base, so equivalence would be vacuous.
    model, _ = attach_lora(tiny_classifier("bert"), {"r": 4, "target_modules": "standard", "modules_to_save": []})
    _, result = check_merge_equivalence(model, BATCHES, latency_repeats=1)
    assert not result.passed
    assert "does not change the output" in result.reason


def test_check_fails_when_merge_is_wrong(monkeypatch):
    from peft.tuners.lora.layer import Linear

    model, _ = attach_lora(tiny_classifier("bert"), {"r": 4, "target_modules": "standard"})
    _perturb_lora(model)
    real_delta = Linear.get_delta_weight
    # a merge that scales ΔW wrongly (the adapter's forward does not use get_delta_weight)
    monkeypatch.setattr(Linear, "get_delta_weight", lambda self, adapter: 3 * real_delta(self, adapter))
    _, result = check_merge_equivalence(model, BATCHES, latency_repeats=1)
    assert not result.passed and result.max_abs_diff > 1e-4
    assert result.precision == "float64"  # a real merge error stays in float64
    assert "differ from adapter logits" in result.reason


def _loud_classifier():
    """Tiny BERT with LoRA whose head multiplies by 1e5: float32 rounding inside the encoder
    (relative ~1e-7) then reaches ~1e-2 on the logits, as the massive activations of a trained
    SmolLM2 do (docs/verification.md, "Merge tolerance")."""
    model, _ = attach_lora(tiny_classifier("bert"), {"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
                                                    "modules_to_save": []})
    _perturb_lora(model)
    with torch.no_grad():
        model.base_model.model.classifier.weight.mul_(1e5)
    return model


def test_float32_rounding_alone_is_not_reported_as_a_failed_merge():
    model = _loud_classifier()
    merged, result = check_merge_equivalence(model, BATCHES, atol=1e-4, latency_repeats=1)
    assert result.float32_max_abs_diff > 1e-4  # the float32 comparison alone would fail
    assert result.precision == "float64" and result.max_abs_diff <= 1e-4 and result.passed, result
    assert result.float32_rounding_max_abs_diff > 1e-4  # the adapter model itself is that far from float64
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # the returned merge is the float32 one
    assert any("lora_" in n for n, _ in model.named_parameters())  # the checked model is not consumed


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_adapter_save_load_round_trip(arch, tmp_path):
    model, _ = attach_lora(tiny_classifier(arch), {"r": 4, "target_modules": "attention"})
    _perturb_lora(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".modules_to_save." in n:
                p.add_(1.0)  # the trained head must round-trip too
    model.eval()
    with torch.no_grad():
        expected = model(**BATCHES[0]).logits
    model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    loaded = PeftModel.from_pretrained(tiny_classifier(arch), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**BATCHES[0]).logits, expected, rtol=0, atol=1e-6)
