"""The task interface every task family implements, and what they share.

A task knows where its data lives (the Hub, or a local directory in the layout of
``shared/data``), how to check and tokenize it, how to batch it, and how to score a model on
it. Its objective is a :class:`peft.TaskType` value (``task_type``): ``SEQ_CLS`` for a
classification head, ``CAUSAL_LM`` for next-token prediction, ``QUESTION_ANS`` for extractive
QA. The recipe (:mod:`loraexp.run.recipe`) talks to tasks through :class:`Task` only, so a new
family is a new implementation of this protocol, not a new branch in the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from loraexp.errors import DataError

SPLITS = ("train", "validation")


class Task(Protocol):
    """One task in one form.

    Attributes:
        name: registry name (``sst2``).
        task_type: the objective as a ``peft.TaskType`` value (``SEQ_CLS`` | ``CAUSAL_LM`` |
            ``QUESTION_ANS``); it picks the ``AutoModelFor...`` class and PEFT's task type.
        num_labels: classes of a classification head; 0 when the model has no head to build.
        local_files: split -> path relative to the data directory.
        hub_dataset, hub_config: ``datasets.load_dataset(hub_dataset, hub_config)``.
        scores_base_model: whether evaluating the base model before training says something
            (a causal LM's zero-shot loss or accuracy; not a randomly initialised head).
        merge_space: where the merge check compares outputs: ``logits`` or ``probs``.
        merge_check_rows: rows of each eval batch the reload and merge checks use (None:
            all); every row runs through every adapted module, so a few rows test the merge as
            well as many, at a fraction of the forward passes' cost (a causal LM's
            ``(batch, seq, vocab)`` logits are large too).
        metrics_from_examples: every evaluation (the base model's too) runs
            ``Trainer.predict`` and takes its metrics from :meth:`example_scores` (extractive
            QA: answers are text assembled from several windows per question).
        windows_per_example: :meth:`tokenize` turns one example into several rows, so
            ``max_eval_samples`` selects examples before tokenizing (else rows after).
    """

    name: str
    task_type: str
    num_labels: int
    local_files: dict[str, str]
    hub_dataset: str
    hub_config: str | None
    scores_base_model: bool
    merge_space: str
    merge_check_rows: int | None
    metrics_from_examples: bool
    windows_per_example: bool

    def check_data(self, data_dir: str | Path | None) -> None:
        """Fail before any training if a local file is missing, unreadable, lacks columns or
        has no rows (both splits are read once). No-op for the Hub.

        Raises:
            DataError: naming the file and what is wrong with it.
        """

    def load_split(self, split: str, data_dir: str | Path | None):
        """``datasets.Dataset`` of raw rows of ``split`` (``train`` | ``validation``)."""

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Dataset of model inputs (``input_ids``, ``attention_mask``, ``labels``), at most
        ``max_length`` tokens per row."""

    def collator(self, tokenizer, pad_to_multiple_of: int | None = None):
        """The Trainer's ``data_collator`` (pads per batch, to a multiple of
        ``pad_to_multiple_of`` tokens when given)."""

    def trainer_metrics(self, tokenizer) -> dict[str, Any]:
        """Keyword arguments for ``Trainer``: ``compute_metrics`` and, if needed,
        ``preprocess_logits_for_metrics``; empty for loss-only evaluation."""

    def example_scores(self, predictions, label_ids, tokenizer, examples=None,
                       features=None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``(columns, scores, metrics)`` of an evaluation, from ``Trainer.predict``'s
        ``predictions`` (after ``preprocess_logits_for_metrics``) and ``label_ids``, with the
        eval ``examples`` (raw rows) and ``features`` (their tokenized rows) for tasks that
        need them: per-example columns for ``predictions.npz`` (``index``, ``label``,
        ``prediction``, ``score`` for a classifier); per metric,
        :class:`~loraexp.results.statistics.ExampleScores` (what the paired bootstrap resamples); and
        the metrics ``compute_metrics`` could not give (empty unless
        ``metrics_from_examples``)."""

    def training_defaults(self) -> dict[str, Any]:
        """``TrainingArguments`` fields this task needs unless the config sets them."""

    def postprocess_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Metrics of ``Trainer.evaluate`` (without prefix) with derived ones added (a causal
        LM's ``perplexity``)."""

    def evaluate_generation(self, model, tokenizer, dataset, evaluation) -> tuple[dict[str, Any], list[dict]] | None:
        """Metrics from generated text and one record per example, for tasks scored by
        generation (GSM8K); None for the others. ``evaluation`` is the config's
        :class:`~loraexp.config.schema.EvaluationConfig`."""


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


def read_text(path: Path, what: str, encoding: str = "utf-8") -> str:
    """The text of a local data file, decoded as UTF-8 (``utf-8-sig`` drops a byte-order mark).

    Raises:
        DataError: the file is not UTF-8, naming ``what`` (``sst2``), the file, the byte offset
            and the line of the first byte that is not.
    """
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{what} file {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}, line {line}: {exc.reason}); save it as UTF-8") from None


def read_local_splits(task: Task, data_dir: str | Path | None) -> None:
    """The usual :meth:`Task.check_data`: read both local splits once with
    :meth:`Task.load_split`, so a missing, malformed or empty file fails before any training.
    No-op for the Hub.

    Raises:
        DataError: from ``load_split``, naming the file and what is wrong with it.
    """
    if data_dir is not None:
        for split in SPLITS:
            task.load_split(split, data_dir)


def check_files_exist(task: Task, data_dir: str | Path | None) -> None:
    """Cheap part of :meth:`Task.check_data`: every local file of ``task`` exists (no file is
    read). No-op for the Hub.

    Raises:
        DataError: see :func:`require_file`.
    """
    if data_dir is not None:
        for split in SPLITS:
            require_file(data_dir, task.local_files[split], f"{task.name} {split}")
