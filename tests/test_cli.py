"""CLI: bad input fails before training with one clear message, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loraexp.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    return {"model": tiny_bert_dir, "data": tiny_sst2_dir, "out": tmp_path / "results", "tmp": tmp_path}


def _bad_yaml(env):
    path = env["tmp"] / "bad.yaml"
    path.write_text("task: sst2\nlora: {r: 8\n")
    return ["--config", str(path)]


CASES = [  # (id, extra argv builder, fragment of the error)
    ("unknown-task", lambda e: ["--task", "cola"], "`task` 'cola' is unknown; allowed: gsm8k, lima, mrpc, rte, shakespeare, sst2"),
    ("r-zero", lambda e: ["--set", "lora.r=0"], "`lora.r` must be a positive int, got 0"),
    ("unknown-module", lambda e: ["--set", "lora.target_modules=[nope]"],
     "`lora.target_modules` ['nope'] matches no module of the model; its Linear modules are: "
     "bert.encoder.layer.*.attention.self.query"),
    ("unknown-preset", lambda e: ["--set", "lora.target_modules=everything"], "preset 'everything' is unknown"),
    ("missing-data-file", lambda e: ["--data-dir", str(e["tmp"])],
     "has no sst2 train file: expected 'glue/sst2/train.tsv'"),
    ("missing-data-dir", lambda e: ["--data-dir", str(e["tmp"] / "nowhere")], "is not a directory; it must hold"),
    ("unknown-model-path", lambda e: ["--model", "./no/such/model"],
     "`model` path './no/such/model' is not a directory"),
    ("unknown-model-id", lambda e: ["--model", "no-such-org/no-such-model"],
     "`model` 'no-such-org/no-such-model' could not be loaded"),
    ("bad-yaml", _bad_yaml, "is not valid YAML at line"),
    ("unknown-key", lambda e: ["--set", "lora.rank=4"], "unknown key `lora.rank`"),
    ("bad-set", lambda e: ["--set", "lora.r"], "`--set` expects key=value"),
]


@pytest.mark.parametrize("case_id,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(env, capsys, case_id, argv, fragment):
    base = ["--task", "sst2", "--model", env["model"], "--data-dir", env["data"], "--output-dir", str(env["out"]),
            "--no-progress"]
    code = main(base + argv(env))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("loraexp: error:") == 1 and fragment in err
    assert not env["out"].exists()


def test_exit_code_2_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "cola",
                           "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "`task` 'cola' is unknown" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_runs_a_single_run_and_prints_the_summary(env, capsys):
    code = main(["--task", "sst2", "--model", env["model"], "--data-dir", env["data"], "--output-dir", str(env["out"]),
                 "--max-steps", "3", "--set", "training.per_device_train_batch_size=8", "--set", "lora.r=2",
                 "--set", "verification.latency_repeats=1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| run_name | status |" in out and "-r2-a16-standard-" in out and "completed" in out
    assert (env["out"] / "sst2-single" / "summary.md").is_file()
