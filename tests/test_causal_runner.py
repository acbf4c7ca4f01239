"""Causal-LM runs end to end on a tiny Llama with SmolLM2's tokenizer: every causal task,
QLoRA, base-model evaluation, resume from a checkpoint, and the generate command."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from loraexp.cli import generate as generate_cli
from loraexp.config.load import build_config
from loraexp.results.record import STATUS_COMPLETED, STATUS_FAILED
from loraexp.run.recipe import run_experiment
from loraexp.sweep.runner import run_sweep


def _config(model_dir, data_dir, tmp_path, task="shakespeare", **extra):
    layer = {
        "task": task, "model": model_dir, "data_dir": data_dir, "output_dir": str(tmp_path / "results"),
        "max_seq_length": 64, "max_train_samples": 64, "max_eval_samples": 8,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "attention", "lora_dropout": 0.0},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                     "learning_rate": 1e-2, "warmup_steps": 0, "logging_steps": 1},
        "evaluation": {"generation_samples": 2, "max_new_tokens": 8, "generation_batch_size": 2},
        "tracking": {"wandb": "disabled", "stats_every_steps": 1},
    }
    for key, value in extra.items():
        layer[key] = {**layer[key], **value} if isinstance(value, dict) and key in layer else value
    return build_config(layer)


@pytest.mark.parametrize("task, metric", [
    ("shakespeare", "perplexity"),
    ("lima", "perplexity"),
    ("gsm8k", "exact_match"),
    ("sst2", "accuracy"),
])
def test_causal_lm_task_runs_end_to_end(tiny_causal_lm_dir, tiny_lm_data_dir, tiny_sst2_dir, tmp_path, task, metric):
    data = tiny_sst2_dir if task == "sst2" else tiny_lm_data_dir
    cfg = _config(tiny_causal_lm_dir, data, tmp_path, task=task)
    result = run_sweep(cfg, progress=False).runs[0]
    m = result.metrics
    assert result.status == STATUS_COMPLETED, m.get("error")
    assert m["resolved"]["objective"] == "CAUSAL_LM"
    assert metric in m["eval"] and metric in m["base_eval"]  # base model scored beside the adapter
    ver = m["verification"]
    assert ver["frozen_base"]["passed"] and ver["grad_flow"]["passed"]
    assert ver["merge"]["space"] == "probs" and ver["merge"]["passed"]
    eff = m["training_efficiency"]
    assert eff["base_weight_bytes"] > eff["trainable_bytes"] > 0 and eff["peak_mem_bytes"] > 0
    if task == "gsm8k":
        lines = (result.run_dir / "generations_eval.jsonl").read_text().splitlines()
        assert len(lines) == 2 and {"reference", "predicted", "generation"} <= set(json.loads(lines[0]))
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert any("base_eval/loss" in h for h in history) and any("eval/loss" in h for h in history)


def test_qlora_run_and_quantization_ablation(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path):
    cfg = _config(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path,
                  sweep={"mode": "ablation", "ablation_type": "quantization"})
    result = run_sweep(cfg, progress=False)
    names = [r.run_name for r in result.runs]
    assert [n.split("-r4-a8-attention")[1].split("-lr")[0] for n in names] == ["", "-nf4", "-nf4dq"]
    assert all(r.status == STATUS_COMPLETED for r in result.runs), [r.metrics.get("error") for r in result.runs]
    full, nf4, nf4dq = (r.metrics for r in result.runs)
    assert full["verification"]["merge"]["quantization_gap_max_abs_diff"] is None
    for q in (nf4, nf4dq):
        assert q["verification"]["merge"]["merged_into"] == "full-precision reload of the base"
        assert q["verification"]["merge"]["max_abs_diff"] <= 1e-2
        assert q["verification"]["merge"]["quantization_gap_max_abs_diff"] > 0
        assert q["training_efficiency"]["base_weight_bytes"] < full["training_efficiency"]["base_weight_bytes"]
    # (double quantization's saving shows on real layer sizes: on this 32-wide model its per-layer
    # 256-entry code books outweigh the absmax it saves; the README's ablation measures SmolLM2)
    summary = (result.sweep_dir / "summary.md").read_text()
    assert "nf4+dq" in summary and "base_weight_bytes" in summary and "peak_mem_bytes" in summary


def test_export_merged_model(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = _config(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path, export_merged=True)
    result = run_sweep(cfg, progress=False).runs[0]
    assert result.status == STATUS_COMPLETED
    merged = AutoModelForCausalLM.from_pretrained(result.run_dir / "merged")
    assert not any("lora_" in n for n, _ in merged.named_parameters())


class _Interrupt(Exception):
    pass


def test_resume_continues_the_loss_curve(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path):
    from transformers import TrainerCallback

    training = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3}
    cfg = _config(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path, training=training)
    reference = run_experiment(cfg, tmp_path / "uninterrupted", "run")
    assert reference.status == STATUS_COMPLETED

    class StopAtStep4(TrainerCallback):  # a crash after the checkpoint of step 3
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise _Interrupt("simulated crash")

    crashed = run_experiment(cfg, tmp_path / "interrupted", "run", extra_callbacks=[StopAtStep4()])
    assert crashed.status == STATUS_FAILED and (tmp_path / "interrupted/checkpoints/checkpoint-3").is_dir()
    resumed = run_experiment(cfg, tmp_path / "interrupted", "run", resume=True)
    assert resumed.status == STATUS_COMPLETED, resumed.metrics.get("error")
    assert resumed.metrics["resumed_from"].endswith("checkpoint-3")
    assert resumed.metrics["training_efficiency"]["optimizer_steps"] == 3  # steps 4..6 only

    def losses(run):
        lines = [json.loads(line) for line in (run.run_dir / "history.jsonl").read_text().splitlines()]
        return {h["step"]: h["train/loss"] for h in lines if "train/loss" in h}

    assert sorted(losses(resumed)) == [1, 2, 3, 4, 5, 6]  # history kept up to the checkpoint, then continued
    assert losses(resumed) == pytest.approx(losses(reference), rel=1e-5)
    a = load_file(reference.run_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_generate_prints_base_and_adapter(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path, capsys):
    result = run_sweep(_config(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path), progress=False).runs[0]
    code = generate_cli.main(["--run", str(result.run_dir), "--prompt", "First Citizen:", "--raw",
                              "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "=== prompt: First Citizen:" in out and "--- base model:" in out and "--- base + adapter:" in out


@pytest.mark.parametrize("args, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--top-p", "1.5"], "--top-p"),
])
def test_generate_rejects_bad_sampling_arguments(tmp_path, capsys, args, message):
    assert generate_cli.main(["--run", str(tmp_path), "--prompt", "x", *args]) == 2
    assert message in capsys.readouterr().err


def test_generate_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert generate_cli.main(["--run", str(tmp_path), "--prompt", "x"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
