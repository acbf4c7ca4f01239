"""QLoRA on a tiny Llama: 4-bit layers, frozen base, LoRA gradient flow (also after an
evaluation pass, the bitsandbytes CPU repacking bug), weight bytes, and the merge into a
full-precision reload."""

from __future__ import annotations

import pytest
import torch

from loraexp.config.load import QuantizationConfig
from loraexp.model.load import CAUSAL_LM, attach_lora, load_model
from loraexp.model.quantization import bnb_config, prepare_for_training, weight_bytes
from loraexp.run.merge_check import check_quantized_merge

bnb = pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "nf4": QuantizationConfig(method="nf4"),
    "nf4-dq": QuantizationConfig(method="nf4", double_quant=True),
    "fp4": QuantizationConfig(method="fp4"),
}


def _quantized_lora(path, q):
    model, tokenizer = load_model(path, CAUSAL_LM, quantization_config=bnb_config(q))
    model = prepare_for_training(model, q)
    peft_model, _ = attach_lora(model, {"r": 4, "lora_alpha": 8, "target_modules": "attention"}, seed=0,
                                task_type=CAUSAL_LM)
    return peft_model, tokenizer


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 1000, (2, 16), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _lora_b_grad_norms(model):
    return {n: float(p.grad.norm()) for n, p in model.named_parameters() if "lora_B" in n and p.grad is not None}


@pytest.mark.parametrize("name", list(QUANTIZATIONS))
@pytest.mark.parametrize("evaluate_first", [False, True])
def test_qlora_training_step(tiny_causal_lm_dir, name, evaluate_first):
    model, _ = _quantized_lora(tiny_causal_lm_dir, QUANTIZATIONS[name])
    linear4bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 2 * (4 + 3)  # q, k, v, o + gate, up, down in each of 2 layers
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    if evaluate_first:  # an eval pass must not break later gradients (bitsandbytes CPU repacking)
        model.eval()
        with torch.no_grad():
            model(**{k: v for k, v in _batch().items() if k != "labels"})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        loss = model(**_batch(step)).loss
        loss.backward()
        norms = _lora_b_grad_norms(model)
        assert len(norms) == 2 * 4 and all(v > 0 for v in norms.values()), norms  # every lora_B gets gradient
        optimizer.step()
        optimizer.zero_grad()
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.detach(), base_before[n]), n  # base frozen bit for bit


def test_four_bit_base_weight_bytes_are_a_fraction_of_full_precision(tiny_causal_lm_dir):
    full, _ = load_model(tiny_causal_lm_dir, CAUSAL_LM)
    q = QUANTIZATIONS["nf4"]
    nf4, _ = load_model(tiny_causal_lm_dir, CAUSAL_LM, quantization_config=bnb_config(q))
    for model in (full, nf4):  # frozen, as under LoRA: every weight is base weight
        for p in model.parameters():
            p.requires_grad_(False)
    full_bytes, nf4_bytes = weight_bytes(full)["base_weight_bytes"], weight_bytes(nf4)["base_weight_bytes"]
    linear_params = sum(m.weight.numel() for n, m in full.named_modules()
                        if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    # the Linear weights shrink from 4 bytes to 0.5 byte each plus one float32 absmax per 64
    # weights; the 16-value NF4 code books (64 bytes each) take a little of that back
    expected_saving = linear_params * (4 - 0.5 - 4 / 64)
    assert 0.9 * expected_saving <= full_bytes - nf4_bytes <= expected_saving


def test_a_four_bit_base_counts_the_weights_it_stands_for(tiny_causal_lm_dir):
    from loraexp.analysis.params import parameter_report

    full, _ = load_model(tiny_causal_lm_dir, CAUSAL_LM)
    nf4, _ = load_model(tiny_causal_lm_dir, CAUSAL_LM, quantization_config=bnb_config(QUANTIZATIONS["nf4"]))
    packed = sum(p.numel() for p in nf4.parameters())
    assert packed < sum(p.numel() for p in full.parameters())  # the storage holds two weights per byte
    assert parameter_report(nf4)["total_params"] == parameter_report(full)["total_params"]


def test_qlora_merge_into_full_precision_reload(tiny_causal_lm_dir, tmp_path):
    model, _ = _quantized_lora(tiny_causal_lm_dir, QUANTIZATIONS["nf4-dq"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5 * torch.randn_like(p))  # a trained adapter
    model.save_pretrained(tmp_path / "adapter")
    full_precision, _ = load_model(tiny_causal_lm_dir, CAUSAL_LM)
    batches = [{k: v for k, v in _batch(i).items() if k != "labels"} for i in range(2)]
    merged, result = check_quantized_merge(model, full_precision, tmp_path / "adapter", batches, latency_repeats=1)
    assert result.passed, result
    assert result.space == "probs" and result.max_abs_diff <= 1e-2
    assert result.adapter_vs_base_max_abs_diff > 1e-4  # not vacuous
    assert result.quantization_gap_max_abs_diff > 0  # 4-bit and full precision differ, and it is reported
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())  # merged in full precision
    assert not any("lora_" in n for n, _ in merged.named_parameters())


@pytest.fixture(scope="module")
def loud_causal_lm_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer Llama whose tied embedding is scaled by 1e4: hidden states and logits of
    ~1e4 make float32 rounding alone differ merged from adapter outputs by more than 1e-4, as
    the massive activations of SmolLM2-135M do (docs/verification.md, "Merge tolerance")."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e4)
    path = tmp_path_factory.mktemp("loud-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_quantization_ablation_runs_in_one_process_without_a_false_merge_failure(loud_causal_lm_dir,
                                                                                tiny_lm_data_dir, tmp_path):
    """The ablation's three runs (none, nf4, nf4 + double quantization) in one process: every
    one completes; the full-precision run's float32 merge difference exceeds 1e-4 and the
    float64 comparison, which decides, is within it."""
    from loraexp.config.load import build_config
    from loraexp.sweep.runner import run_sweep

    cfg = build_config(overrides={
        "model": loud_causal_lm_dir, "task": "shakespeare", "data_dir": tiny_lm_data_dir, "output_dir": str(tmp_path),
        "sweep.mode": "ablation", "sweep.ablation_type": "quantization", "max_seq_length": 32,
        "max_eval_samples": 8, "training.max_steps": 3, "training.warmup_steps": 0,
        "training.per_device_train_batch_size": 4,
        "training.per_device_eval_batch_size": 4, "training.learning_rate": 1e-3, "evaluation.base_model": False,
        "verification.merge_space": "logits", "verification.latency_repeats": 1, "lora.target_modules": "attention"})
    result = run_sweep(cfg, progress=False)
    assert [r.status for r in result.runs] == ["completed"] * 3, [r.metrics.get("error") for r in result.runs]
    merge = result.runs[0].metrics["verification"]["merge"]
    assert merge["float32_max_abs_diff"] > 1e-4 and merge["precision"] == "float64" and merge["max_abs_diff"] <= 1e-4
