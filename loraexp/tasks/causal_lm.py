"""What every causal-LM task shares: the task interface the runner uses, label padding,
and the held-out loss / perplexity metric.

A causal-LM task turns raw rows into ``input_ids``/``attention_mask``/``labels`` where
``labels`` is ``-100`` on every token that is not trained on (prompt tokens, padding);
transformers' causal-LM loss ignores those positions and shifts labels by one itself.
"""

from __future__ import annotations

import math
from typing import Any

from loraexp.tasks.base import CAUSAL_LM, SPLITS

IGNORE_INDEX = -100  # label of tokens without loss (torch.nn.CrossEntropyLoss ignore_index)


class CausalLMTask:
    """Base of causal-LM tasks. Subclasses set ``name``, ``local_files`` (split -> path
    relative to the data directory; the same path for both splits when the task splits
    one file itself) and implement :meth:`load_split` and :meth:`tokenize`.

    Metrics: ``loss`` (mean cross-entropy per labelled token, nats) and ``perplexity``
    (exp(loss)) from ``Trainer.evaluate``; subclasses may add ``trainer_metrics`` (metrics
    from logits) and ``generation_eval`` (metrics from generated text).
    """

    name: str = ""
    kind: str = CAUSAL_LM
    num_labels: int = 0
    local_files: dict[str, str] = {}
    hub_dataset: str = ""
    hub_config: str | None = None
    generation_eval = None

    def check_data(self, data_dir) -> None:
        """Fail early (before any training) if a local file is missing, unreadable, lacks
        fields or has no rows: both splits are read once. No-op for the Hub.

        Raises:
            DataError: naming the file and what is wrong with it.
        """
        if data_dir is not None:
            for split in SPLITS:
                self.load_split(split, data_dir)

    def load_split(self, split: str, data_dir):
        """``datasets.Dataset`` of raw rows of ``split`` (``train`` | ``validation``)."""
        raise NotImplementedError

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Dataset with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` = no loss)."""
        raise NotImplementedError

    def collator(self, tokenizer):
        """Pads ``input_ids`` with the pad token and ``labels`` with -100 per batch
        (``transformers.DataCollatorForSeq2Seq``, which handles decoder-only inputs too)."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)

    def trainer_metrics(self, tokenizer) -> dict[str, Any]:
        """Keyword arguments for ``Trainer`` (``compute_metrics``, ``preprocess_logits_for_metrics``);
        none by default: loss-only evaluation keeps no logits."""
        return {}

    @staticmethod
    def add_perplexity(metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` with ``perplexity`` = exp(``loss``) added (``inf`` on overflow)."""
        if "loss" in metrics:
            try:
                metrics["perplexity"] = math.exp(metrics["loss"])
            except OverflowError:
                metrics["perplexity"] = float("inf")
        return metrics
