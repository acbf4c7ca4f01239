"""Instruction fine-tuning (SFT) data: conversations -> token ids with loss on responses only.

A conversation is a list of ``{"role": "user" | "assistant" | "system", "content": str}``.
It is rendered with the tokenizer's chat template when it has one (``apply_chat_template``),
else with a plain ``### User:`` / ``### Assistant:`` format ending each response with EOS.
Every assistant turn (all turns of a multi-turn row) is trained on; every other token --
system prompt, user turns, role headers -- gets label ``-100``.

Masking works on character spans: for assistant turn i, the span runs from the end of the
rendering of ``messages[:i]`` with the generation prompt to the end of the rendering of
``messages[:i+1]``; tokens overlapping that span (from the fast tokenizer's offset mapping)
keep their label.
"""

from __future__ import annotations

from typing import Any

from loraexp.errors import DataError, ModelError
from loraexp.tasks.causal_lm import IGNORE_INDEX, CausalLMTask

PLAIN_HEADERS = {"user": "### User:\n", "assistant": "### Assistant:\n", "system": "### System:\n"}


def _plain(messages: list[dict[str, str]], eos: str, add_generation_prompt: bool = False) -> str:
    text = "".join(PLAIN_HEADERS[m["role"]] + m["content"] + (eos if m["role"] == "assistant" else "") + "\n\n"
                   for m in messages)
    return text + (PLAIN_HEADERS["assistant"] if add_generation_prompt else "")


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Text of ``messages`` in the tokenizer's chat template (or the plain format)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return _plain(messages, tokenizer.eos_token or "", add_generation_prompt)


def response_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """``(text, spans)``: the rendered conversation and the ``[start, end)`` character span of
    each assistant turn (including the template's end-of-turn marker).

    Raises:
        ModelError: the chat template does not render a conversation as a prefix of its
            continuation, so spans cannot be located.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ModelError("the tokenizer's chat template does not render a conversation as a prefix of its "
                             "continuation; response tokens cannot be located for loss masking")
        spans.append((len(prompt), len(upto)))
    return text, spans


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask``, ``labels`` (``-100`` outside assistant turns),
    truncated to ``max_length`` tokens."""
    text, spans = response_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None), truncation=True,
                        max_length=max_length, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        inside = end > start and any(start < s_end and end > s_start for s_start, s_end in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}


class InstructionTask(CausalLMTask):
    """SFT task: subclasses turn a raw row into a conversation (:meth:`messages`)."""

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        raise NotImplementedError

    def tokenize(self, dataset, tokenizer, max_length: int):
        """Tokenize every row with :func:`tokenize_conversation`; rows whose responses were
        truncated away entirely (no labelled token) are dropped.

        Raises:
            DataError: no row keeps a labelled token (``max_seq_length`` too small).
        """
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError("instruction tasks need a fast tokenizer (offset mapping) for loss masking")

        def encode(row):
            return tokenize_conversation(tokenizer, self.messages(row), max_length)

        out = dataset.map(encode, remove_columns=dataset.column_names)
        out = out.filter(lambda row: any(t != IGNORE_INDEX for t in row["labels"]))
        if len(out) == 0:
            raise DataError(f"{self.name}: no example keeps a response token within max_seq_length={max_length}")
        return out
