"""SST-2 for a causal LM: prompted classification with a verbalizer.

Each sentence becomes the prompt ``"Review: <sentence>\\nSentiment:"`` followed by a label
word (`` negative`` for 0, `` positive`` for 1). Training puts the loss on the label word
only (prompt labels -100). Scoring compares the next-token logits, at the end of the prompt,
of the label words' first tokens (the verbalizer of PET, Schick & Schütze 2021); the
prediction is the larger one, so a base model gets a zero-shot accuracy from the same code.
"""

from __future__ import annotations

from typing import Any

from loraexp.errors import ModelError
from loraexp.tasks.base import SPLITS
from loraexp.tasks.causal_lm import IGNORE_INDEX, CausalLMTask
from loraexp.tasks.sst2 import SST2

PROMPT = "Review: {sentence}\nSentiment:"
LABEL_WORDS = (" negative", " positive")  # index = SST-2 label


def label_token_ids(tokenizer, words=LABEL_WORDS) -> list[int]:
    """First token id of each label word.

    Raises:
        ModelError: two label words start with the same token.
    """
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if len(set(ids)) != len(ids):
        raise ModelError(f"verbalizer label words {list(words)} share a first token under this tokenizer")
    return ids


def first_label_positions(labels):
    """Index of the first labelled token of each row of ``labels`` ``(batch, seq)`` (a
    ``torch.Tensor``), as a ``(batch,)`` tensor."""
    return (labels != IGNORE_INDEX).int().argmax(dim=-1)


class SST2VerbalizerTask(CausalLMTask):
    name = "sst2"
    local_files = SST2.local_files
    hub_dataset = SST2.hub_dataset
    hub_config = SST2.hub_config
    num_labels = 0  # two label words, but no classification head to build

    def check_data(self, data_dir) -> None:
        SST2.check_data(data_dir)

    def load_split(self, split: str, data_dir):
        """The SST-2 split (``sentence``, ``label``), read as for the classification task."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return SST2.load_split(split, data_dir)

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Prompt + label word; ``labels`` are -100 except on the label word's tokens. The
        sentence is truncated so that prompt + word fit in ``max_length`` tokens."""
        words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in LABEL_WORDS]

        def encode(row):
            word = words[row["label"]]
            prompt = tokenizer(PROMPT.format(sentence=row["sentence"].strip()))["input_ids"]
            prompt = prompt[: max_length - len(word)]
            ids = prompt + word
            return {"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": [IGNORE_INDEX] * len(prompt) + word}

        return dataset.map(encode, remove_columns=dataset.column_names)

    def trainer_metrics(self, tokenizer) -> dict:
        """``preprocess_logits_for_metrics`` keeps, per row, the logits ``(num_labels,)`` of the
        label words at the position before the first labelled token (so no ``(batch, seq,
        vocab)`` logits are accumulated); ``compute_metrics`` gives ``accuracy``."""
        import torch

        word_ids = label_token_ids(tokenizer)
        index = torch.tensor(word_ids)

        def preprocess(logits, labels):
            if isinstance(logits, tuple):
                logits = logits[0]
            rows = torch.arange(labels.shape[0], device=labels.device)
            at = first_label_positions(labels) - 1
            return logits[rows, at][:, index.to(logits.device)]

        def compute(prediction):
            return {"accuracy": self.accuracy(prediction.predictions, prediction.label_ids, word_ids)}

        return {"preprocess_logits_for_metrics": preprocess, "compute_metrics": compute}

    def example_scores(self, scores, label_ids, tokenizer, examples=None,
                       features=None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Per-example columns (``index``, ``label``, ``prediction``, ``score`` = the winning
        label word's logit) and the ``accuracy`` :class:`~loraexp.results.statistics.ExampleScores`,
        from the label-word logits ``(n, num_labels)`` and ``label_ids`` ``(n, seq)``; no extra
        metrics (``compute_metrics`` gave accuracy)."""
        import numpy as np

        from loraexp.results.statistics import classification_scores

        word_ids = label_token_ids(tokenizer)
        label_ids = np.asarray(label_ids)
        first = (label_ids != IGNORE_INDEX).argmax(axis=-1)
        gold_tokens = label_ids[np.arange(len(label_ids)), first]
        gold = np.array([word_ids.index(int(t)) for t in gold_tokens])
        scores = np.asarray(scores)
        predictions = scores.argmax(-1)
        columns = {"index": np.arange(len(gold)), "label": gold, "prediction": predictions, "score": scores.max(-1)}
        return columns, classification_scores(predictions, gold, binary_f1=False), {}

    @staticmethod
    def accuracy(scores, label_ids, word_ids: list[int]) -> float:
        """Accuracy of argmax over ``scores`` ``(n, num_labels)`` against the class whose label
        word starts ``label_ids`` ``(n, seq)`` (first token that is not -100); numpy arrays."""
        import numpy as np

        label_ids = np.asarray(label_ids)
        first = (label_ids != IGNORE_INDEX).argmax(axis=-1)
        gold_tokens = label_ids[np.arange(len(label_ids)), first]
        gold = np.array([word_ids.index(int(t)) for t in gold_tokens])
        return float((np.asarray(scores).argmax(-1) == gold).mean())


SST2_VERBALIZER = SST2VerbalizerTask()
