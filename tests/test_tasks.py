"""GLUE tasks: local formats of shared/data, the Hub path, metrics, bad data files."""

from __future__ import annotations

import numpy as np
import pytest

from loraexp.errors import ConfigError, DataError
from loraexp.tasks import TASK_NAMES, get_task

# Row and label counts from shared/data/README.md.
REAL_COUNTS = [  # (task, split, rows, label-1 count, first text)
    ("sst2", "train", 67349, 37569, "hide new secretions from the parental units "),
    ("sst2", "validation", 872, 444, "it 's a charming and often affecting journey . "),
    ("mrpc", "train", 3668, 2474, None),
    ("mrpc", "validation", 408, 279, None),
    ("rte", "train", 2490, 1241, None),
    ("rte", "validation", 277, 131, None),
]


@pytest.mark.parametrize("task,split,rows,positives,first", REAL_COUNTS)
def test_real_local_files_load_with_documented_counts(data_dir, task, split, rows, positives, first):
    ds = get_task(task).load_split(split, data_dir)
    assert len(ds) == rows and sum(ds["label"]) == positives
    assert set(ds.column_names) == {*get_task(task).text_fields, "label"}
    if first is not None:
        assert ds[0]["sentence"] == first
    if task == "mrpc":
        assert not any(c.startswith("\ufeff") for c in ds.column_names)  # BOM stripped


def test_hub_path_asks_for_nyu_mll_glue(monkeypatch):
    import datasets

    calls = []

    class Fake:
        def select_columns(self, cols):
            calls.append(cols)
            return "dataset"

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or Fake())
    assert get_task("mrpc").load_split("validation", None) == "dataset"
    assert calls == [(("nyu-mll/glue", "mrpc"), {"split": "validation"}), ["sentence1", "sentence2", "label"]]


@pytest.mark.parametrize("content,fragment", [
    ("text\tlabel\nfine film \t1\n", "lacks the columns ['sentence']"),
    ("sentence\tlabel\n", "has no rows"),
])
def test_bad_local_files_raise_data_error(tmp_path, content, fragment):
    root = tmp_path / "glue" / "sst2"
    root.mkdir(parents=True)
    (root / "train.tsv").write_text(content)
    (root / "dev.tsv").write_text(content)
    with pytest.raises(DataError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        get_task("sst2").load_split("train", tmp_path)


@pytest.mark.parametrize("task,expected", [("sst2", {"accuracy": 0.75}), ("mrpc", {"accuracy": 0.75, "f1": 0.8})])
def test_metrics(task, expected):
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])  # predictions 1, 0, 1, 0
    labels = np.array([1, 0, 1, 1])
    assert get_task(task).compute_metrics(logits, labels) == pytest.approx(expected)


def test_unknown_task():
    with pytest.raises(ConfigError, match="allowed: gsm8k, lima, mrpc, rte, shakespeare, squad_v2, sst2"):
        get_task("cola")
    assert sorted(TASK_NAMES) == ["gsm8k", "lima", "mrpc", "rte", "shakespeare", "squad_v2", "sst2"]
