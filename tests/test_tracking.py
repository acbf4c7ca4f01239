"""W&B wiring: mode, group per sweep, resolved config, DESIGN.md key namespaces."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from loraexp.config import build_config
from loraexp.runner import run_sweep
from loraexp.tracking import NoOpTracker, WandbTracker, make_tracker


class FakeRun:
    def __init__(self, **init):
        self.init, self.logged, self.summary, self.exit_code, self.defined = init, [], {}, None, []

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    def line(table, x, y, stroke=None, title=""):
        return SimpleNamespace(kind="line", table=table, x=x, y=y, stroke=stroke, title=title)

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(
        init=init, Table=lambda columns, data: SimpleNamespace(kind="table", columns=columns, data=data),
        plot=SimpleNamespace(line=line)))
    return runs


@pytest.mark.parametrize("mode,main_process,expected", [
    ("disabled", True, NoOpTracker), ("offline", False, NoOpTracker), ("offline", True, WandbTracker),
    ("online", True, WandbTracker),
])
def test_make_tracker(fake_wandb, mode, main_process, expected):
    tracker = make_tracker(mode, project="p", entity=None, group="g", name="n", config={}, directory=".",
                           is_main_process=main_process)
    assert isinstance(tracker, expected)


def test_sweep_runs_share_a_group_and_log_design_namespaces(fake_wandb, tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = build_config(overrides={
        "model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path), "tracking.wandb": "offline",
        "training.max_steps": 4, "training.per_device_train_batch_size": 8, "tracking.stats_every_steps": 2,
        "training.logging_steps": 1,
        "verification.latency_repeats": 1, "sweep.mode": "ablation", "sweep.ablation_type": "rank",
        "sweep.ranks": [2, 4]})
    result = run_sweep(cfg, progress=False)
    assert [r.status for r in result.runs] == ["completed", "completed"]
    assert len(fake_wandb) == 2
    assert {run.init["group"] for run in fake_wandb} == {"sst2-ablation-rank"}
    assert [run.init["config"]["lora"]["r"] for run in fake_wandb] == [2, 4]  # resolved config as wandb.config
    assert all(run.init["mode"] == "offline" and run.init["dir"] == str(r.run_dir)
               for run, r in zip(fake_wandb, result.runs))
    logged = {k for _, metrics in fake_wandb[0].logged for k in metrics}
    assert {"train/loss", "train/learning_rate", "eval/accuracy"} <= logged
    assert any(k.startswith("lora_adapters/") and k.endswith("/delta_norm") for k in logged)
    assert any(k.startswith("lora_rank/") and k.endswith("/effective_rank") for k in logged)
    summary = fake_wandb[0].summary
    for key in ("efficiency/trainable_params", "efficiency/trainable_pct", "verification/frozen_base/passed",
                "verification/grad_flow/passed", "verification/merge/max_abs_diff", "verification/passed",
                "training_efficiency/samples_per_s",
                "training_efficiency/tokens_per_s", "training_efficiency/peak_mem_bytes", "eval/accuracy"):
        assert key in summary, key
    assert fake_wandb[0].exit_code == 0
    # the dashboard: every per-step chart on the optimizer-step axis, spectra and CKA as tables and charts
    assert fake_wandb[0].defined == [("train/global_step", None), ("*", "train/global_step")]
    stepped = [(step, metrics) for step, metrics in fake_wandb[0].logged if step is not None]
    assert stepped and all(metrics["train/global_step"] == step for step, metrics in stepped)
    tables = {k: v for _, metrics in fake_wandb[0].logged for k, v in metrics.items()
              if getattr(v, "kind", None) in ("table", "line")}
    spectra, cka = tables["lora_rank/singular_values"], tables["representation_drift/cka"]
    assert spectra.columns == ["module", "index", "singular_value"]
    assert len(spectra.data) == 2 * 2 * 2  # r = 2 singular values of 2 modules (query, value) in each of 2 layers
    assert cka.columns == ["layer", "cka"] and len(cka.data) == 3  # embeddings + 2 layers
    assert tables["lora_rank/singular_values_chart"].stroke == "module"
    assert tables["representation_drift/cka_chart"].table is cka
