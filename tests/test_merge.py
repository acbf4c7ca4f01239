"""Merge equivalence (PEFT's fp32 tolerance 1e-4, never vacuous) and adapter save/load."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from loraexp.model.load import attach_lora
from loraexp.run.merge_check import check_merge_equivalence
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


@pytest.mark.parametrize("repeats,timed", [(0, False), (1, True), (2, True)])
def test_latency_is_timed_only_on_request(repeats, timed, monkeypatch):
    """``latency_repeats`` 0 (the default): no timed passes, latencies recorded as not measured."""
    from loraexp.run import merge_check as merge

    passes = []
    real = merge._seconds_per_batch
    monkeypatch.setattr(merge, "_seconds_per_batch", lambda *a: passes.append(a[2]) or real(*a))
    model, _ = attach_lora(tiny_classifier("bert"), {"r": 4, "lora_alpha": 8, "target_modules": "standard"})
    _perturb_lora(model)
    _, result = check_merge_equivalence(model, BATCHES, latency_repeats=repeats)
    assert result.passed and passes == ([repeats] * 2 if timed else [])
    assert (result.adapter_latency_s is not None) is timed and (result.merged_latency_s is not None) is timed


@pytest.mark.parametrize("batch,length", [
    ({"input_ids": [[5, 6, 0, 0], [7, 0, 0, 0]], "attention_mask": [[1, 1, 0, 0], [1, 0, 0, 0]]}, 2),  # right padded
    ({"input_ids": [[0, 0, 5, 6], [0, 0, 0, 7]], "attention_mask": [[0, 0, 1, 1], [0, 0, 0, 1]]}, 4),  # left padded
    ({"input_ids": [[5, 6, 7, 8]], "attention_mask": [[1, 1, 1, 1]]}, 4),                              # no padding
    ({"input_ids": [[5, 6, 0, 0]]}, 4),                                                                # no mask
])
def test_check_batches_drop_the_padding_every_row_has_at_the_end(batch, length):
    from loraexp.run.merge_check import trim_padding

    batch = {k: torch.tensor(v) for k, v in batch.items()}
    trimmed = trim_padding({**batch, "token_type_ids": torch.zeros_like(batch["input_ids"]), "ids": torch.arange(2)})
    assert {k: v.shape[1] for k, v in trimmed.items() if v.dim() == 2} == dict.fromkeys(
        [*batch, "token_type_ids"], length)
    assert torch.equal(trimmed["input_ids"], batch["input_ids"][:, :length]) and torch.equal(trimmed["ids"],
                                                                                               torch.arange(2))


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


@pytest.fixture
def fresh_accelerate_state():
    """Reset accelerate's process-wide state after a test that prepared a model itself (a
    Trainer resets it when it builds its own Accelerator)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _base_with_loud_head():
    """Tiny BERT whose head multiplies by 100, so bf16 autocast rounding reaches ~1e-3 on
    the logits (100 bf16 steps of MiniLM on SST-2 gave 0.0095)."""
    base = tiny_classifier("bert")
    with torch.no_grad():
        base.classifier.weight.mul_(100)
    return base


@pytest.mark.parametrize("mixed_precision,autocast_gap", [("no", 0.0), ("bf16", 1e-3)])
def test_checks_compare_in_the_weights_dtype_after_mixed_precision(fresh_accelerate_state, tmp_path, mixed_precision,
                                                                    autocast_gap):
    """A model prepared by accelerate for bf16 mixed precision (as ``Trainer.train`` does)
    runs under autocast; the merge and reload checks compare in float32, as its weights are,
    and leave the wrapper in place."""
    import copy

    from accelerate import Accelerator

    from loraexp.run.merge_check import check_adapter_reload, model_logits, stored_precision

    base = _base_with_loud_head()
    original = copy.deepcopy(base)
    model, _ = attach_lora(base, {"r": 4, "lora_alpha": 8, "target_modules": "standard", "modules_to_save": []})
    _perturb_lora(model)
    model = Accelerator(mixed_precision=mixed_precision, cpu=True).prepare_model(model).eval()
    with torch.no_grad():
        as_trained = torch.cat([model(**b).logits for b in BATCHES])
        with stored_precision(model):
            stored = torch.cat([model(**b).logits for b in BATCHES])
    gap = float((as_trained - stored).abs().max())
    assert gap > autocast_gap if autocast_gap else gap == 0.0  # under autocast the outputs are bf16-rounded

    merged, merge = check_merge_equivalence(model, BATCHES, atol=1e-4, latency_repeats=1)
    assert merge.passed and merge.precision == "float32" and merge.max_abs_diff <= 1e-5, merge
    assert merge.adapter_vs_base_max_abs_diff > 1e-4  # not vacuous
    model.save_pretrained(tmp_path / "adapter")
    reload = check_adapter_reload(model, original, tmp_path / "adapter", BATCHES,
                                  reference_logits=model_logits(model, BATCHES))
    assert reload.passed and reload.precision == "float32" and reload.max_abs_diff <= 1e-5, reload
    with torch.no_grad():  # the wrapper is back: later evaluations run as configured
        assert torch.equal(torch.cat([model(**b).logits for b in BATCHES]), as_trained)


@pytest.mark.parametrize("given", [False, True])
def test_adapter_logits_the_caller_has_are_not_computed_again(given, monkeypatch):
    """The recipe passes the reload check's reference logits; the result is the same and the
    adapter model runs one pass over the check batches fewer."""
    from loraexp.run import merge_check as merge

    model, _ = attach_lora(tiny_classifier("bert"), {"r": 4, "lora_alpha": 8, "target_modules": "standard"})
    _perturb_lora(model)
    reference = merge.model_logits(model.eval(), BATCHES)
    passes = []
    real = merge._logits
    monkeypatch.setattr(merge, "_logits", lambda m, b: passes.append(m) or real(m, b))
    _, result = check_merge_equivalence(model, BATCHES, latency_repeats=0,
                                        adapter_logits=reference if given else None)
    _, expected = check_merge_equivalence(model, BATCHES, latency_repeats=0)
    assert result == expected and result.passed
    assert len(passes) == (2 if given else 3) + 3  # base, [adapter,] merged; then the expected run's three
