"""The SQuAD 2.0 evaluation against hand-computed cases (the official script's definitions)."""

from __future__ import annotations

import pytest

from loraexp.tasks.squad_v2_eval import exact_match, normalize_answer, raw_scores, squad_v2_scores, token_f1


@pytest.mark.parametrize("text,normalised", [
    ("The Cat, sat!", "cat sat"),                # articles and punctuation removed, lower case
    ("an apple a day", "apple day"),
    ("  A  ", ""),                              # only an article: nothing left
    ("U.S. state", "us state"),                 # punctuation inside a word is removed too
    ("theatre", "theatre"),                     # 'the' only as a word
])
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize("gold,prediction,exact,f1", [
    ("the Eiffel Tower", "Eiffel tower.", 1, 1.0),
    ("big red dog", "red dog barked", 0, 2 / 3),   # 2 shared tokens: P = R = 2/3
    ("big red dog", "cat", 0, 0.0),
    ("", "", 1, 1.0),                            # unanswerable, predicted unanswerable
    ("", "Paris", 0, 0.0),                       # unanswerable, an answer predicted
    ("Paris", "", 0, 0.0),
    ("dog dog cat", "dog", 0, 0.5),              # P = 1, R = 1/3
])
def test_exact_match_and_f1(gold, prediction, exact, f1):
    assert exact_match(gold, prediction) == exact
    assert token_f1(gold, prediction) == pytest.approx(f1)


def test_the_best_of_several_gold_answers_counts_and_empty_gold_means_unanswerable():
    gold = {"q1": ["Denver Broncos", "the Broncos"], "q2": [], "q3": ["the"]}  # q3 normalises to nothing
    exact, f1 = raw_scores(gold, {"q1": "broncos", "q2": "", "q3": ""})
    assert exact == {"q1": 1, "q2": 1, "q3": 1} and f1 == {"q1": 1.0, "q2": 1.0, "q3": 1.0}
    exact, f1 = raw_scores(gold, {"q1": "Denver", "q2": "x", "q3": "the"})
    assert exact == {"q1": 0, "q2": 0, "q3": 1}  # "the" normalises to the empty answer
    assert f1["q1"] == pytest.approx(2 * (1 * 0.5) / 1.5)  # vs "Denver Broncos": P = 1, R = 1/2


GOLD = {"q1": ["Paris"], "q2": ["big red dog"], "q3": []}
PREDICTIONS = {"q1": "paris", "q2": "red dog barked", "q3": ""}


def test_official_metrics_with_the_has_ans_and_no_ans_breakdown():
    s = squad_v2_scores(GOLD, PREDICTIONS)
    assert s["total"] == 3 and s["HasAns_total"] == 2 and s["NoAns_total"] == 1
    assert s["exact"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert s["HasAns_exact"] == pytest.approx(50.0) and s["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert s["NoAns_exact"] == 100.0 and s["NoAns_f1"] == 100.0


def test_no_answer_threshold_and_best_thresholds():
    probs = {"q1": 0.1, "q2": 0.9, "q3": 0.8}
    s = squad_v2_scores(GOLD, PREDICTIONS, probs, no_answer_threshold=0.5)
    # q2 and q3 are predicted unanswerable: q2 (answerable) scores 0, q3 scores 1
    assert s["exact"] == pytest.approx(200 / 3) and s["f1"] == pytest.approx(200 / 3)
    # walking q1 (0.1), q3 (0.8), q2 (0.9) from "all unanswered" (1 point, q3):
    # exact: +1 at q1 -> 2 (thresh 0.1), +0, +0; f1: +1 -> 2, +0, +2/3 -> 2.667 (thresh 0.9)
    assert s["best_exact"] == pytest.approx(200 / 3) and s["best_exact_thresh"] == 0.1
    assert s["best_f1"] == pytest.approx(100 * (2 + 2 / 3) / 3) and s["best_f1_thresh"] == 0.9


def test_always_no_answer_baseline_scores_the_unanswerable_share():
    s = squad_v2_scores(GOLD, dict.fromkeys(GOLD, ""))
    assert s["exact"] == pytest.approx(100 / 3) and s["HasAns_exact"] == 0.0 and s["NoAns_exact"] == 100.0


def test_a_missing_prediction_is_an_error():
    with pytest.raises(ValueError, match="every question needs a prediction; missing 1"):
        squad_v2_scores(GOLD, {"q1": "paris", "q2": ""})
