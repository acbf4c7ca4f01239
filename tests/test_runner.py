"""run_sweep / run_experiment end to end on a tiny local BERT and a tiny SST-2-style directory."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import TrainerCallback

from loraexp.config.load import build_config
from loraexp.errors import ConfigError
from loraexp.sweep.runner import run_sweep
from tests.conftest import FAST


def config(model, data, out, **overrides):
    return build_config(overrides={"model": model, "data_dir": data, "output_dir": str(out), **FAST, **overrides})


def test_single_run_writes_design_layout(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    result = run_sweep(config(tiny_bert_dir, tiny_sst2_dir, tmp_path), progress=False)
    (run,) = result.runs
    assert run.status == "completed", run.metrics.get("error")
    files = {p.name for p in run.run_dir.iterdir()}
    assert {"config.yaml", "metrics.json", "history.jsonl", "adapter"} <= files
    assert {p.name for p in (result.sweep_dir).iterdir()} >= {"summary.csv", "summary.md", run.run_name}

    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["run_id"] == config(tiny_bert_dir, tiny_sst2_dir, tmp_path).run_id
    ver = metrics["verification"]
    assert ver["frozen_base"]["passed"] and ver["grad_flow"]["passed"] and ver["merge"]["passed"] and ver["passed"]
    assert ver["merge"]["max_abs_diff"] <= 1e-4 < ver["merge"]["adapter_vs_base_max_abs_diff"]
    assert metrics["schema_version"] == 7
    assert 0 <= metrics["eval"]["accuracy"] <= 1
    eff = metrics["efficiency"]
    assert eff["lora_params"] == 2 * 2 * 8 * (16 + 16)  # 2 layers x {query, value} x r(in + out)
    assert eff["trainable_params"] == eff["lora_params"] + eff["head_params"] and eff["head_params"] == 16 * 2 + 2
    assert metrics["training_efficiency"]["optimizer_steps"] == 6
    assert metrics["training_efficiency"]["tokens_per_s"] > 0 and metrics["training_efficiency"]["peak_mem_bytes"] > 0
    assert metrics["lora_rank"]["mean_effective_rank"] > 0
    assert metrics["versions"]["peft"] and metrics["resolved"]["target_modules"] == ["query", "value"]
    assert metrics["resolved"]["objective"] == "SEQ_CLS"

    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert build_config(saved).run_id == metrics["run_id"]  # the saved config reproduces the run identity
    history = [json.loads(line) for line in (run.run_dir / "history.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in history if "train/loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert any("train/grad_norm" in h and "train/learning_rate" in h for h in history)
    assert any(any(k.startswith("lora_rank/") for k in h) for h in history if h["step"] == 3)
    assert any("eval/accuracy" in h for h in history)

    # the adapter loads with PEFT and reproduces the trained model's dev predictions
    from transformers import AutoModelForSequenceClassification
    loaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir),
                                       run.run_dir / "adapter").eval()
    assert any(".modules_to_save." in n for n, _ in loaded.named_parameters())
    with torch.no_grad():
        out = loaded(input_ids=torch.tensor([[101, 2307, 102]])).logits
    assert out.shape == (1, 2)


def test_completed_runs_are_skipped_unless_rerun(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **{"sweep.mode": "ablation", "sweep.ablation_type": "rank",
                                                            "sweep.ranks": [2, 4]})
    first = run_sweep(cfg, progress=False)
    assert [r.status for r in first.runs] == ["completed", "completed"]
    mtimes = [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in first.runs]
    second = run_sweep(cfg, progress=False)
    assert [r.status for r in second.runs] == ["skipped", "skipped"]
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in second.runs] == mtimes
    assert second.rows == first.rows
    third = run_sweep(cfg, rerun=True, progress=False)
    assert [r.status for r in third.runs] == ["completed", "completed"]


class CrashAtRank(TrainerCallback):
    """Raises when training starts on an adapter of rank ``r``."""

    def __init__(self, r: int):
        self.r = r

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model.peft_config["default"].r == self.r:
            raise RuntimeError("simulated crash")


def test_a_failing_run_is_recorded_and_the_sweep_continues(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **{"sweep.mode": "ablation", "sweep.ablation_type": "rank",
                                                            "sweep.ranks": [2, 4]})
    result = run_sweep(cfg, progress=False, extra_callbacks=[CrashAtRank(2)])
    assert [r.status for r in result.runs] == ["failed", "completed"]
    failed = json.loads((result.runs[0].run_dir / "metrics.json").read_text())
    assert failed["error"] == "RuntimeError: simulated crash" and "Traceback" in failed["traceback"]
    assert "| failed |" in (result.sweep_dir / "summary.md").read_text() and not result.all_completed


def test_a_run_directory_with_another_config_is_never_overwritten(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = config(tiny_bert_dir, tiny_sst2_dir, tmp_path)
    (run,) = run_sweep(cfg, progress=False).runs
    before = (run.run_dir / "metrics.json").read_bytes()
    changed = config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **{"lora.lora_dropout": 0.2})  # same run name
    with pytest.raises(ConfigError, match="holds a different config"):
        run_sweep(changed, progress=False)
    assert (run.run_dir / "metrics.json").read_bytes() == before


def _unreachable_wandb(**kwargs):
    raise RuntimeError("wandb: network unreachable")


@pytest.mark.parametrize("fault", ["tracker", "unwritable file"])
def test_a_failing_tracker_or_file_leaves_the_sweep_going(tiny_bert_dir, tiny_sst2_dir, tmp_path, monkeypatch, fault):
    """W&B that cannot start (as after its retries without a network) leaves the runs untracked
    but trained; a run whose files cannot be written is recorded failed and the next one runs."""
    import sys
    from types import SimpleNamespace

    overrides = {"sweep.mode": "ablation", "sweep.ablation_type": "rank", "sweep.ranks": [2, 4]}
    if fault == "tracker":
        monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=_unreachable_wandb))
        overrides["tracking.wandb"] = "offline"
    cfg = config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **overrides)
    first = tmp_path / "sst2-ablation-rank" / "sst2-tiny-bert0-r2-a4-standard-lr1e-2-s42"
    if fault == "unwritable file":  # the first run's config.yaml cannot be written
        (first / "config.yaml").mkdir(parents=True)
    result = run_sweep(cfg, progress=False)
    statuses = [r.status for r in result.runs]
    saved = json.loads((first / "metrics.json").read_text())
    if fault == "tracker":
        assert statuses == ["completed", "completed"]
        assert saved["resolved"]["tracking"].startswith("disabled (fallback:")
        assert "network unreachable" in saved["resolved"]["tracking"]
    else:
        assert statuses == ["failed", "completed"]
        assert saved["status"] == "failed" and "IsADirectoryError" in saved["error"]  # recorded, not `running`
    assert (result.sweep_dir / "summary.csv").is_file()
