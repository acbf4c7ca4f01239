"""Causal-LM tasks: response-only label masking, the SST-2 verbalizer, Shakespeare packing
and GSM8K answer scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loraexp.config.schema import EvaluationConfig
from loraexp.errors import ConfigError
from loraexp.tasks import CAUSAL_LM, SEQ_CLS, get_task, task_type_for
from loraexp.tasks.causal_lm import IGNORE_INDEX
from loraexp.tasks.gsm8k import GSM8K, final_answer, last_number
from loraexp.tasks.lima import LIMA
from loraexp.tasks.sft import tokenize_conversation
from loraexp.tasks.sst2_verbalizer import LABEL_WORDS, SST2_VERBALIZER, label_token_ids

CONVERSATION = [
    {"role": "user", "content": "Tell a story."},
    {"role": "assistant", "content": "Once upon a time."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "Then the end."},
]


@pytest.fixture(scope="module", params=["chat_template", "plain"])
def tokenizer(request, smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    if request.param == "plain":
        tok.chat_template = None
    return tok


def _labelled_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t in encoded["labels"] if t != IGNORE_INDEX])


def test_prompt_tokens_are_masked_and_every_response_is_trained(tokenizer):
    encoded = tokenize_conversation(tokenizer, CONVERSATION, max_length=512)
    labels, ids = encoded["labels"], encoded["input_ids"]
    assert len(labels) == len(ids)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(labels, ids))
    trained = _labelled_text(tokenizer, encoded)
    assert "Once upon a time." in trained and "Then the end." in trained  # both assistant turns
    assert "Tell a story" not in trained and "And then" not in trained  # user turns masked
    assert "user" not in trained and "assistant" not in trained  # role headers masked
    assert trained.count(tokenizer.eos_token) == 2  # each response ends with its end-of-turn token
    first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert "Tell a story." in tokenizer.decode(ids[:first_label])  # the prompt precedes the response


def test_truncation_keeps_masking_consistent(tokenizer):
    encoded = tokenize_conversation(tokenizer, CONVERSATION, max_length=12)
    assert len(encoded["input_ids"]) == len(encoded["labels"]) <= 12


def test_lima_multi_turn_rows_become_conversations():
    row = {"instruction": "And then?", "input": "", "output": "Then the end.",
           "history": [["Tell a story.", "Once upon a time."]]}
    assert LIMA.to_messages(row) == CONVERSATION
    hub_row = {"conversations": ["Tell a story.", "Once upon a time.", "And then?", "Then the end."]}
    assert LIMA.to_messages(hub_row) == CONVERSATION


def test_lima_split_holds_out_every_twentieth_row(data_dir):
    train, validation = LIMA.load_split("train", data_dir), LIMA.load_split("validation", data_dir)
    assert len(train) + len(validation) == 1029 and len(validation) == 52
    assert validation[0]["messages"][0]["content"].startswith("Can brain cells move?")
    assert max(len(m) for m in train["messages"]) > 2  # multi-turn rows are kept


def test_sft_trains_on_worked_solutions_without_calculator_annotations(smollm2_dir, data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    rows = GSM8K.load_split("train", data_dir).select(range(8))
    encoded = GSM8K.tokenize(rows, tok, max_length=512)
    assert len(encoded) == 8
    for row in encoded:
        trained = tok.decode([t for t in row["labels"] if t != IGNORE_INDEX])
        assert "####" in trained and "<<" not in trained  # calculator annotations stripped


def test_sft_tokenize_drops_rows_whose_response_was_truncated_away(smollm2_dir):
    import datasets
    from transformers import AutoTokenizer

    from loraexp.errors import DataError

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    long_question = "How many apples are there? " * 40  # ~240 tokens: the answer starts past max_length
    rows = datasets.Dataset.from_list([{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
                                       {"question": long_question, "answer": "#### 7"},
                                       {"question": "What is 3 + 3?", "answer": "#### 6"}])
    encoded = GSM8K.tokenize(rows, tok, max_length=64)
    assert len(encoded) == 2  # the long-question row lost every response token and is dropped
    assert [tok.decode([t for t in r["labels"] if t != IGNORE_INDEX]).split("####")[1].strip()[:1]
            for r in encoded] == ["4", "6"]
    with pytest.raises(DataError, match="no example keeps a response token"):
        GSM8K.tokenize(rows.select([1]), tok, max_length=64)


def test_verbalizer_labels_only_the_label_word(smollm2_dir, tiny_sst2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    encoded = SST2_VERBALIZER.tokenize(SST2_VERBALIZER.load_split("validation", tiny_sst2_dir), tok, 64)
    words = label_token_ids(tok)
    raw = SST2_VERBALIZER.load_split("validation", tiny_sst2_dir)
    for row, label in zip(encoded, raw["label"]):
        trained = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert trained == tok(LABEL_WORDS[label], add_special_tokens=False)["input_ids"]
        assert trained[0] == words[label]
        assert row["labels"][-1] == row["input_ids"][-1]  # the word ends the sequence


@pytest.mark.parametrize("scores, golds, expected", [
    ([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]], [0, 1, 0, 1], 1.0),
    ([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]], [1, 1, 1, 1], 0.5),
    ([[2.0, 1.0], [3.0, 0.0]], [1, 1], 0.0),
])
def test_verbalizer_accuracy(scores, golds, expected):
    word_ids = [11, 22]
    label_ids = np.full((len(golds), 6), IGNORE_INDEX)
    for i, g in enumerate(golds):  # label word at a different position in each row
        label_ids[i, 2 + i % 3] = word_ids[g]
    assert SST2_VERBALIZER.accuracy(np.array(scores), label_ids, word_ids) == expected


def test_verbalizer_reads_the_logits_before_the_label_word(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    preprocess = SST2_VERBALIZER.trainer_metrics(tok)["preprocess_logits_for_metrics"]
    words = label_token_ids(tok)
    logits = torch.zeros(2, 5, len(tok))
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3], labels[1, 4] = words[1], words[0]
    logits[0, 2, words[1]] = 7.0  # position 2 predicts token 3
    logits[1, 3, words[0]] = 9.0
    logits[1, 4, words[1]] = 100.0  # after the word: must be ignored
    assert preprocess(logits, labels).tolist() == [[0.0, 7.0], [9.0, 0.0]]


def test_shakespeare_split_and_packing(data_dir, smollm2_dir):
    from transformers import AutoTokenizer

    task = get_task("shakespeare", CAUSAL_LM)
    train, held_out = task.load_split("train", data_dir)["text"][0], task.load_split("validation", data_dir)["text"][0]
    assert len(train) == int(1_115_394 * 0.9) and len(train) + len(held_out) == 1_115_394
    assert train.startswith("First Citizen:") and held_out.endswith("Whiles thou art waking.\n")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    blocks = task.tokenize(task.load_split("validation", data_dir), tok, 128)
    assert len(blocks) > 100
    assert {len(ids) for ids in blocks["input_ids"]} == {128}
    assert blocks["labels"] == blocks["input_ids"]


@pytest.mark.parametrize("text, strict, flexible", [
    ("so 3 + 4 = 7\n#### 7", "7", "7"),
    ("#### 1,234", "1234", "1234"),
    ("#### -5.50", "-5.5", "-5.5"),
    ("The answer is 42.", None, "42"),
    ("no number here", None, None),
    ("#### 18\nthen 19", "18", "19"),
])
def test_gsm8k_answer_extraction(text, strict, flexible):
    assert final_answer(text) == strict
    assert last_number(text) == flexible


def test_gsm8k_generation_eval_scores_exact_match(monkeypatch, tiny_lm_data_dir, smollm2_dir):
    from transformers import AutoTokenizer

    import loraexp.tasks.generation

    answers = ["0 + 0 = 0\n#### 0", "#### 3", "it is 4", "#### 6", "####", "#### 10"]  # refs 0, 2, 4, 6, 8, 10
    monkeypatch.setattr(loraexp.tasks.generation, "generate_texts",
                        lambda model, tok, prompts, **kw: answers[:len(prompts)])
    rows = GSM8K.load_split("validation", tiny_lm_data_dir)
    settings = EvaluationConfig(generation_samples=6, max_new_tokens=8, generation_batch_size=2)
    metrics, records = GSM8K.evaluate_generation(None, AutoTokenizer.from_pretrained(smollm2_dir), rows, settings)
    assert metrics == {"exact_match": 3 / 6, "exact_match_flexible": 4 / 6, "generation_samples": 6}
    assert [r["exact_match"] for r in records] == [True, False, False, True, False, True]


@pytest.mark.parametrize("task, model, expected", [
    ("sst2", CAUSAL_LM, CAUSAL_LM),
    ("sst2", SEQ_CLS, SEQ_CLS),
    ("mrpc", CAUSAL_LM, SEQ_CLS),  # classification head on a causal LM
    ("shakespeare", CAUSAL_LM, CAUSAL_LM),
    ("gsm8k", CAUSAL_LM, CAUSAL_LM),
])
def test_task_form_follows_the_model(task, model, expected):
    assert task_type_for(task, model) == expected
    assert get_task(task, expected).task_type == expected


@pytest.mark.parametrize("task", ["shakespeare", "lima", "gsm8k"])
def test_causal_lm_task_on_an_encoder_is_a_clear_error(task):
    with pytest.raises(ConfigError, match="not a causal LM"):
        task_type_for(task, SEQ_CLS)
