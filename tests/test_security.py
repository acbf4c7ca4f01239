"""Security: safetensors / weights_only loading, trust_remote_code off by default and logged,
no API keys or tokens in any file of a run directory or in its logs."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraexp.config.load import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "loraexp").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))


def _calls(path: Path, dotted: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_no_unsafe_deserialisation(path):
    for call in _calls(path, "torch.load"):
        weights_only = [k for k in call.keywords if k.arg == "weights_only"]
        assert weights_only and ast.unparse(weights_only[0].value) == "True", f"{path}:{call.lineno}"
    for name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"):
        assert not list(_calls(path, name)), f"{path} calls {name}"


def test_trust_remote_code_is_off_by_default_and_logged_when_on(tiny_bert_dir, caplog):
    from loraexp.model.load import load_model_config

    assert ExperimentConfig().trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="loraexp.model.load"):
        load_model_config(tiny_bert_dir)
    assert "trust_remote_code" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="loraexp.model.load"):
        load_model_config(tiny_bert_dir, trust_remote_code=True)
    assert f"trust_remote_code is on for model {tiny_bert_dir}" in caplog.text


SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
           "HF_TOKEN": "hf_loraexpSecretSentinelToken0001",
           "HUGGING_FACE_HUB_TOKEN": "hf_loraexpSecretSentinelToken0002"}


def test_no_secret_reaches_a_run_directory_or_the_logs(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "sst2", "--model", tiny_bert_dir,
         "--data-dir", tiny_sst2_dir, "--output-dir", str(out), "--max-steps", "3", "--save-steps", "2",
         "--wandb", "offline", "--no-progress", "--set", "training.per_device_train_batch_size=8",
         "--set", "verification.latency_repeats=1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **SECRETS, "WANDB_MODE": "offline"})
    assert proc.returncode in (0, 1), proc.stderr  # 1: too short to verify lora_A (README); files written
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "metrics.json", "history.jsonl", "adapter_model.safetensors"} <= names
    assert any("wandb" in p.parts for p in files)  # W&B offline files are checked too
    # adapter weights (final and in every checkpoint) are safetensors; the Trainer's other files are
    # torch pickles it reloads with weights_only=True (training_args.bin is written, never read)
    adapters = [p for p in files if p.name.startswith("adapter_model")]
    assert len(adapters) == 3 and all(p.suffix == ".safetensors" for p in adapters)
    for name, secret in SECRETS.items():
        assert secret not in proc.stdout + proc.stderr, f"{name} in the logs"
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, f"{name} found in {leaked}"
