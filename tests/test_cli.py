"""CLI: a real process exits 2 on bad input; a single run prints the summary (the table of bad-input
cases is in test_bad_input.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loraexp.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    return {"model": tiny_bert_dir, "data": tiny_sst2_dir, "out": tmp_path / "results", "tmp": tmp_path}


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
    table = out.splitlines()
    assert any("run" in line and "status" in line and "accuracy" in line for line in table)
    assert any("* sst2-" in line and "-r2-a16-standard-" in line and "completed" in line for line in table)
    assert max(len(line) for line in table) <= 120  # no 20-column table wrapping in a terminal
    assert (env["out"] / "sst2-single" / "summary.md").is_file() and "Every column:" in out
    assert (env["out"] / "sst2-single" / "report.html").is_file() and "Report: " in out  # every sweep ends with it


def test_no_report_skips_the_report(env, capsys):
    code = main(["--task", "sst2", "--model", env["model"], "--data-dir", env["data"], "--output-dir", str(env["out"]),
                 "--max-steps", "3", "--set", "training.per_device_train_batch_size=8", "--set", "lora.r=2",
                 "--no-progress", "--no-report"])
    assert code == 0 and "Report: " not in capsys.readouterr().out
    assert (env["out"] / "sst2-single" / "summary.md").is_file()
    assert not (env["out"] / "sst2-single" / "report.html").exists()
