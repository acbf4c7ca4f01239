"""Sequence classification (``peft.TaskType.SEQ_CLS``): the GLUE tasks' implementation of
:class:`~loraexp.tasks.base.Task`.

A classification head on the model is trained in full (PEFT ``modules_to_save``); metrics
come from scikit-learn (accuracy; F1 of the positive class, as GLUE reports for MRPC).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraexp.errors import DataError
from loraexp.tasks.base import read_local_splits, read_text, require_file


@dataclass(frozen=True)
class ClassificationTask:
    """One GLUE-style classification task (a :class:`~loraexp.tasks.base.Task`).

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
    read_local: Callable[[Path], Any]
    metrics: tuple[str, ...] = ("accuracy",)
    num_labels: int = 2
    hub_dataset: str = "nyu-mll/glue"
    task_type: str = "SEQ_CLS"
    scores_base_model: bool = False  # the head is randomly initialised before training
    merge_space: str = "logits"
    merge_check_rows: int | None = 16  # of 128-example eval batches: the checks' cost, not their reach
    metrics_from_examples: bool = False
    windows_per_example: bool = False

    def local_path(self, data_dir: str | Path, split: str) -> Path:
        """Path of ``split`` under ``data_dir``.

        Raises:
            DataError: the data directory or the file does not exist.
        """
        return require_file(data_dir, self.local_files[split], f"{self.name} {split}")

    def check_data(self, data_dir: str | Path | None) -> None:
        """Fail early (before any training) if a local file is missing, is not UTF-8, lacks
        columns, has no rows or has a label outside ``0 .. num_labels - 1``: both splits are
        read whole, once. No-op for the Hub.

        Raises:
            DataError: naming the file and what is wrong with it.
        """
        read_local_splits(self, data_dir)

    def load_split(self, split: str, data_dir: str | Path | None):
        """Load ``split`` (``train`` | ``validation``) as a ``datasets.Dataset`` with the
        columns ``text_fields`` + ``label`` (int64).

        Raises:
            DataError: missing file, not UTF-8, missing columns, no rows, or a label that is not
                one of ``0 .. num_labels - 1`` (see :meth:`checked_labels`).
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
        frame = frame[[*self.text_fields, "label"]].assign(label=self.checked_labels(path, frame["label"]))
        return datasets.Dataset.from_pandas(frame, preserve_index=False)

    def checked_labels(self, path: Path, labels):
        """``labels`` (a ``pandas.Series`` read from ``path``) as int64, every one checked to be
        a class of this task (``0 .. num_labels - 1``): a label outside that set would index
        past the classification head (or the verbalizer's words) in the middle of training.

        Raises:
            DataError: naming the file, the first bad label with its line (TSV) or row, how many
                rows are bad, and the allowed labels.
        """
        import pandas as pd

        allowed = range(self.num_labels)
        numeric = pd.to_numeric(labels, errors="coerce")
        good = numeric.isin(allowed).to_numpy()
        if good.all():
            return numeric.astype("int64").to_numpy()
        bad = (~good).nonzero()[0]
        first = int(bad[0])
        value = labels.iloc[first]
        value = value.item() if hasattr(value, "item") else value  # a numpy scalar of a parquet file: its number
        more = f" ({len(bad)} rows have a label outside that set)" if len(bad) > 1 else ""
        raise DataError(f"{self.name} file {str(path)!r} {_row_location(path, first, self.name)} has label "
                        f"{value!r}; allowed labels: {', '.join(map(str, allowed))}{more}")

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

    def collator(self, tokenizer, pad_to_multiple_of: int | None = None):
        """Dynamic padding per batch (``transformers.DataCollatorWithPadding``): to the longest
        row, rounded up to a multiple of ``pad_to_multiple_of`` tokens when given (config
        ``pad_to_multiple_of``: fewer distinct shapes for ``torch.compile``)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def trainer_metrics(self, tokenizer) -> dict:
        """Keyword arguments for ``Trainer``: ``compute_metrics`` from the head's logits."""
        return {"compute_metrics": lambda p: self.compute_metrics(p.predictions, p.label_ids)}

    def training_defaults(self) -> dict[str, Any]:
        """No token-count loss rescaling: a classifier's loss is a per-example mean, and the
        Trainer's rescaling (loss x processes under DDP, meant for losses summed over tokens)
        would double it, eval loss included (transformers issue #35078)."""
        return {"average_tokens_across_devices": False}

    def postprocess_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` unchanged (accuracy and F1 come from :meth:`compute_metrics`)."""
        return metrics

    def evaluate_generation(self, model, tokenizer, dataset, evaluation) -> None:
        """None: classification is scored from logits only."""
        return None

    def example_scores(self, logits, labels, tokenizer=None, examples=None,
                       features=None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Per-example columns (``index``, ``label``, ``prediction``, ``score`` = softmax
        probability of the predicted class) and :class:`~loraexp.results.statistics.ExampleScores` of
        ``accuracy`` (and ``f1``) from ``logits`` ``(n, num_labels)`` and ``labels`` ``(n,)``;
        no extra metrics (:meth:`compute_metrics` gave them)."""
        import numpy as np

        from loraexp.results.statistics import classification_scores

        logits = np.asarray(logits, dtype=np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        predictions, labels = probs.argmax(-1), np.asarray(labels)
        columns = {"index": np.arange(len(labels)), "label": labels, "prediction": predictions,
                   "score": probs.max(-1)}
        return columns, classification_scores(predictions, labels, binary_f1="f1" in self.metrics), {}

    def compute_metrics(self, logits, labels) -> dict[str, float]:
        """GLUE metrics from ``logits`` ``(n, num_labels)`` and integer ``labels`` ``(n,)``
        (numpy arrays)."""
        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score

        predictions = np.asarray(logits).argmax(-1)
        out = {"accuracy": float(accuracy_score(labels, predictions))}
        if "f1" in self.metrics:
            out["f1"] = float(f1_score(labels, predictions))
        return out


def read_tsv(path: Path, encoding: str = "utf-8", what: str = "data"):
    """Read a GLUE TSV (a ``pandas.DataFrame``): header row, tab-separated, no quoting (quotes
    are part of the text).

    Raises:
        DataError: the file is not UTF-8 (:func:`~loraexp.tasks.base.read_text`; ``what`` names
            the task in the message).
    """
    import pandas as pd

    return pd.read_csv(io.StringIO(read_text(path, what, encoding)), sep="\t", quoting=csv.QUOTE_NONE,
                       keep_default_na=False, dtype=str)


def _row_location(path: Path, index: int, what: str) -> str:
    """``line N`` of data row ``index`` (0-based, after the header) of a TSV file, counted as
    pandas reads it (blank lines skipped); ``row N`` (0-based) of any other file."""
    if path.suffix != ".tsv":
        return f"row {index} (0-based)"
    lines = read_text(path, what, "utf-8-sig").split("\n")
    numbers = [number for number, line in enumerate(lines, start=1) if line.strip("\r")][1:]  # after the header
    return f"line {numbers[index]}" if index < len(numbers) else f"data row {index + 1}"
