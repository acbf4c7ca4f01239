"""The console: fast start without heavy imports, the run lines, no raw Trainer dicts, quiet
third-party warnings, and the compact final table with the best run marked."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from loraexp.cli import console
from loraexp.cli.main import main
from loraexp.sweep.runner import SweepResult

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "wandb")


@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--task", "cola"], 2), (["--set", "lora.r=0"], 2),
                                        (["--data-dir", "/no/such/data"], 2), (["--model", "./no/such/model"], 2)])
def test_help_and_early_errors_import_no_heavy_library(argv, code):
    script = (f"import sys\nfrom loraexp.cli.main import main\ntry:\n    code = main({argv!r})\n"
              f"except SystemExit as exc:\n    code = exc.code\n"
              f"print('heavy:', sorted(m for m in {HEAVY!r} if m in sys.modules), 'code:', code)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert f"heavy: [] code: {code}" in proc.stdout, proc.stdout + proc.stderr


def test_a_sweep_prints_run_lines_and_a_table_but_no_trainer_dicts(tiny_bert_dir, tiny_sst2_dir, tmp_path, capsys):
    code = main(["--model", tiny_bert_dir, "--data-dir", tiny_sst2_dir, "--output-dir", str(tmp_path), "--max-steps",
                 "3", "--set", "training.logging_steps=1", "--set", "verification.latency_repeats=1"])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.err.splitlines()
    assert any(line.endswith("sst2-tiny-bert0-r8-a16-standard-lr2e-3-s42: started") for line in lines)
    assert any("[1/1] sst2-tiny-bert0-r8-a16-standard-lr2e-3-s42: completed · accuracy" in line
               and "verification passed" in line for line in lines)
    assert "'loss':" not in captured.err + captured.out  # the Trainer's log dicts went to history.jsonl
    history = (tmp_path / "sst2-single" / "sst2-tiny-bert0-r8-a16-standard-lr2e-3-s42" / "history.jsonl").read_text()
    assert '"train/loss"' in history


@pytest.mark.parametrize("direction, best", [("maximize", "b"), ("minimize", "a")])
def test_the_table_marks_the_best_completed_run(tmp_path, capsys, direction, best):
    rows = [{"run_name": "a", "status": "completed", "eval_loss": 0.3, "train_seconds": 12.0},
            {"run_name": "b", "status": "completed", "eval_loss": 0.9, "train_seconds": 11.0},
            {"run_name": "c", "status": "failed", "eval_loss": None}]
    console.print_summary(SweepResult(Path(tmp_path), [], rows, "loss", direction))
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if "* " in line and "completed" in line]
    assert len(marked) == 1 and f"* {best} " in marked[0]
    assert f"* best loss ({direction})" in out and max(len(line) for line in out.splitlines()) <= 120


def test_quiet_warnings_are_silenced_unless_verbose():
    message = "`is_gradient_checkpointing` is deprecated"
    for verbose, expected in ((False, 0), (True, 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("always")
            console.configure(verbose=verbose)
            warnings.warn(message, FutureWarning, stacklevel=1)
        assert len(caught) == expected
    assert logging.getLogger("bitsandbytes").getEffectiveLevel() <= logging.INFO  # verbose: everything
    console.configure(verbose=False)
    assert logging.getLogger("bitsandbytes").getEffectiveLevel() == logging.ERROR
