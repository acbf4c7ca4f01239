"""Causal language modelling (``peft.TaskType.CAUSAL_LM``): what every causal-LM task shares
(label padding, the held-out loss / perplexity metric, base-model scoring).

A causal-LM task turns raw rows into ``input_ids``/``attention_mask``/``labels`` where
``labels`` is ``-100`` on every token that is not trained on (prompt tokens, padding);
transformers' causal-LM loss ignores those positions and shifts labels by one itself.
"""

from __future__ import annotations

import math
from typing import Any

from loraexp.tasks.base import read_local_splits

IGNORE_INDEX = -100  # label of tokens without loss (torch.nn.CrossEntropyLoss ignore_index)


def token_nll(logits, labels):
    """``(batch, 2)`` float32: per row, the summed next-token NLL (nats) over the labelled
    positions (labels shifted by one, ``-100`` ignored) and their count, from ``logits``
    ``(batch, seq, vocab)`` and ``labels`` ``(batch, seq)``; the loss the model computes, per row."""
    import torch

    if isinstance(logits, tuple):
        logits = logits[0]
    shifted = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted,
                                            ignore_index=IGNORE_INDEX, reduction="none")
    return torch.stack([nll.sum(-1), (shifted != IGNORE_INDEX).sum(-1).float()], dim=-1)


class CausalLMTask:
    """Base of causal-LM tasks (a :class:`~loraexp.tasks.base.Task`). Subclasses set
    ``name``, ``local_files`` (split -> path relative to the data directory; the same path
    for both splits when the task splits one file itself) and implement :meth:`load_split`
    and :meth:`tokenize`.

    Metrics: ``loss`` (mean cross-entropy per labelled token, nats) and ``perplexity``
    (exp(loss)) from ``Trainer.evaluate``; subclasses may add ``trainer_metrics`` (metrics
    from logits) and :meth:`evaluate_generation` (metrics from generated text). The merge
    check compares next-token probabilities of the first 8 rows of each batch: logits over a
    large vocabulary after many layers differ by ~1e-4 from fp32 rounding alone
    (docs/verification.md).
    """

    name: str = ""
    task_type: str = "CAUSAL_LM"
    num_labels: int = 0
    local_files: dict[str, str] = {}
    hub_dataset: str = ""
    hub_config: str | None = None
    scores_base_model: bool = True
    merge_space: str = "probs"
    merge_check_rows: int | None = 8
    metrics_from_examples: bool = False
    windows_per_example: bool = False

    def check_data(self, data_dir) -> None:
        """Fail early (before any training) if a local file is missing, unreadable, lacks
        fields or has no rows: both splits are read once. No-op for the Hub.

        Raises:
            DataError: naming the file and what is wrong with it.
        """
        read_local_splits(self, data_dir)

    def load_split(self, split: str, data_dir):
        """``datasets.Dataset`` of raw rows of ``split`` (``train`` | ``validation``)."""
        raise NotImplementedError

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Dataset with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` = no loss)."""
        raise NotImplementedError

    def collator(self, tokenizer, pad_to_multiple_of: int | None = None):
        """Pads ``input_ids`` with the pad token and ``labels`` with -100 per batch
        (``transformers.DataCollatorForSeq2Seq``, which handles decoder-only inputs too), to the
        longest row rounded up to a multiple of ``pad_to_multiple_of`` tokens when given."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def trainer_metrics(self, tokenizer) -> dict[str, Any]:
        """Keyword arguments for ``Trainer``: ``preprocess_logits_for_metrics`` reducing each
        row's ``(seq, vocab)`` logits to (summed token NLL, token count), used only by
        ``Trainer.predict`` (the final evaluation, for per-example scores); ``evaluate`` without
        ``compute_metrics`` keeps no logits."""
        return {"preprocess_logits_for_metrics": token_nll}

    def example_scores(self, nll_and_tokens, label_ids, tokenizer, examples=None,
                       features=None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Per-example columns (``index``, ``nll``, ``tokens``) and the ``loss`` / ``perplexity``
        :class:`~loraexp.results.statistics.ExampleScores` from :func:`token_nll` rows ``(n, 2)``; no
        extra metrics (``Trainer.evaluate``'s loss is the metric)."""
        import numpy as np

        from loraexp.results.statistics import token_loss_scores

        rows = np.asarray(nll_and_tokens, dtype=np.float64).reshape(-1, 2)
        columns = {"index": np.arange(len(rows)), "nll": rows[:, 0], "tokens": rows[:, 1]}
        return columns, token_loss_scores(rows), {}

    def training_defaults(self) -> dict[str, Any]:
        """None: the Trainer's defaults (token-level loss, averaged across processes) fit."""
        return {}

    def evaluate_generation(self, model, tokenizer, dataset, evaluation) -> tuple[dict[str, Any], list[dict]] | None:
        """None: scored by loss; :class:`~loraexp.tasks.gsm8k.GSM8KTask` overrides it."""
        return None

    @staticmethod
    def postprocess_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` with ``perplexity`` = exp(``loss``) added (``inf`` on overflow)."""
        if "loss" in metrics:
            try:
                metrics["perplexity"] = math.exp(metrics["loss"])
            except OverflowError:
                metrics["perplexity"] = float("inf")
        return metrics
