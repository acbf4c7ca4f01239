"""Seeds as an axis of every sweep, the full fine-tuning baseline row, and the configurations'
comparison in the summary files (tiny BERT, tiny SST-2-style data)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from loraexp.config.load import build_config
from loraexp.sweep.expand import expand
from loraexp.sweep.runner import run_sweep
from tests.conftest import FAST

FAST = {**FAST, "method_options.full_learning_rate": 1e-3, "sweep.bootstrap_resamples": 500}



def _cfg(**overrides):
    return build_config(overrides={"model": "minilm", "data_dir": "/nonexistent", **overrides})


@pytest.mark.parametrize("overrides, names", [
    ({"sweep.mode": "ablation", "sweep.ablation_type": "rank", "sweep.ranks": [4, 8]},
     ["sst2-minilm-r4-a8-standard-lr2e-3-s42", "sst2-minilm-r8-a16-standard-lr2e-3-s42"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "rank", "sweep.ranks": [4], "sweep.seeds": [1, 2],
      "sweep.baseline": "full"},
     ["sst2-minilm-r4-a8-standard-lr2e-3-s1", "sst2-minilm-r4-a8-standard-lr2e-3-s2", "sst2-minilm-full-s1",
      "sst2-minilm-full-s2"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "method", "sweep.methods": ["full", "lora", "dora"],
      "sweep.baseline": "full"},  # full is already a point: not added twice
     ["sst2-minilm-full-s42", "sst2-minilm-r8-a16-standard-lr2e-3-s42", "sst2-minilm-r8-a16-standard-dora-lr2e-3-s42"]),
    ({"method": "full", "sweep.baseline": "full"},  # the run itself is the baseline
     ["sst2-minilm-full-s42"]),
    ({"sweep.mode": "sweep", "sweep.learning_rates": [1e-3]},  # sweep mode keeps the protocol's seeds
     ["sst2-minilm-r8-a16-standard-lr1e-3-s42", "sst2-minilm-r8-a16-standard-lr1e-3-s1337",
      "sst2-minilm-r8-a16-standard-lr1e-3-s2024"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid", "sweep.grid": {"lora.r": [2]}, "sweep.seeds": [5, 6]},
     ["sst2-minilm-r2-a16-standard-lr2e-3-s5", "sst2-minilm-r2-a16-standard-lr2e-3-s6"]),
])
def test_seeds_replicate_every_point_and_the_baseline_is_added_once(overrides, names):
    assert [n for n, _ in expand(_cfg(**overrides))] == names


@pytest.mark.parametrize("overrides, names", [
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid", "sweep.grid": {"seed": [1, 2]}},  # a grid over seeds
     ["sst2-minilm-r8-a16-standard-lr2e-3-s1", "sst2-minilm-r8-a16-standard-lr2e-3-s2"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid",  # full fine-tuning ignores lora.r: one run
      "sweep.grid": {"lora.r": [4, 16], "method": ["full", "lora"]}},
     ["sst2-minilm-full-s42", "sst2-minilm-r4-a16-standard-lr2e-3-s42", "sst2-minilm-r16-a16-standard-lr2e-3-s42"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid",  # ... and training.learning_rate
      "sweep.grid": {"training.learning_rate": [1e-3, 2e-3], "method": ["full", "lora"]}},
     ["sst2-minilm-full-s42", "sst2-minilm-r8-a16-standard-lr1e-3-s42", "sst2-minilm-r8-a16-standard-lr2e-3-s42"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid", "sweep.grid": {"model": ["minilm", "smollm2-135m"]},
      "sweep.baseline": "full"},  # one baseline per model
     ["sst2-minilm-r8-a16-standard-lr2e-3-s42", "sst2-smollm2-135m-r8-a16-standard-lr2e-3-s42",
      "sst2-minilm-full-s42", "sst2-smollm2-135m-full-s42"]),
])
def test_no_run_is_lost_or_duplicated_and_each_point_gets_its_own_baseline(overrides, names):
    assert [n for n, _ in expand(_cfg(**overrides))] == names


def test_the_quantization_ablation_gets_a_full_precision_baseline():
    runs = expand(_cfg(task="shakespeare", model="smollm2-135m", **{
        "sweep.mode": "ablation", "sweep.ablation_type": "quantization", "sweep.baseline": "full"}))
    assert [(c.method, c.quantization.method) for _, c in runs] == [
        ("lora", "none"), ("lora", "nf4"), ("lora", "nf4"), ("full", "none")]


def test_full_fine_tuning_has_one_identity_whatever_the_lora_settings():
    a = _cfg(method="full", **{"lora.r": 4})
    b = _cfg(method="full", **{"lora.r": 16, "quantization.method": "none"})
    assert a.run_id == b.run_id
    assert _cfg(method="dora").run_id != _cfg().run_id


def test_plain_lora_run_ids_do_not_change_with_the_method_field():
    # the identity of a plain LoRA run leaves out `method` and `method_options` (run ids of earlier results stay)
    cfg = _cfg()
    assert "method" not in cfg.identity() and "method_options" not in cfg.identity()


def test_seeded_ablation_with_baseline_writes_the_comparison(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  "sweep.mode": "ablation", "sweep.ablation_type": "rank", "sweep.ranks": [2, 4],
                                  "sweep.seeds": [1, 2], "sweep.baseline": "full", **FAST})
    result = run_sweep(cfg, progress=False)
    assert [r.status for r in result.runs] == ["completed"] * 6
    for run in result.runs:
        data = np.load(run.run_dir / "predictions.npz")
        assert {"index", "label", "prediction", "score", "accuracy.num"} <= set(data.files)
        assert len(data["index"]) == 32
    comparison = result.comparison
    assert [c.completed for c in comparison.configurations] == [2, 2, 2]
    baseline = comparison.configurations[-1]
    assert baseline.is_baseline and baseline.method == "full" and comparison.baseline == baseline.name
    for c in comparison.configurations[:2]:
        d = c.differences["accuracy"]
        assert d.low <= d.estimate <= d.high and c.verdicts["accuracy"] in ("yes", "no", "inconclusive")
    assert len(comparison.pairwise) == 1  # r2 vs r4
    rows = list(csv.DictReader(open(tmp_path / "sst2-ablation-rank" / "configurations.csv")))
    assert rows[0]["accuracy_within_max_drop"] in ("yes", "no", "inconclusive") and rows[2]["accuracy_diff"] == ""
    markdown = (tmp_path / "sst2-ablation-rank" / "summary.md").read_text()
    assert "## Configurations" in markdown and "### Verdict" in markdown and "## Runs" in markdown
    assert "### Pairwise differences" in markdown
    assert len(comparison.verdict_lines()) == 2
    # a truncated predictions file (a kill mid-write on an old version, a disk fault) loses that
    # configuration's paired difference, not the summary
    from loraexp.results.comparison import Settings
    from loraexp.results.summary import write_sweep_summary

    damaged = result.runs[0].run_dir / "predictions.npz"
    damaged.write_bytes(damaged.read_bytes()[:50])
    summary = write_sweep_summary(result.sweep_dir, [r.run_name for r in result.runs], Settings(resamples=200))
    first = summary.comparison.configurations[0]
    assert first.differences == {} and summary.comparison.configurations[1].differences
