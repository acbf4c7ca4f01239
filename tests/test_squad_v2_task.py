"""SQuAD 2.0 as extractive QA: windows and their labels, post-processing on known logits, the
article split, the PEFT behaviour that decides the inputs, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loraexp.cli.main import main
from loraexp.config.schema import QAConfig
from loraexp.errors import ConfigError, DataError
from loraexp.tasks import CAUSAL_LM, SEQ_CLS, task_type_for
from loraexp.tasks.squad_v2 import LOCAL_FILE, SQUAD_V2, SquadV2Task, answer_token_span, best_spans

NO = (-1, -1)


def _task(**settings) -> SquadV2Task:
    return SquadV2Task(settings=QAConfig(**settings))


def write_squad(root: Path, articles: int = 3, questions: int = 4) -> str:
    """A SQuAD 2.0 JSON in shared/data layout: ``articles`` articles, each one paragraph with
    ``questions`` questions, every second one unanswerable."""
    data = []
    for a in range(articles):
        context = (f"Article {a} says the river Alpha{a} flows north past the old mill into the grey sea. "
                   "It is long and cold, and many boats sail on it in the summer months.")
        qas = []
        for q in range(questions):
            answer = f"Alpha{a}"
            qas.append({"id": f"a{a}q{q}", "question": f"Which river is in article {a}?",
                        "answers": [] if q % 2 else [{"text": answer, "answer_start": context.index(answer)}],
                        "is_impossible": bool(q % 2)})
        data.append({"title": f"T{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path = root / LOCAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return str(root)


# -- labels of one window ------------------------------------------------------------------
OFFSETS = [NO, NO, NO, (0, 3), (4, 9), (10, 15), (16, 20), NO]  # CLS q q | "The river Alpha flow" | SEP
CONTEXT = [False, False, False, True, True, True, True, False]


@pytest.mark.parametrize("answers,span", [
    ({"text": ["river Alpha"], "answer_start": [4]}, (4, 5)),   # two whole tokens
    ({"text": ["Alph"], "answer_start": [10]}, (5, 5)),         # inside one token: that token
    ({"text": [], "answer_start": []}, (0, 0)),                 # unanswerable: CLS
    ({"text": ["flows on"], "answer_start": [16]}, (0, 0)),     # runs past the window: CLS
    ({"text": ["x"], "answer_start": [40]}, (0, 0)),            # in another window: CLS
    ({"text": [""], "answer_start": [20]}, (0, 0)),             # an empty answer: CLS, not a crash
    ({"text": [" "], "answer_start": [9]}, (0, 0)),             # white space between tokens: CLS
])
def test_answer_token_span_labels_the_window_or_cls(answers, span):
    assert answer_token_span(OFFSETS, CONTEXT, answers, cls_index=0) == span


def test_tokenize_makes_overlapping_windows_whose_labels_decode_to_the_answer(data_dir, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    questions = SQUAD_V2.load_split("validation", data_dir).select(range(60))
    features = _task(doc_stride=16).tokenize(questions, tokenizer, max_length=64)
    assert len(features) > len(questions)  # long contexts overflow into several windows
    assert "token_type_ids" not in features.column_names
    assert max(len(ids) for ids in features["input_ids"]) <= 64
    labelled = exact = 0
    for row in features:
        answers = questions[row["example_index"]]["answers"]
        start, end = row["start_positions"], row["end_positions"]
        if start == 0:
            assert end == 0
            continue
        labelled += 1
        context = questions[row["example_index"]]["context"]
        text = context[row["offset_mapping"][start][0]:row["offset_mapping"][end][1]]
        assert answers["text"][0] in text, (text, answers)  # whole tokens: may run past a partial word
        exact += text == answers["text"][0]
    assert labelled >= 10 and exact >= 0.9 * labelled
    windows = [row["example_index"] for row in features]
    assert windows == sorted(windows)  # windows of a question are adjacent, in question order


# -- post-processing on known logits -------------------------------------------------------
def _window(scores_start: dict[int, float], scores_end: dict[int, float], length: int = 8, null=(0.0, 0.0)):
    start, end = np.full(length, -10.0), np.full(length, -10.0)
    start[0], end[0] = null
    for i, v in scores_start.items():
        start[i] = v
    for i, v in scores_end.items():
        end[i] = v
    return start, end


CTX = "The river Alpha flow"


@pytest.mark.parametrize("windows,max_len,span,diff", [
    # best start and end form the span "river Alpha"; null 0 + 0, best 5 + 4
    ([_window({4: 5.0}, {5: 4.0})], 30, "river Alpha", -9.0),
    # end before start is skipped; the next best end makes the span
    ([_window({5: 5.0}, {4: 6.0, 6: 1.0})], 30, "Alpha flow", -6.0),
    # spans longer than max_answer_length (3..6 scores 10, 4..6 scores 6) are skipped
    ([_window({3: 5.0, 4: 1.0}, {6: 5.0, 4: 1.0})], 2, "The river", -6.0),
    # logits on question tokens (offset -1) never make a span
    ([_window({1: 9.0, 3: 1.0}, {2: 9.0, 3: 1.0})], 30, "The", -2.0),
    # two windows of one question: the second has the better span; null is the smaller CLS score
    ([_window({3: 1.0}, {3: 1.0}, null=(2.0, 2.0)), _window({6: 4.0}, {6: 4.0}, null=(1.0, 0.0))], 30,
     "flow", 1.0 - 8.0),
])
def test_best_spans_from_known_logits(windows, max_len, span, diff):
    starts = [w[0] for w in windows]
    ends = [w[1] for w in windows]
    spans, diffs = best_spans(starts, ends, [0] * len(windows), [OFFSETS] * len(windows), [CTX], n_best=20,
                              max_answer_length=max_len)
    assert spans == [span] and diffs == [pytest.approx(diff)]


def test_positions_past_a_window_are_ignored_and_no_valid_span_means_no_answer():
    start, end = _window({}, {}, length=8)
    padded_start = np.concatenate([start, [50.0, 50.0]])  # Trainer padding of a longer batch row
    padded_end = np.concatenate([end, [50.0, 50.0]])
    offsets = [NO] * 8  # no context token at all
    spans, diffs = best_spans([padded_start], [padded_end], [0], [offsets], [CTX], 20, 30)
    assert spans == [""] and diffs == [np.inf]


@pytest.mark.parametrize("threshold,prediction", [(0.0, ""), (3.0, "river Alpha")])
def test_example_scores_apply_the_null_threshold_and_report_the_no_answer_baseline(threshold, prediction):
    import datasets

    # question 0 is answerable ("river Alpha"), question 1 is not; their windows favour null by 2 and 6
    examples = datasets.Dataset.from_list([
        {"id": "q0", "context": CTX, "question": "?", "answers": {"text": ["river Alpha"], "answer_start": [4]}},
        {"id": "q1", "context": CTX, "question": "?", "answers": {"text": [], "answer_start": []}}])
    w0 = _window({4: 1.0}, {5: 1.0}, null=(2.0, 2.0))
    w1 = _window({4: 1.0}, {5: 1.0}, null=(4.0, 4.0))
    features = {"example_index": [0, 1], "offset_mapping": [OFFSETS, OFFSETS]}
    task = _task(null_score_diff_threshold=threshold)
    columns, scores, metrics = task.example_scores((np.stack([w0[0], w1[0]]), np.stack([w0[1], w1[1]])), None, None,
                                                   examples, features)
    assert list(columns["prediction"]) == [prediction, ""]
    answered = prediction != ""
    assert metrics["HasAns_exact"] == 100.0 * answered and metrics["NoAns_exact"] == 100.0
    assert metrics["exact"] == metrics["f1"] == 50.0 + 50.0 * answered
    assert metrics["no_answer_exact"] == metrics["no_answer_f1"] == 50.0
    assert metrics["best_f1"] == 100.0 and metrics["best_f1_thresh"] == pytest.approx(2.0)
    for name in ("exact", "f1", "HasAns_f1", "NoAns_exact"):
        assert scores[name].value() == pytest.approx(metrics[name])  # per-question scores add up
    assert list(scores["HasAns_f1"].index) == [0] and list(scores["NoAns_f1"].index) == [1]


# -- data ----------------------------------------------------------------------------------
def test_the_local_split_is_by_article_and_never_shares_a_context(data_dir):
    train, dev = (SQUAD_V2.load_split(s, data_dir) for s in ("train", "validation"))
    assert (len(train), len(dev)) == (4449, 1629)  # 12 and 4 of the file's 16 articles, 6,078 questions
    assert not set(train["context"]) & set(dev["context"])
    assert not set(train["title"]) & set(dev["title"])
    assert sum(not a["text"] for a in dev["answers"]) == 826  # unanswerable eval questions


@pytest.mark.parametrize("articles,train_questions", [(1, 4), (2, 8)])
def test_local_train_articles_is_configurable(tmp_path, articles, train_questions):
    root = write_squad(tmp_path, articles=3)
    task = _task(local_train_articles=articles)
    assert len(task.load_split("train", root)) == train_questions
    assert len(task.load_split("validation", root)) == 12 - train_questions


@pytest.mark.parametrize("text,articles,fragment", [
    (None, 3, "`qa.local_train_articles` is 3, but"),
    ("{not json", 0, "is not JSON"),
    ('{"data": [{"paragraphs": [{"qas": []}]}]}', 0, "is not in the SQuAD schema"),
    ('{"data": []}', 0, "has no articles"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": '
     '[{"answer_start": 0}]}]}]}]}', 0, "KeyError 'text'"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": '
     '[{"text": "c", "answer_start": "abc"}]}]}]}]}', 0, "ValueError"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": []}, '
     '{"id": "1", "question": "r", "answers": []}]}]}]}', 0, "repeats question ids"),
])
def test_bad_local_files_are_one_data_error(tmp_path, text, articles, fragment):
    root = write_squad(tmp_path, articles=3)
    if text is not None:
        (Path(root) / LOCAL_FILE).write_text(text)
    with pytest.raises(DataError, match=fragment):
        _task(local_train_articles=articles or 2).check_data(root)


# -- models --------------------------------------------------------------------------------
def test_a_causal_lm_on_squad_v2_is_refused_not_rerouted():
    assert task_type_for("squad_v2", SEQ_CLS) == "QUESTION_ANS"
    with pytest.raises(ConfigError, match="generative QA is not supported"):
        task_type_for("squad_v2", CAUSAL_LM)


def test_peft_question_answering_model_ignores_token_type_ids():
    """Why squad_v2 feeds no token_type_ids: PEFT's QA wrapper drops them. If PEFT starts
    passing them on, this fails, and the inputs can get segment ids again."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForQuestionAnswering

    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    model = get_peft_model(BertForQuestionAnswering(tiny_bert_config()),
                           LoraConfig(task_type="QUESTION_ANS", r=2, target_modules=["query"])).eval()
    ids = torch.tensor([[2, 5, 6, 3, 7, 8, 3]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        with_segments = model(input_ids=ids, token_type_ids=segments).start_logits
        without = model(input_ids=ids).start_logits
        plain = model.get_base_model()(input_ids=ids, token_type_ids=segments).start_logits
    assert torch.equal(with_segments, without)
    assert not torch.allclose(plain, without)


@pytest.mark.parametrize("target_modules", ["standard", "all-linear"])
def test_qa_outputs_is_trained_in_full_never_wrapped_in_lora(target_modules):
    from transformers import BertForQuestionAnswering

    from loraexp.model.load import attach_lora
    from tests.conftest import tiny_bert_config

    model, config = attach_lora(BertForQuestionAnswering(tiny_bert_config()),
                                {"r": 2, "lora_alpha": 4, "target_modules": target_modules}, seed=0,
                                task_type="QUESTION_ANS")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "qa_outputs" in n} == {"base_model.model.qa_outputs.modules_to_save.default.weight",
                                                          "base_model.model.qa_outputs.modules_to_save.default.bias"}
    assert set(config.modules_to_save) == {"qa_outputs"}


# -- end to end ----------------------------------------------------------------------------
def test_tiny_squad_v2_run_completes_verified_with_answers_and_per_question_scores(tiny_bert_dir, tmp_path):
    data = write_squad(tmp_path / "data", articles=3, questions=6)
    out = tmp_path / "out"
    code = main(["--task", "squad_v2", "--model", tiny_bert_dir, "--data-dir", data, "--output-dir", str(out),
                 "--max-steps", "3", "--no-progress", "--no-report", "--set", "max_seq_length=32",
                 "--set", "qa.doc_stride=8", "--set", "qa.local_train_articles=2",
                 "--set", "training.per_device_train_batch_size=4", "--set", "tracking.cka_probe_examples=4"])
    assert code == 0
    (run,) = (p for p in (out / "squad_v2-single").iterdir() if p.is_dir())
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed" and record["verification"]["passed"]
    assert record["resolved"]["objective"] == "QUESTION_ANS" and record["resolved"]["modules_to_save"] == ["qa_outputs"]
    assert record["resolved"]["train_examples"] > 12  # windows: every context overflows 32 tokens
    for part in ("eval", "base_eval"):  # base_eval: the untrained qa_outputs head
        assert {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh", "no_answer_f1"} <= set(
            record[part])
        assert record[part]["total"] == 6 and record[part]["no_answer_f1"] == 50.0
    assert record["representation_drift"]["cka"]
    with np.load(run / "predictions.npz") as saved:
        assert list(saved["id"]) == [f"a2q{q}" for q in range(6)]
        assert saved["f1.num"].mean() == pytest.approx(record["eval"]["f1"])
        assert saved["exact.num"].mean() == pytest.approx(record["eval"]["exact"])
