"""One run on two processes (``accelerate launch``, DDP over gloo on CPU) agrees with the
single-process run, and writes its results and W&B run once (rank 0)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
# Full-batch steps without dropout: every step sees the same 16 examples whatever the world size,
# so DDP and one process differ only by fp32 all-reduce rounding (measured: 6e-8 on eval loss,
# 1.2e-7 on the adapter). The stated tolerance:
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(prefix: list[str], model: str, data: str, out: Path, per_device_batch: int):
    argv = [*prefix, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "sst2", "--model", model,
            "--data-dir", data, "--output-dir", str(out), "--max-steps", "6", "--max-train-samples", "16",
            "--wandb", "offline", "--no-progress", "--set", f"training.per_device_train_batch_size={per_device_batch}",
            "--set", "lora.lora_dropout=0", "--set", "training.learning_rate=1e-2", "--set", "training.logging_steps=1",
            "--set", "verification.latency_repeats=1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in (out / "sst2-single").iterdir() if (p / "metrics.json").is_file()]
    return run_dir, proc


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate CLI not installed")
def test_two_process_ddp_run_matches_the_single_process_run(tiny_bert_no_dropout_dir, tiny_sst2_dir, tmp_path):
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    ddp_dir, ddp = _run(launch, tiny_bert_no_dropout_dir, tiny_sst2_dir, tmp_path / "ddp", per_device_batch=8)
    one_dir, _ = _run([sys.executable], tiny_bert_no_dropout_dir, tiny_sst2_dir, tmp_path / "one", per_device_batch=16)

    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    one_metrics = json.loads((one_dir / "metrics.json").read_text())
    assert ddp_metrics["world_size"] == 2 and one_metrics["world_size"] == 1
    assert ddp_metrics["status"] == "completed", ddp_metrics.get("error")
    assert ddp_metrics["training_efficiency"]["optimizer_steps"] == 6
    assert abs(ddp_metrics["eval"]["loss"] - one_metrics["eval"]["loss"]) <= ATOL
    assert ddp_metrics["eval"]["accuracy"] == one_metrics["eval"]["accuracy"]
    a = load_file(ddp_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(one_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=ATOL, rtol=0) for k in a)

    # written once: one history line per logged step, one W&B run, one summary row, one printed table
    history = [json.loads(line) for line in (ddp_dir / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "train/loss" in h] == [1, 2, 3, 4, 5, 6]
    assert len(list((ddp_dir / "wandb").glob("offline-run-*"))) == 1
    assert (ddp_dir.parent / "summary.csv").read_text().count("\n") == 2
    assert ddp.stdout.count("Every column:") == 1
