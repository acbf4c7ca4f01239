"""Local results store: atomic files, the typed run record, summary tables."""

from __future__ import annotations

import csv
import os

import pytest

from loraexp.results.record import SCHEMA_VERSION, MergeCheck, RunRecord, Verification
from loraexp.results.storage import RunStore, atomic_write_text
from loraexp.results.summary import COLUMN_NAMES, write_sweep_summary


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_summary_lists_every_run_including_missing(tmp_path):
    passed = Verification(not_applicable={"full_training": "LoRA run", "reload": "not checked here",
                                          "convergence": "off"})
    passed.frozen_base.passed = passed.grad_flow.passed = True
    passed.merge = MergeCheck(passed=True, max_abs_diff=1e-7)
    RunStore(tmp_path / "a").write_record(RunRecord(
        run_id="abc", run_name="a", sweep="s", versions={}, status="completed",
        config={"lora": {"r": 4, "lora_alpha": 8, "target_modules": "standard"}, "training": {"learning_rate": 1e-3},
                "seed": 42}, eval={"accuracy": 0.8}, verification=passed))
    RunStore(tmp_path / "b").write_record(RunRecord(run_id="def", run_name="b", sweep="s", config={}, versions={},
                                                    status="failed", error="ValueError: boom"))
    write_sweep_summary(tmp_path, ["a", "b", "c"])
    markdown = (tmp_path / "summary.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["run_name"], r["status"]) for r in rows] == [("a", "completed"), ("b", "failed"), ("c", "missing")]
    assert rows[0]["eval_accuracy"] == "0.8" and rows[0]["verification"] == "passed"
    assert rows[0]["merge_max_abs_diff"] == "1e-07"
    assert rows[1]["error"] == "ValueError: boom" and rows[1]["verification"] == ""  # nothing was observed
    assert list(rows[0]) == list(COLUMN_NAMES)
    assert "| run_name | status | method | r |" in markdown
    assert RunStore(tmp_path / "a").is_completed() and not RunStore(tmp_path / "b").is_completed()


def test_record_round_trips_through_metrics_json(tmp_path):
    record = RunRecord(run_id="abc", run_name="a", sweep="s", config={"seed": 1}, versions={"peft": "0.21"},
                       eval={"accuracy": 0.5}, failed_step=3)
    record.verification.grad_flow.passed = True
    record.verification.merge = MergeCheck(passed=False, space="logits", max_abs_diff=0.2, reason="too far")
    store = RunStore(tmp_path / "a")
    store.write_record(record)
    saved = store.read_metrics()
    assert saved["schema_version"] == SCHEMA_VERSION and saved["verification"]["passed"] is False
    assert saved["verification"]["frozen_base"]["passed"] is None  # not observed is not passed
    assert store.read_record() == record


@pytest.mark.parametrize("checks, passed, reasons", [
    ((True, True, True), True, []),
    ((True, None, True), False, []),  # a check that could not be observed never counts as passed
    ((True, False, True), False, ["no lora_A gradient"]),
])
def test_verification_passes_only_when_every_check_passed(checks, passed, reasons):
    verification = Verification(not_applicable={"full_training": "LoRA run", "reload": "quantized base",
                                                "convergence": "off"})
    verification.frozen_base.passed, verification.grad_flow.passed, verification.merge.passed = checks
    if checks[1] is False:
        verification.grad_flow.reason = "no lora_A gradient"
    assert verification.passed is passed and verification.failure_reasons() == reasons


@pytest.mark.parametrize("not_applicable, passed", [
    ({}, False),  # the two LoRA-less checks apply but were not observed
    ({"full_training": "LoRA run", "reload": "quantized", "convergence": "off"}, True),
    ({"full_training": "LoRA run", "reload": "quantized"}, False),  # convergence applies, not observed
    ({n: "n/a" for n in ("frozen_base", "grad_flow", "full_training", "merge", "reload", "convergence")},
     False),  # nothing applies
])
def test_not_applicable_checks_are_left_out_and_nothing_passes_vacuously(not_applicable, passed):
    verification = Verification(not_applicable=not_applicable)
    verification.frozen_base.passed = verification.grad_flow.passed = verification.merge.passed = True
    assert verification.passed is passed


def test_a_schema_2_record_keeps_its_lora_verification():
    data = {"schema_version": 2, "status": "completed", "run_name": "a", "verification": {
        "frozen_base": {"passed": True}, "grad_flow": {"passed": True}, "merge": {"passed": True}}}
    assert RunRecord.from_dict(data).verification.passed is True


def test_wandb_summary_keys_come_from_the_record():
    record = RunRecord(run_id="abc", run_name="a", sweep="s", config={}, versions={}, status="completed",
                       eval={"accuracy": 0.9}, lora_rank={"mean_effective_rank": 2.0})
    record.verification.merge = MergeCheck(passed=True, max_abs_diff=1e-6)
    summary = record.wandb_summary()
    assert summary["eval/accuracy"] == 0.9 and summary["lora_rank/mean_effective_rank"] == 2.0
    assert summary["verification/merge/max_abs_diff"] == 1e-6 and summary["verification/passed"] is False


def test_a_schema_1_record_and_checkpoint_keep_their_verification():
    from loraexp.results.record import GradFlowCheck, check_from_dict

    old = RunRecord.from_dict({"status": "completed", "run_name": "a", "verification": {
        "frozen_base": True, "grad_flow": True, "merge_equivalence": True, "merge_max_abs_diff": 2e-6,
        "merge_space": "logits", "passed": True}})
    assert old.verification.passed and old.verification.merge.max_abs_diff == 2e-6
    assert check_from_dict(GradFlowCheck, {"grad_flow": True, "lora_A_verified_step": 3}).passed is True
