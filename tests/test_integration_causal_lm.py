"""End to end on real input with the real SmolLM2-135M (PyPI GGUF) and shared/data, through
the CLI users call: a QLoRA Shakespeare run and the SST-2 verbalizer, a few steps each."""

from __future__ import annotations

import json

import pytest

from loraexp.cli.main import main
from loraexp.model.gguf import CACHE_ENV

pytestmark = pytest.mark.integration

FEW_STEPS = ["--max-steps", "3", "--wandb", "offline", "--no-progress", "--set", "training.warmup_steps=0",
             "--set", "tracking.stats_every_steps=3", "--set", "verification.merge_eval_batches=1"]


@pytest.mark.parametrize("config, extra, run, metric", [
    ("configs/qlora_nf4.yaml", ["--max-eval-samples", "8"],
     "shakespeare-single/shakespeare-smollm2-135m-r8-a16-attention-nf4dq-lr1e-3-s42", "perplexity"),
    pytest.param("configs/smollm2_sst2.yaml", ["--max-eval-samples", "32", "--max-train-samples", "48"],
                 "sst2-single/sst2-smollm2-135m-r8-a16-attention-lr1e-3-s42", "accuracy",
                 marks=pytest.mark.slow),  # ~20 s; the QLoRA case keeps real SmolLM2 in the default run
])
def test_smollm2_run_end_to_end(config, extra, run, metric, data_dir, smollm2_cache, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, smollm2_cache)
    out = tmp_path / "results"
    code = main(["--config", config, "--data-dir", data_dir, "--output-dir", str(out), *FEW_STEPS, *extra])
    metrics = json.loads((out / run / "metrics.json").read_text())
    assert code == 0, metrics.get("error")
    assert metrics["resolved"]["model_type"] == "llama" and metrics["resolved"]["objective"] == "CAUSAL_LM"
    assert metric in metrics["eval"] and metric in metrics["base_eval"]
    assert metrics["verification"]["passed"]
    eff = metrics["training_efficiency"]
    assert eff["optimizer_steps"] == 3 and eff["tokens_per_s"] > 0 and eff["peak_mem_bytes"] > 0
    if "qlora" in config:
        # NF4 + double quantization: base weights well under half of the 538 MB float32 checkpoint
        assert eff["base_weight_bytes"] < 0.5 * 538_060_288
        assert metrics["verification"]["merge"]["quantization_gap_max_abs_diff"] > 0
