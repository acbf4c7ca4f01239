"""Tiny Shakespeare language modelling (Karpathy's char-rnn corpus, 1,115,394 characters).

Split as nanoGPT does: the first 90% of the characters train, the last 10% are held out.
Each split is tokenized as one text and packed into fixed-length blocks of
``max_seq_length`` tokens (the remainder is dropped); every token is labelled, so the eval
loss is the held-out cross-entropy per token and ``perplexity`` = exp(loss).
"""

from __future__ import annotations

from loraexp.errors import DataError
from loraexp.tasks.causal_lm import CausalLMTask

TRAIN_FRACTION = 0.9  # nanoGPT's shakespeare split


class ShakespeareTask(CausalLMTask):
    name = "shakespeare"
    local_files = {"train": "tinyshakespeare/input.txt", "validation": "tinyshakespeare/input.txt"}
    hub_dataset = "karpathy/tiny_shakespeare"

    def full_text(self, data_dir) -> str:
        """The whole corpus: the local ``input.txt``, or the Hub dataset's train, validation
        and test texts joined in that order."""
        if data_dir is None:
            import datasets

            parts = datasets.load_dataset(self.hub_dataset)
            return "".join(t for split in ("train", "validation", "test") for t in parts[split]["text"])
        from loraexp.tasks.base import read_text, require_file

        path = require_file(data_dir, self.local_files["train"], "shakespeare")
        text = read_text(path, "shakespeare")
        if not text.strip():
            raise DataError(f"shakespeare file {str(path)!r} is empty")
        return text

    def load_split(self, split: str, data_dir):
        """One-row ``datasets.Dataset`` with column ``text``: characters [0, 90%) for
        ``train``, [90%, 100%) for ``validation``."""
        import datasets

        text = self.full_text(data_dir)
        cut = int(len(text) * TRAIN_FRACTION)
        return datasets.Dataset.from_dict({"text": [text[:cut] if split == "train" else text[cut:]]})

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Blocks of exactly ``max_length`` tokens: ``input_ids`` ``(n_blocks, max_length)``,
        ``labels`` equal to ``input_ids`` (the model shifts them).

        Raises:
            DataError: the text is shorter than one block.
        """
        import datasets

        ids = tokenizer("".join(dataset["text"]), add_special_tokens=False)["input_ids"]
        n_blocks = len(ids) // max_length
        if n_blocks == 0:
            raise DataError(f"shakespeare text has {len(ids)} tokens, fewer than one block of "
                            f"max_seq_length={max_length}")
        blocks = [ids[i * max_length:(i + 1) * max_length] for i in range(n_blocks)]
        return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * max_length] * n_blocks,
                                           "labels": blocks})


SHAKESPEARE = ShakespeareTask()
