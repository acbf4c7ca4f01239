"""The official SQuAD 2.0 evaluation (Rajpurkar et al. 2018, "Know What You Don't Know"),
implemented from the definition of its evaluation script ``evaluate-v2.0.py``: answer
normalisation, exact match and token F1 against the best of several gold answers, the
HasAns/NoAns breakdown, the no-answer probability threshold and the best thresholds.

No maintained implementation installs offline here (``evaluate``'s ``squad_v2`` metric is
fetched from the Hub at load time), so this module follows the script function by function;
tests/test_squad_v2_eval.py checks it against hand-computed cases. Scores are percentages
(0–100), as the official script prints them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation (``string.punctuation``), drop the articles a/an/the, and
    collapse white space, in that order (the official script's ``normalize_answer``)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The normalised answer's white-space tokens; none for an empty answer."""
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> int:
    """1 when the normalised answers are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """Token-overlap F1 of the normalised answers. When either side is empty (no answer), 1 if
    both are and 0 otherwise."""
    gold_tokens, prediction_tokens = answer_tokens(gold), answer_tokens(prediction)
    if not gold_tokens or not prediction_tokens:
        return float(gold_tokens == prediction_tokens)
    same = sum((Counter(gold_tokens) & Counter(prediction_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def raw_scores(gold_answers: Mapping[str, Sequence[str]],
               predictions: Mapping[str, str]) -> tuple[dict[str, int], dict[str, float]]:
    """Per question, exact match and F1 against its best gold answer.

    Args:
        gold_answers: question id -> gold answer texts; an empty list (or answers that
            normalise to nothing) means unanswerable, scored against the empty answer.
        predictions: question id -> predicted text (``""`` predicts no answer).

    Returns:
        ``(exact, f1)``, question id -> score in {0, 1} and [0, 1], for every question with a
        prediction.

    Raises:
        KeyError: a prediction for a question id without gold answers.
    """
    exact, f1 = {}, {}
    for qid, prediction in predictions.items():
        golds = [a for a in gold_answers[qid] if normalize_answer(a)] or [""]
        exact[qid] = max(exact_match(g, prediction) for g in golds)
        f1[qid] = max(token_f1(g, prediction) for g in golds)
    return exact, f1


def has_answer(gold_answers: Mapping[str, Sequence[str]]) -> dict[str, bool]:
    """Question id -> whether it has a (non-empty after normalisation) gold answer."""
    return {qid: any(normalize_answer(a) for a in answers) for qid, answers in gold_answers.items()}


def apply_no_answer_threshold(scores: Mapping[str, float], no_answer_probs: Mapping[str, float],
                              answerable: Mapping[str, bool], threshold: float) -> dict[str, float]:
    """A question whose no-answer probability exceeds ``threshold`` is predicted unanswerable:
    it scores 1 if it is, 0 if it is not; the others keep their score."""
    return {qid: float(not answerable[qid]) if no_answer_probs[qid] > threshold else score
            for qid, score in scores.items()}


def best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float],
                   no_answer_probs: Mapping[str, float], answerable: Mapping[str, bool]) -> tuple[float, float]:
    """The no-answer threshold that maximises the total score, and that score (percent).

    Walks the questions in increasing no-answer probability, as the official script's
    ``find_best_thresh`` does: starting from "every question unanswered", answering a question
    adds its score if it has an answer, and loses 1 if it has none but the prediction is not
    empty.
    """
    current = best = sum(1 for qid in scores if not answerable[qid])
    threshold = 0.0
    for qid in sorted(scores, key=lambda q: no_answer_probs[q]):
        if answerable[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, threshold = current, no_answer_probs[qid]
    return 100.0 * best / len(scores), threshold


def squad_v2_scores(gold_answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                    no_answer_probs: Mapping[str, float] | None = None,
                    no_answer_threshold: float = 1.0) -> dict[str, float]:
    """The official SQuAD 2.0 metrics.

    Args:
        gold_answers: question id -> gold answer texts (empty: unanswerable).
        predictions: question id -> predicted text for every question of ``gold_answers``.
        no_answer_probs: question id -> probability (or score) of no answer; default 0 for every
            question (the threshold then changes nothing).
        no_answer_threshold: above it a question is predicted unanswerable (the script's
            ``--na-prob-thresh``, default 1.0).

    Returns:
        ``exact``, ``f1`` and ``total``; ``HasAns_exact``, ``HasAns_f1``, ``HasAns_total`` and
        ``NoAns_*`` for the subsets present; ``best_exact``, ``best_exact_thresh``,
        ``best_f1``, ``best_f1_thresh``. Scores in percent.

    Raises:
        ValueError: a question of ``gold_answers`` has no prediction, or there are none.
    """
    missing = [qid for qid in gold_answers if qid not in predictions]
    if missing or not gold_answers:
        raise ValueError(f"every question needs a prediction; missing {len(missing)}, e.g. {missing[:3]}"
                         if missing else "no questions to score")
    no_answer_probs = no_answer_probs or dict.fromkeys(predictions, 0.0)
    answerable = has_answer(gold_answers)
    exact, f1 = raw_scores(gold_answers, {q: predictions[q] for q in gold_answers})
    exact_t = apply_no_answer_threshold(exact, no_answer_probs, answerable, no_answer_threshold)
    f1_t = apply_no_answer_threshold(f1, no_answer_probs, answerable, no_answer_threshold)

    def summary(qids: list[str], prefix: str = "") -> dict[str, float]:
        return {f"{prefix}exact": 100.0 * sum(exact_t[q] for q in qids) / len(qids),
                f"{prefix}f1": 100.0 * sum(f1_t[q] for q in qids) / len(qids), f"{prefix}total": len(qids)}

    out = summary(list(gold_answers))
    for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
        subset = [q for q in gold_answers if answerable[q] is wanted]
        if subset:
            out.update(summary(subset, prefix))
    out["best_exact"], out["best_exact_thresh"] = best_threshold(predictions, exact, no_answer_probs, answerable)
    out["best_f1"], out["best_f1_thresh"] = best_threshold(predictions, f1, no_answer_probs, answerable)
    return out
