"""The convergence figures (loss decrease between the first and last logging windows) and the
optional pass/fail check ``verification.min_loss_decrease``."""

from __future__ import annotations

import json

import pytest

from loraexp.analysis.convergence import loss_decrease
from loraexp.cli.main import main


def _history(*losses, every=10):
    rows = [{"step": 0, "base_eval/loss": 9.0}]  # rows without a training loss are ignored
    rows += [{"step": every * (i + 1), "train/loss": loss, "train/grad_norm": 1.0} for i, loss in enumerate(losses)]
    return rows + [{"step": every * len(losses), "train/train_loss": 0.1}]  # the Trainer's run summary: not a window


@pytest.mark.parametrize("losses,threshold,pct,passed", [
    ((2.0, 1.5, 1.0), None, 50.0, None),   # figures only
    ((2.0, 1.5, 1.0), 30.0, 50.0, True),
    ((2.0, 1.9, 1.6), 30.0, 20.0, False),
    ((2.0, 2.5), 0.0, -25.0, False),       # the loss rose
])
def test_loss_decrease_compares_the_first_and_last_logged_windows(losses, threshold, pct, passed):
    check = loss_decrease(_history(*losses), window_steps=10, min_loss_decrease=threshold)
    assert check.loss_decrease_pct == pytest.approx(pct) and check.passed is passed
    assert (check.first_step, check.window_steps) == (10, 10)
    assert (check.reason is not None) == (passed is False)
    if passed is False:
        assert "below verification.min_loss_decrease" in check.reason


@pytest.mark.parametrize("threshold,passed", [(30.0, False), (None, None)])
def test_a_loss_that_diverged_never_passes(threshold, passed):
    check = loss_decrease(_history(2.0, 1.0, float("nan")), window_steps=10, min_loss_decrease=threshold)
    assert check.passed is passed and check.loss_decrease_pct is None
    assert check.reason == "the logged training loss is not finite at step 30"


@pytest.mark.parametrize("losses,fragment", [((), "logged 0 time(s)"), ((1.0,), "logged 1 time(s)"),
                                             ((0.0, 0.0), "needs it > 0")])
def test_too_few_windows_leave_the_check_unobserved_with_a_reason(losses, fragment):
    check = loss_decrease(_history(*losses), window_steps=10, min_loss_decrease=30.0)
    assert check.passed is None and check.loss_decrease_pct is None and fragment in check.reason


@pytest.mark.parametrize("threshold,status", [(None, "completed"),
                                              (99.0, "failed_verification")])
def test_min_loss_decrease_turns_the_figure_into_a_check(tiny_bert_dir, tiny_sst2_dir, tmp_path, threshold, status):
    out = tmp_path / "out"
    code = main(["--task", "sst2", "--model", tiny_bert_dir, "--data-dir", tiny_sst2_dir, "--output-dir", str(out),
                 "--max-steps", "4", "--no-progress", "--no-report", "--set", "training.logging_steps=2",
                 "--set", "training.per_device_train_batch_size=8", "--set", "tracking.cka_probe_examples=0",
                 "--set", f"verification.min_loss_decrease={'null' if threshold is None else threshold}"])
    (run,) = (p for p in (out / "sst2-single").iterdir() if p.is_dir())
    record = json.loads((run / "metrics.json").read_text())
    convergence = record["verification"]["convergence"]
    assert record["status"] == status and code == (0 if status == "completed" else 1)
    assert (convergence["first_step"], convergence["last_step"], convergence["window_steps"]) == (2, 4, 2)
    first, last = convergence["first_loss"], convergence["last_loss"]
    assert convergence["loss_decrease_pct"] == pytest.approx(100 * (first - last) / first)
    assert ("convergence" in record["verification"]["not_applicable"]) == (threshold is None)
    if status == "failed_verification":
        assert "below verification.min_loss_decrease 99%" in record["error"]
