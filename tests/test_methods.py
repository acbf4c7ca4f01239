"""Run types end to end on tiny models: full fine-tuning and each LoRA variant trains, the
checks that apply to it pass, the ones that do not are reported as not applicable, and the
saved adapter loaded on the original base reproduces the trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from loraexp.config.load import build_config
from loraexp.model.adapters import load_adapter
from loraexp.results.statistics import load_scores
from loraexp.sweep.runner import run_sweep
from tests.conftest import FAST

FAST = {**FAST, "method_options.full_learning_rate": 1e-3}

LORA_METHODS = ("lora", "rslora", "dora", "pissa", "olora", "lora-plus", "eva")
NOT_APPLICABLE_TO_FULL = {"frozen_base", "grad_flow", "merge", "reload", "convergence"}  # convergence: off by default


class CaptureLogits(TrainerCallback):
    """Keeps the trained model's logits on ``batch`` at train end (the weights the run then
    evaluates and saves), for a comparison made outside loraexp's own checks."""

    def __init__(self, batch):
        self.batch, self.logits = batch, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.batch).logits.float()
        model.train(was_training)


def _batch(model_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["a great film , really moving", "a dull film , really tedious", "First Citizen: speak, speak."]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def _run(model, data, out, method, **overrides):
    cfg = build_config(overrides={"model": model, "data_dir": data, "output_dir": str(out), "method": method,
                                  **FAST, **overrides})
    capture = CaptureLogits(_batch(model))
    result = run_sweep(cfg, progress=False, extra_callbacks=[capture])
    (run,) = result.runs
    run.trained_logits = capture.logits
    return cfg, run, json.loads((run.run_dir / "metrics.json").read_text())


def _assert_reload_reproduces(run, auto_class, model_dir):
    """The saved adapter on a fresh original base gives the trained model's logits (fp32 1e-4,
    PEFT's merge tolerance), independently of the run's own reload check."""
    reloaded = load_adapter(auto_class.from_pretrained(model_dir), run.run_dir / "adapter").eval()
    with torch.no_grad():
        logits = reloaded(**_batch(model_dir)).logits
    assert (logits - run.trained_logits).abs().max() <= 1e-4


def test_full_fine_tuning_trains_every_tensor_and_has_no_merge_check(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg, run, metrics = _run(tiny_bert_dir, tiny_sst2_dir, tmp_path, "full")
    assert run.status == "completed", metrics.get("error")
    v = metrics["verification"]
    assert set(v["not_applicable"]) == NOT_APPLICABLE_TO_FULL
    full = v["full_training"]
    assert full["passed"] is True and full["tensors"] > 0 and full["min_grad_norm"] > 0
    assert full["unchanged"] == [] and full["zero_grad"] == []
    assert v["merge"]["passed"] is None and v["passed"] is True
    assert metrics["efficiency"]["trainable_pct"] == 100.0 and metrics["efficiency"]["lora_params"] == 0
    te = metrics["training_efficiency"]
    assert te["trainable_bytes"] == 4 * metrics["efficiency"]["trainable_params"]
    # AdamW keeps two float32 moments of every weight (plus a step counter per tensor)
    assert 2 * te["trainable_bytes"] <= te["optimizer_state_bytes"] <= 2 * te["trainable_bytes"] + 8 * full["tensors"]
    assert metrics["resolved"]["learning_rate"] == 1e-3  # method_options.full_learning_rate, not training's
    assert not (run.run_dir / "adapter").exists()
    assert run.run_name.startswith("sst2-tiny-bert") and "-full-" in run.run_name


def test_full_fine_tuning_without_a_learning_rate_uses_the_family_default(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    _, run, metrics = _run(tiny_bert_dir, tiny_sst2_dir, tmp_path, "full",
                           **{"method_options.full_learning_rate": None, "training.max_steps": 2})
    assert metrics["resolved"]["learning_rate"] == 5e-5


def test_a_frozen_tensor_fails_full_fine_tuning(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    class Freeze(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            next(model.parameters()).requires_grad_(False)

    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  "method": "full", **FAST})
    # the extra callback runs after loraexp's, so one tensor is frozen once training has begun:
    # it then gets no gradient, which the full-training check reports
    result = run_sweep(cfg, progress=False, extra_callbacks=[Freeze()])
    metrics = result.runs[0].metrics
    assert result.runs[0].status == "failed_verification"
    assert "tensors got no gradient at step 1" in metrics["error"]
    assert metrics["verification"]["full_training"]["without_grad"]


@pytest.mark.parametrize("method", LORA_METHODS)
def test_each_lora_method_trains_passes_its_checks_and_reloads_on_the_original_base(
        method, tiny_bert_dir, tiny_sst2_dir, tmp_path):
    _, run, metrics = _run(tiny_bert_dir, tiny_sst2_dir, tmp_path, method)
    assert run.status == "completed", metrics.get("error")
    v = metrics["verification"]
    assert v["passed"] is True and set(v["not_applicable"]) == {"full_training", "convergence"}  # convergence: off
    for check in ("frozen_base", "grad_flow", "merge", "reload"):
        assert v[check]["passed"] is True, (check, v[check])
    assert v["reload"]["max_abs_diff"] <= 1e-4 and v["reload"]["base_max_abs_diff"] > 1e-4
    _assert_reload_reproduces(run, AutoModelForSequenceClassification, tiny_bert_dir)
    rewrites = method in ("pissa", "olora")
    assert v["reload"]["converted"] is rewrites
    assert ("residual" in v["frozen_base"]["reference"]) is rewrites
    stats = metrics["adapter_statistics"]
    assert all(s["delta_form"] == ("BA - B0A0" if rewrites else "BA") for s in stats.values())
    if method == "rslora":
        r, alpha = metrics["config"]["lora"]["r"], metrics["config"]["lora"]["lora_alpha"]
        assert all(s["scaling"] == pytest.approx(alpha / r ** 0.5) for s in stats.values())
    if method == "dora":
        assert all(s["magnitude_rel_change"] > 0 for s in stats.values())
        assert v["grad_flow"]["magnitude_min_grad_norm_step1"] > 0
    rule = v["grad_flow"]["rule"]
    if rewrites:
        assert "lora_A non-zero from step 1" in rule and "lora_B non-zero from step 1" in rule
    else:
        assert "lora_A non-zero once lora_B has moved" in rule


@pytest.mark.parametrize("method", ("pissa", "olora"))
def test_converted_adapter_reproduces_the_trained_logits(method, tiny_bert_dir, tiny_sst2_dir, tmp_path):
    """The merge check and the reload check agree with an outside reload: original base +
    saved (converted, rank 2r) adapter = the trained model, fp32 1e-4 (PEFT's merge tolerance)."""
    _, run, metrics = _run(tiny_bert_dir, tiny_sst2_dir, tmp_path, method)
    config = json.loads((run.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 * metrics["config"]["lora"]["r"]  # PEFT's conversion: [B, B0], [A, -A0]
    scores = load_scores(run.run_dir / "predictions.npz")
    reloaded = load_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir),
                            run.run_dir / "adapter").eval()
    # the run's per-example predictions are the reloaded model's predictions on the dev set
    from loraexp.tasks import get_task

    task = get_task("sst2", "SEQ_CLS")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    dev = task.tokenize(task.load_split("validation", tiny_sst2_dir), tokenizer, 128)
    batch = task.collator(tokenizer)([{k: v for k, v in row.items() if k != "labels"} for row in dev])
    with torch.no_grad():
        predicted = reloaded(**batch).logits.argmax(-1).numpy()
    labels = np.array(dev["labels"])
    assert scores["accuracy"].value() == pytest.approx(float((predicted == labels).mean()))


def test_lora_plus_gives_lora_b_a_larger_learning_rate(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    seen = {}

    class Groups(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen["lrs"] = sorted({g["lr"] for g in optimizer.param_groups})

    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  "method": "lora-plus", **FAST, "training.lr_scheduler_type": "constant",
                                  "training.warmup_steps": 0})
    run_sweep(cfg, progress=False, extra_callbacks=[Groups()])
    assert seen["lrs"][-1] == pytest.approx(16 * 1e-2) and seen["lrs"][0] <= 1e-2


@pytest.mark.parametrize("method", (*LORA_METHODS, "full"))
def test_each_method_on_a_causal_lm(method, tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path):
    overrides = {"task": "shakespeare", "max_seq_length": 32, "training.per_device_eval_batch_size": 4,
                 "max_eval_samples": 8, "evaluation.base_model": False}
    _, run, metrics = _run(tiny_causal_lm_dir, tiny_lm_data_dir, tmp_path, method, **overrides)
    assert run.status == "completed", metrics.get("error")
    scores = load_scores(run.run_dir / "predictions.npz")
    assert scores["loss"].value() == pytest.approx(metrics["eval"]["loss"], rel=1e-4)
    assert metrics["verification"]["passed"] is True
    if method != "full":
        assert metrics["verification"]["reload"]["passed"] is True
        _assert_reload_reproduces(run, AutoModelForCausalLM, tiny_causal_lm_dir)


def test_loftq_without_cuda_is_refused_before_anything_is_written(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    from loraexp.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("LoftQ runs on CUDA")
    out = tmp_path / "results"
    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(out),
                                  "method": "loftq", **FAST})
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        run_sweep(cfg, progress=False)
    assert not out.exists()


class _StopAt(TrainerCallback):
    """Raises at the start of optimizer step ``step`` (a crash after a checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("save_steps, crash_at", [(3, 4), (6, None)])
def test_full_fine_tuning_resumes_with_its_verification(tiny_bert_dir, tiny_sst2_dir, tmp_path, save_steps, crash_at):
    """A crash after a checkpoint (step 3), or a run whose record was lost after its final
    checkpoint (step 6): --resume completes it, and the full-training check compares with the
    weights before the first attempt and carries the gradient checks it observed."""
    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  "method": "full", **FAST, "training.save_strategy": "steps",
                                  "training.save_steps": save_steps})
    first = run_sweep(cfg, progress=False, extra_callbacks=[_StopAt(crash_at)] if crash_at else [])
    run_dir = first.runs[0].run_dir
    if crash_at is None:  # lose the record after the final checkpoint, as a kill before metrics.json would
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics["status"] = "running"
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    else:
        assert first.runs[0].status == "failed"
    second = run_sweep(cfg, progress=False, resume=True)
    metrics = second.runs[0].metrics
    assert second.runs[0].status == "completed", metrics.get("error")
    assert metrics["resumed_from"].endswith(f"checkpoint-{save_steps}")
    assert metrics["verification"]["full_training"]["passed"] is True
