"""Sequence-classification task definition shared by the GLUE tasks.

A task knows where its data lives (the Hub, or a local directory in the layout of
``shared/data``), how to tokenize it and how to score predictions. Metrics come from
scikit-learn (accuracy; F1 of the positive class as GLUE reports for MRPC).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loraexp.errors import DataError

SPLITS = ("train", "validation")
SEQUENCE_CLASSIFICATION = "sequence_classification"
CAUSAL_LM = "causal_lm"


def require_file(data_dir: str | Path, relative: str, what: str) -> Path:
    """``data_dir / relative``, checked to exist.

    Raises:
        DataError: the data directory or the file does not exist (naming ``what``).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"`data_dir` {str(root)!r} is not a directory; it must hold the task files "
                        f"(e.g. {relative})")
    path = root / relative
    if not path.is_file():
        raise DataError(f"`data_dir` {str(root)!r} has no {what} file: expected {relative!r}")
    return path


@dataclass(frozen=True)
class ClassificationTask:
    """One GLUE-style classification task.

    Attributes:
        name: registry name (``sst2``).
        text_fields: one or two text columns fed to the tokenizer as a (pair of) sequence(s).
        hub_dataset, hub_config: ``datasets.load_dataset(hub_dataset, hub_config)``.
        local_files: split -> path relative to the data directory.
        read_local: reads one local file into a DataFrame with ``text_fields`` + ``label``.
        metrics: names computed by :meth:`compute_metrics` (``accuracy``, ``f1``).
        num_labels: number of classes.
    """

    name: str
    text_fields: tuple[str, ...]
    hub_config: str
    local_files: dict[str, str]
    read_local: Callable[[Path], pd.DataFrame]
    metrics: tuple[str, ...] = ("accuracy",)
    num_labels: int = 2
    hub_dataset: str = "nyu-mll/glue"
    kind: str = SEQUENCE_CLASSIFICATION
    generation_eval = None  # classification is scored from logits only

    def local_path(self, data_dir: str | Path, split: str) -> Path:
        """Path of ``split`` under ``data_dir``.

        Raises:
            DataError: the data directory or the file does not exist.
        """
        return require_file(data_dir, self.local_files[split], f"{self.name} {split}")

    def check_data(self, data_dir: str | Path | None) -> None:
        """Fail early (before any training) if a local file is missing, lacks columns or has
        no rows: both splits are read once. No-op for the Hub.

        Raises:
            DataError: naming the file and what is wrong with it.
        """
        if data_dir is not None:
            for split in SPLITS:
                self.load_split(split, data_dir)

    def load_split(self, split: str, data_dir: str | Path | None):
        """Load ``split`` (``train`` | ``validation``) as a ``datasets.Dataset`` with the
        columns ``text_fields`` + ``label`` (int64).

        Raises:
            DataError: missing file, missing columns, or no rows.
        """
        import datasets

        if data_dir is None:
            ds = datasets.load_dataset(self.hub_dataset, self.hub_config, split=split)
            return ds.select_columns([*self.text_fields, "label"])
        path = self.local_path(data_dir, split)
        frame = self.read_local(path)
        missing = [c for c in (*self.text_fields, "label") if c not in frame.columns]
        if missing:
            raise DataError(f"{self.name} file {str(path)!r} lacks the columns {missing}; it has {list(frame.columns)}")
        if frame.empty:
            raise DataError(f"{self.name} file {str(path)!r} has no rows")
        frame = frame[[*self.text_fields, "label"]].astype({"label": "int64"})
        return datasets.Dataset.from_pandas(frame, preserve_index=False)

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Tokenize to ``input_ids``/``attention_mask`` (+ ``labels``), truncating to
        ``max_length`` tokens; padding is left to the collator (dynamic, per batch)."""
        fields = self.text_fields

        def encode(batch):
            texts = [batch[f] for f in fields]
            out = tokenizer(*texts, truncation=True, max_length=max_length)
            out["labels"] = batch["label"]
            return out

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)

    def collator(self, tokenizer):
        """Dynamic padding per batch (``transformers.DataCollatorWithPadding``)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def trainer_metrics(self, tokenizer) -> dict:
        """Keyword arguments for ``Trainer``: ``compute_metrics`` from the head's logits."""
        return {"compute_metrics": lambda p: self.compute_metrics(p.predictions, p.label_ids)}

    def compute_metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """GLUE metrics from ``logits`` ``(n, num_labels)`` and integer ``labels`` ``(n,)``."""
        from sklearn.metrics import accuracy_score, f1_score

        predictions = np.asarray(logits).argmax(-1)
        out = {"accuracy": float(accuracy_score(labels, predictions))}
        if "f1" in self.metrics:
            out["f1"] = float(f1_score(labels, predictions))
        return out


def read_tsv(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a GLUE TSV: header row, tab-separated, no quoting (quotes are part of the text)."""
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding=encoding, keep_default_na=False,
                       dtype=str)
