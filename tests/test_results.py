"""Local results store: atomic files, summary tables."""

from __future__ import annotations

import csv
import os

import pytest

from loraexp.results import RunStore, atomic_write_text, write_sweep_summary


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
    RunStore(tmp_path / "a").write_metrics({
        "status": "completed", "run_id": "abc", "config": {"lora": {"r": 4, "lora_alpha": 8,
        "target_modules": "standard"}, "training": {"learning_rate": 1e-3}, "seed": 42},
        "eval": {"accuracy": 0.8}, "verification": {"passed": True, "merge_max_abs_diff": 1e-7}})
    RunStore(tmp_path / "b").write_metrics({"status": "failed", "error": "ValueError: boom"})
    markdown = write_sweep_summary(tmp_path, ["a", "b", "c"])
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["run_name"], r["status"]) for r in rows] == [("a", "completed"), ("b", "failed"), ("c", "missing")]
    assert rows[0]["eval_accuracy"] == "0.8" and rows[0]["verification"] == "passed"
    assert rows[1]["error"] == "ValueError: boom"
    assert (tmp_path / "summary.md").read_text() == markdown
    assert markdown.splitlines()[0].startswith("| run_name | status | r |")
    assert RunStore(tmp_path / "a").is_completed() and not RunStore(tmp_path / "b").is_completed()
