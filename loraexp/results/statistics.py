"""Seed statistics, paired differences to a baseline, the protocol verdict and Pareto fronts
(docs/results.md, "Statistics").

Every metric loraexp reports is a ratio of sums over dev examples, so one per-example form
covers them all: ``metric = transform(Σ numerator_i / Σ denominator_i)`` (accuracy: correct_i
/ 1; binary F1: 2·tp_i / (2·tp_i + fp_i + fn_i); loss: nll_i / tokens_i; perplexity: the same
with ``exp``; exact match: em_i / 1). A run stores these arrays in ``predictions.npz``; the
paired bootstrap resamples examples with them.

* Over seeds: mean, sample standard deviation and the Student-t interval
  (``scipy.stats.t.interval``) of the per-run metric.
* Against the baseline: the difference ``configuration − baseline`` of the metric on the same
  dev examples, with a two-level percentile bootstrap: each resample draws the dev examples
  with replacement (the same draw for both sides: paired), and, independently for each side,
  its seeds with replacement; the metric of a side is the mean over its drawn seeds. So the
  interval holds both the dev-set sampling and the seed-to-seed variation (Efron & Tibshirani
  1993, ch. 13 for the percentile interval; resamples and seed in ``sweep``).
* Verdict: within ``max_drop`` of the baseline (relative to the baseline's mean, or absolute):
  ``yes`` when the whole interval of the difference is above −margin, ``no`` when the whole
  interval is below it, ``inconclusive`` otherwise (for a metric where lower is better the
  signs flip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PREDICTIONS_FILE = "predictions.npz"
EXP_METRICS = ("perplexity",)  # metric = exp(ratio)
LOWER_IS_BETTER = ("loss", "perplexity")
BOOTSTRAP_CHUNK = 500  # resamples per vectorised block (memory: chunk × examples × seeds floats)


@dataclass
class ExampleScores:
    """One metric's per-example components: ``metric = transform(Σ num / Σ den)``.

    ``index``: dev-example indices ``(n,)`` int64 (what pairs two runs); ``num``/``den``:
    ``(n,)`` float64; ``transform``: ``identity`` or ``exp``."""

    index: np.ndarray
    num: np.ndarray
    den: np.ndarray
    transform: str = "identity"

    def value(self) -> float:
        """The metric over all examples (NaN when Σ den is 0)."""
        return _apply(float(self.num.sum()) / float(self.den.sum()) if self.den.sum() else math.nan, self.transform)


def _apply(ratio: float | np.ndarray, transform: str):
    return np.exp(ratio) if transform == "exp" else ratio


def classification_scores(predictions: np.ndarray, labels: np.ndarray, binary_f1: bool) -> dict[str, ExampleScores]:
    """``accuracy`` (and ``f1`` of class 1 when ``binary_f1``) per example from predicted and
    true class ids, both ``(n,)`` ints."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    index = np.arange(len(labels))
    out = {"accuracy": ExampleScores(index, (predictions == labels).astype(float), np.ones(len(labels)))}
    if binary_f1:
        tp = ((predictions == 1) & (labels == 1)).astype(float)
        fp = ((predictions == 1) & (labels != 1)).astype(float)
        fn = ((predictions != 1) & (labels == 1)).astype(float)
        out["f1"] = ExampleScores(index, 2 * tp, 2 * tp + fp + fn)
    return out


def token_loss_scores(nll_and_tokens: np.ndarray) -> dict[str, ExampleScores]:
    """``loss`` (mean token NLL, nats) and ``perplexity`` per example from ``(n, 2)`` rows of
    (summed token NLL, token count)."""
    rows = np.asarray(nll_and_tokens, dtype=np.float64).reshape(-1, 2)
    index = np.arange(len(rows))
    return {"loss": ExampleScores(index, rows[:, 0], rows[:, 1]),
            "perplexity": ExampleScores(index, rows[:, 0], rows[:, 1], "exp")}


def record_scores(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, ExampleScores]:
    """Per-example fractions (e.g. ``exact_match``) from generation records holding booleans."""
    index = np.arange(len(records))
    return {k: ExampleScores(index, np.array([float(r[k]) for r in records]), np.ones(len(records)))
            for k in keys if records and k in records[0]}


def save_predictions(path: str | Path, columns: dict[str, np.ndarray], scores: dict[str, ExampleScores]) -> None:
    """Write ``predictions.npz``: the ``columns`` (``index``, ``label``, ``prediction``,
    ``score`` for a classifier) and, per metric ``m``, ``m.index``, ``m.num``, ``m.den`` and
    ``m.transform``."""
    import io

    from loraexp.results.storage import atomic_write_bytes

    arrays = {k: np.asarray(v) for k, v in columns.items()}
    for name, s in scores.items():
        arrays.update({f"{name}.index": s.index, f"{name}.num": s.num, f"{name}.den": s.den,
                       f"{name}.transform": np.array(s.transform)})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())  # a kill mid-write leaves the previous file, never a truncated one


def load_scores(path: str | Path) -> dict[str, ExampleScores]:
    """The per-metric :class:`ExampleScores` of a ``predictions.npz``.

    Raises:
        OSError | ValueError | KeyError | zipfile.BadZipFile: the file is missing, truncated,
            not an npz archive, or lacks a metric's arrays; ValueError also when a metric's
            arrays differ in length.
    """
    with np.load(path, allow_pickle=False) as data:
        names = sorted({k.rsplit(".", 1)[0] for k in data.files if k.endswith(".num")})
        out = {n: ExampleScores(data[f"{n}.index"], data[f"{n}.num"], data[f"{n}.den"], str(data[f"{n}.transform"]))
               for n in names}
    for name, s in out.items():
        if not s.index.shape == s.num.shape == s.den.shape or s.index.ndim != 1:
            raise ValueError(f"{path}: the arrays of {name!r} differ in shape")
    return out


