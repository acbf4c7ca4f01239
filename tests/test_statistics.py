"""Seed intervals against scipy, the paired bootstrap on synthetic predictions with a known
difference, the protocol verdict as constructed, Pareto fronts, and the sweep's comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from loraexp.results.statistics import (
    Difference,
    ExampleScores,
    classification_scores,
    load_scores,
    margin,
    paired_difference,
    pareto_front,
    save_predictions,
    seed_interval,
    token_loss_scores,
    verdict,
)


@pytest.mark.parametrize("values, confidence", [
    ([0.8521, 0.8349, 0.8475], 0.95),
    ([0.5, 0.7], 0.9),
    ([1.0, 2.0, 3.0, 4.0, 10.0], 0.99),
])
def test_seed_interval_is_scipys_t_interval(values, confidence):
    iv = seed_interval(values, confidence)
    sem = stats.sem(values)
    low, high = stats.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=sem)
    assert iv.mean == pytest.approx(np.mean(values)) and iv.std == pytest.approx(np.std(values, ddof=1))
    assert (iv.low, iv.high) == pytest.approx((low, high))


def test_one_seed_has_no_interval():
    iv = seed_interval([0.8])
    assert iv.n == 1 and iv.low is None and iv.std is None


def _synthetic(accuracy: float, n: int, rng) -> ExampleScores:
    correct = (rng.random(n) < accuracy).astype(float)
    return ExampleScores(np.arange(n), correct, np.ones(n))


@pytest.mark.parametrize("gap", [0.0, 0.05, -0.08])
def test_bootstrap_interval_covers_a_known_difference(gap):
    rng = np.random.default_rng(0)
    n = 4000
    baseline = [_synthetic(0.8, n, rng) for _ in range(3)]
    config = [_synthetic(0.8 + gap, n, rng) for _ in range(3)]
    d = paired_difference(config, baseline, resamples=2000, seed=1)
    assert d.low <= gap <= d.high
    assert d.high - d.low < 0.06  # 4,000 examples x 3 seeds: a few points wide
    assert d.estimate == pytest.approx(np.mean([c.value() for c in config]) - np.mean([b.value() for b in baseline]))


def test_bootstrap_is_paired_identical_predictions_give_zero():
    rng = np.random.default_rng(0)
    runs = [_synthetic(0.7, 500, rng) for _ in range(2)]
    d = paired_difference(runs, runs, resamples=500, seed=0)
    assert d.estimate == 0.0
    # resampled seeds differ between the sides, so the interval is not a point, but it is centred on 0
    assert d.low <= 0.0 <= d.high


def test_bootstrap_is_reproducible_and_uses_the_seed():
    rng = np.random.default_rng(0)
    a, b = [_synthetic(0.7, 300, rng)], [_synthetic(0.75, 300, rng)]
    assert paired_difference(a, b, resamples=500, seed=3) == paired_difference(a, b, resamples=500, seed=3)
    assert paired_difference(a, b, resamples=500, seed=3) != paired_difference(a, b, resamples=500, seed=4)


def test_f1_is_a_ratio_of_sums_equal_to_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    scores = classification_scores(predictions, labels, binary_f1=True)
    assert scores["f1"].value() == pytest.approx(f1_score(labels, predictions))
    assert scores["accuracy"].value() == pytest.approx(float((labels == predictions).mean()))


def test_perplexity_is_exp_of_the_token_loss():
    rows = np.array([[10.0, 5.0], [3.0, 1.0]])
    scores = token_loss_scores(rows)
    assert scores["loss"].value() == pytest.approx(13 / 6)
    assert scores["perplexity"].value() == pytest.approx(math.exp(13 / 6))


def test_predictions_file_round_trips(tmp_path):
    scores = classification_scores(np.array([1, 0, 1]), np.array([1, 1, 1]), binary_f1=True)
    path = tmp_path / "predictions.npz"
    save_predictions(path, {"index": np.arange(3), "label": np.array([1, 1, 1])}, scores)
    loaded = load_scores(path)
    assert set(loaded) == {"accuracy", "f1"} and loaded["accuracy"].value() == pytest.approx(2 / 3)
    assert set(np.load(path).files) >= {"index", "label", "accuracy.num", "f1.den"}


@pytest.mark.parametrize("low, high, allowed, lower_is_better, expected", [
    (-0.01, 0.02, 0.024, False, "yes"),          # the whole interval above -allowed
    (-0.08, -0.05, 0.024, False, "no"),          # the whole interval below -allowed
    (-0.04, 0.01, 0.024, False, "inconclusive"),  # straddles -allowed
    (-0.01, 0.01, 0.05, True, "yes"),            # loss: a rise up to +allowed is fine
    (0.06, 0.09, 0.05, True, "no"),              # loss rose by more than allowed
])
def test_verdict_falls_as_constructed(low, high, allowed, lower_is_better, expected):
    d = Difference(estimate=(low + high) / 2, low=low, high=high, examples=100, resamples=100)
    assert verdict(d, allowed, lower_is_better) == expected


def test_margin_relative_and_absolute():
    assert margin(0.8, 0.03, "relative") == pytest.approx(0.024)
    assert margin(0.8, 0.03, "absolute") == pytest.approx(0.03)


def test_verdicts_on_synthetic_predictions_with_known_drops():
    rng = np.random.default_rng(7)
    n = 6000
    baseline = [_synthetic(0.85, n, rng) for _ in range(3)]
    allowed = margin(0.85, 0.03, "relative")  # 0.0255
    close = paired_difference([_synthetic(0.85, n, rng) for _ in range(3)], baseline, resamples=1000)
    far = paired_difference([_synthetic(0.75, n, rng) for _ in range(3)], baseline, resamples=1000)
    assert verdict(close, allowed) == "yes" and verdict(far, allowed) == "no"


@pytest.mark.parametrize("costs, qualities, front", [
    ([1, 2, 3], [0.5, 0.7, 0.9], [True, True, True]),
    ([1, 2, 3], [0.9, 0.7, 0.8], [True, False, False]),
    ([1, 1, 2], [0.8, 0.7, 0.9], [True, False, True]),
    ([1, float("nan")], [0.8, 0.9], [True, False]),
])
def test_pareto_front(costs, qualities, front):
    assert pareto_front(costs, qualities) == front


def test_generation_records_give_per_question_exact_match():
    from loraexp.results.statistics import record_scores

    records = [{"exact_match": True, "exact_match_flexible": True},
               {"exact_match": False, "exact_match_flexible": True}]
    scores = record_scores(records, ["exact_match", "exact_match_flexible", "generation_samples"])
    assert set(scores) == {"exact_match", "exact_match_flexible"}
    assert scores["exact_match"].value() == 0.5 and scores["exact_match_flexible"].value() == 1.0


def test_runs_scored_on_different_examples_are_not_paired():
    a = ExampleScores(np.arange(4), np.ones(4), np.ones(4))
    b = ExampleScores(np.arange(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="different dev examples"):
        paired_difference([a], [b])


def test_a_truncated_predictions_file_is_an_error_not_a_crash_of_the_summary(tmp_path):
    import zipfile

    path = tmp_path / "predictions.npz"
    save_predictions(path, {"index": np.arange(3)}, classification_scores(np.zeros(3), np.zeros(3), False))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises((OSError, ValueError, KeyError, zipfile.BadZipFile)):
        load_scores(path)
