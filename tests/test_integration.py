"""End to end on real input: the MiniLM model from PyPI and a slice of shared/data SST-2,
W&B offline, through the same entry point users call."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from loraexp.cli.main import main

pytestmark = pytest.mark.integration


def test_small_real_rank_sweep_end_to_end(data_dir, minilm_path, tmp_path, monkeypatch, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "results"
    code = main(["--task", "sst2", "--mode", "ablation", "--ablation-type", "rank", "--data-dir", data_dir,
                 "--output-dir", str(out), "--max-train-samples", "256", "--max-eval-samples", "64",
                 "--wandb", "offline", "--set", "sweep.ranks=[2,4]", "--set", "training.logging_steps=2",
                 "--set", "tracking.stats_every_steps=4", "--set", "verification.latency_repeats=1",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    sweep_dir = out / "sst2-ablation-rank"
    names = ["sst2-minilm-r2-a4-standard-lr2e-3-s42", "sst2-minilm-r4-a8-standard-lr2e-3-s42"]
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [r["run_name"] for r in rows] == names and all(r["status"] == "completed" for r in rows)
    assert all(name in printed for name in names) and "* best accuracy (maximize)" in printed
    figures = {p.stem for p in (sweep_dir / "figures").glob("*.png")}  # one seed: no seed similarity
    assert figures == {"metric", "loss_curves", "rank_use", "spectra", "subspace_ranks", "cka", "efficiency"}
    assert "Report: " in printed and (sweep_dir / "report.html").is_file()

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    for name, r in zip(names, (2, 4)):
        run_dir = sweep_dir / name
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["resolved"]["train_examples"] == 256 and metrics["resolved"]["eval_examples"] == 64
        assert metrics["efficiency"]["lora_params"] == 6 * 2 * r * (384 + 384)  # 6 layers x {q, v}
        assert metrics["verification"]["passed"] and metrics["verification"]["merge"]["max_abs_diff"] <= 1e-4
        assert metrics["training_efficiency"]["optimizer_steps"] == 8  # 256 examples / batch 32
        assert (run_dir / "config.yaml").is_file() and (run_dir / "history.jsonl").stat().st_size > 0
        assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run files missing"

        # the saved adapter reloads with PEFT onto the real base model
        base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
        model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
        batch = tokenizer(["a charming and often affecting journey ."], return_tensors="pt")
        with torch.no_grad():
            adapted = model(**batch).logits
            with model.disable_adapter():
                plain = model(**batch).logits
        assert not torch.allclose(adapted, plain)


# --no-report: the report of a real sweep is checked in test_small_real_rank_sweep_end_to_end
TINY = ["--max-steps", "4", "--max-train-samples", "64", "--max-eval-samples", "32",
        "--set", "training.per_device_train_batch_size=8", "--set", "verification.latency_repeats=1", "--no-progress",
        "--no-report"]


README_COMMANDS = {  # id -> (argv, the run names it expands to)
    "mrpc-sweep": (["--task", "mrpc", "--mode", "sweep"],
                   [f"mrpc-minilm-r8-a16-standard-lr{lr}-s{s}" for lr in ("1e-4", "3e-4")
                    for s in (42, 1337, 2024)]),
    "rte-single": (["--task", "rte", "--mode", "single", "--seed", "42"], ["rte-minilm-r8-a16-standard-lr2e-3-s42"]),
    "sst2-modules": (["--task", "sst2", "--mode", "ablation", "--ablation-type", "modules"],
                     [f"sst2-minilm-r8-a16-{p}-lr2e-3-s42"
                      for p in ("minimal", "standard", "attention", "mlp", "all-linear")]),
    "sst2-alpha": (["--task", "sst2", "--mode", "ablation", "--ablation-type", "alpha"],
                   [f"sst2-minilm-r8-a{a}-standard-lr2e-3-s42" for a in (8, 16, 32)]),
    "config-set": (["--config", "configs/sst2.yaml", "--set", "lora.r=32"],
                   ["sst2-minilm-r32-a16-standard-lr2e-3-s42"]),
    "grid": (["--config", "configs/grid_rank_lr.yaml"],
             [f"sst2-minilm-r{r}-a16-standard-lr{lr}-s42" for r in (4, 16) for lr in ("1e-3", "2e-3")]),
}


def _readme_config(argv, data_dir, out):
    from loraexp.cli.main import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(
        argv + ["--data-dir", data_dir, "--output-dir", str(out), "--wandb", "disabled", *TINY]))


@pytest.mark.parametrize("command", sorted(README_COMMANDS))
def test_readme_commands_expand_and_pass_preflight_on_real_data(data_dir, minilm_path, tmp_path, monkeypatch,
                                                                 command):
    """Each README command expands to the runs it documents, and pre-flight (model, data files,
    target modules, LoraConfig, output directory) accepts every one of them on the real data;
    one command is also trained (test_a_readme_command_trains_on_real_data)."""
    from pathlib import Path

    from loraexp.results.naming import sweep_name
    from loraexp.sweep.expand import expand
    from loraexp.sweep.preflight import preflight

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    argv, names = README_COMMANDS[command]
    cfg = _readme_config(argv, data_dir, tmp_path)
    runs = expand(cfg)
    assert [n for n, _ in runs] == names
    preflight(runs, tmp_path / sweep_name(cfg))
    assert not any(tmp_path.iterdir()), "pre-flight wrote something"


def test_a_readme_command_trains_on_real_data(data_dir, minilm_path, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    argv, names = README_COMMANDS["config-set"]
    code = main(argv + ["--data-dir", data_dir, "--output-dir", str(tmp_path), "--wandb", "disabled", *TINY])
    assert code == 0
    (sweep_dir,) = list(tmp_path.iterdir())
    run_dirs = sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
    assert [p.name for p in run_dirs] == names
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert metrics["status"] == "completed", metrics.get("error")
    assert "accuracy" in metrics["eval"]
    assert metrics["config"]["lora"]["r"] == 32 and metrics["efficiency"]["lora_params"] == 6 * 2 * 32 * 768


@pytest.mark.slow
def test_training_on_real_sst2_learns(data_dir, minilm_path, tmp_path):
    """100 optimizer steps on 3,200 real SST-2 examples move dev accuracy well above chance
    (0.51 for this dev set); the full 10,000-example default reaches 0.83-0.85 (README)."""
    code = main(["--task", "sst2", "--data-dir", data_dir, "--output-dir", str(tmp_path), "--wandb", "disabled",
                 "--max-train-samples", "3200", "--max-eval-samples", "400", "--no-progress"])
    assert code == 0
    (run_dir,) = [p for p in (tmp_path / "sst2-single").iterdir() if (p / "metrics.json").is_file()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training_efficiency"]["optimizer_steps"] == 100
    assert metrics["eval"]["accuracy"] >= 0.72, metrics["eval"]