@dataclass
class SeedInterval:
    """Mean, sample std and two-sided Student-t interval of a metric over ``n`` seeds
    (``low``/``high`` None when n < 2)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> SeedInterval:
    """Student-t interval of the mean of ``values`` (one per seed): mean ± t_{(1+c)/2, n−1} ·
    s/√n, computed with ``scipy.stats.t.interval``.

    Raises:
        ValueError: ``values`` is empty.
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("seed_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return SeedInterval(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return SeedInterval(int(x.size), mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, df=x.size - 1, loc=mean, scale=std / math.sqrt(x.size))
    return SeedInterval(int(x.size), mean, std, float(low), float(high))


@dataclass
class Difference:
    """``configuration − baseline`` of a metric on the same dev examples: the point estimate
    (means over seeds) and the bootstrap interval; ``examples`` paired, ``resamples`` drawn."""

    estimate: float
    low: float
    high: float
    examples: int
    resamples: int


def _aligned(runs: Sequence[ExampleScores], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(num, den)`` arrays ``(seeds, len(index))`` of ``runs`` on the examples ``index``."""
    nums, dens = [], []
    for s in runs:
        position = {int(i): k for k, i in enumerate(s.index)}
        take = np.array([position[int(i)] for i in index])
        nums.append(s.num[take])
        dens.append(s.den[take])
    return np.stack(nums), np.stack(dens)


def paired_difference(config: Sequence[ExampleScores], baseline: Sequence[ExampleScores], confidence: float = 0.95,
                      resamples: int = 10000, seed: int = 0) -> Difference:
    """Bootstrap interval of ``metric(config) − metric(baseline)`` over the dev examples both
    were scored on (see the module docstring); each side is a list of per-seed scores of one
    metric.

    Raises:
        ValueError: a side is empty, the runs were scored on different dev examples (a pairing
            needs the same ones), or they score the metric differently.
    """
    if not config or not baseline:
        raise ValueError("paired_difference needs at least one run on each side")
    transform = config[0].transform
    if any(s.transform != transform for s in (*config, *baseline)):
        raise ValueError("the runs of a paired difference score the metric differently")
    sets = [frozenset(map(int, s.index)) for s in (*config, *baseline)]
    if len(set(sets)) != 1:
        raise ValueError(f"the runs were scored on different dev examples ({sorted({len(x) for x in sets})} examples)")
    index = np.array(sorted(sets[0]))
    if index.size == 0:
        raise ValueError("the runs share no dev example")
    c_num, c_den = _aligned(config, index)
    b_num, b_den = _aligned(baseline, index)

    def metric(num: np.ndarray, den: np.ndarray) -> np.ndarray:  # (..., seeds, examples) -> (...)
        sums_den = den.sum(-1)
        ratio = np.divide(num.sum(-1), sums_den, out=np.full(sums_den.shape, np.nan), where=sums_den != 0)
        return _apply(ratio, transform).mean(-1)

    estimate = float(metric(c_num, c_den) - metric(b_num, b_den))
    rng = np.random.default_rng(seed)
    n = index.size
    deltas = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        examples = rng.integers(0, n, size=(size, 1, n))
        sides = []
        for num, den in ((c_num, c_den), (b_num, b_den)):
            seeds = rng.integers(0, num.shape[0], size=(size, num.shape[0], 1))
            sides.append(metric(num[seeds, examples], den[seeds, examples]))
        deltas.append(sides[0] - sides[1])
    delta = np.concatenate(deltas)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(delta, [tail, 100 - tail])
    return Difference(estimate, float(low), float(high), int(n), int(resamples))


def margin(baseline_mean: float, max_drop: float, unit: str) -> float:
    """The largest acceptable drop, in the metric's units: ``max_drop`` × |baseline mean|
    (``relative``) or ``max_drop`` itself (``absolute``)."""
    return max_drop * abs(baseline_mean) if unit == "relative" else max_drop


def verdict(difference: Difference, allowed: float, lower_is_better: bool = False) -> str:
    """``yes`` | ``no`` | ``inconclusive``: is the configuration within ``allowed`` (a drop in the
    metric's units, >= 0) of the baseline? For higher-is-better metrics the difference must
    stay above −allowed: yes when the interval's low end is, no when its high end is not."""
    low, high = difference.low, difference.high
    if lower_is_better:  # a rise is the drop in quality
        low, high = -high, -low
    if low >= -allowed:
        return "yes"
    if high < -allowed:
        return "no"
    return "inconclusive"


def pareto_front(costs: Sequence[float], qualities: Sequence[float]) -> list[bool]:
    """For each point, whether no other point has cost <= and quality >= with one strict (lower
    cost is better, higher quality is better; negate a lower-is-better metric first). NaN
    points are never on the front."""
    flags = []
    for i, (c, q) in enumerate(zip(costs, qualities)):
        if math.isnan(c) or math.isnan(q):
            flags.append(False)
            continue
        dominated = any(j != i and not (math.isnan(c2) or math.isnan(q2)) and c2 <= c and q2 >= q and (c2 < c or q2 > q)
                        for j, (c2, q2) in enumerate(zip(costs, qualities)))
        flags.append(not dominated)
    return flags
