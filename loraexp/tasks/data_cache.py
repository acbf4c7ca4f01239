"""The rows and the tokenized data of a sweep's runs, shared in this process by content
(docs/design.md, "Reuse across a sweep").

One process runs the runs of a sweep one after another (:mod:`loraexp.sweep.runner`). Runs that
read the same task data (:func:`~loraexp.tasks.fingerprint.data_fingerprint` of the files, not
their path), select the same training subset (``max_train_samples``, ``data_seed``) and
tokenize it with the same tokenizer (:func:`tokenizer_fingerprint`, by content) at the same
``max_seq_length`` read and tokenize it once: every seed, learning rate, rank and method of a
sweep on one base. The task's own settings (its form, ``squad_v2``'s ``qa`` section) are part
of the key through the task object itself (:func:`task_key`).

A ``datasets.Dataset`` built in memory is an immutable Arrow table; each run gets its own
``Dataset`` object over the shared table (a shallow copy), so a format one run sets on its
dataset does not reach another. At most :data:`MAX_ENTRIES` datasets are kept, the least
recently used dropped first. Imports nothing heavy.
"""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Datasets kept: a run's two splits as rows and tokenized are four entries, so two configurations
# that alternate (two max_seq_length values, two tokenizers) both stay.
MAX_ENTRIES = 8

_cache: OrderedDict[tuple, Any] = OrderedDict()
_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # handed-out rows -> their content key
_enabled = True


def select(dataset, limit: int | None, seed: int | None = None):
    """The first ``limit`` rows of ``dataset`` (shuffled with ``seed`` first, if given)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    return dataset.select(range(limit))


def set_enabled(enabled: bool) -> None:
    """Turn the cache on (the default) or off (every call loads and tokenizes, as without
    it); turning it off empties it. For measurements (benchmarks/reuse.py) and tests."""
    global _enabled
    _enabled = enabled
    if not enabled:
        clear()


def clear() -> None:
    """Drop every cached dataset."""
    _cache.clear()


def task_key(task) -> str:
    """What of ``task`` decides its rows and their tokenization: its ``repr`` (the tasks are
    frozen dataclasses, so every field counts, settings included; stable within a process)."""
    return f"{type(task).__module__}.{type(task).__qualname__}:{task!r}"


def tokenizer_fingerprint(tokenizer) -> str | None:
    """What decides how ``tokenizer`` encodes, as datasets fingerprints a ``map`` function's
    arguments (``datasets.fingerprint.Hasher``: the tokenizer pickled with dill, its backend's
    definition and the Python-side settings -- special tokens, padding and truncation side,
    chat template; not the truncation and padding state a call leaves on the backend, so a
    tokenizer that has encoded something keeps its fingerprint). None when it cannot be hashed:
    its data is not cached."""
    from datasets.fingerprint import Hasher

    try:
        return Hasher.hash(tokenizer)
    except Exception:  # noqa: BLE001  (an unpicklable tokenizer: tokenize afresh)
        return None


def rows(task, split: str, data_dir: str | Path | None, fingerprint: str, limit: int | None = None,
         seed: int | None = None):
    """``task.load_split(split, data_dir)`` cut to ``limit`` rows (:func:`select`, shuffled
    with ``seed`` first if given), cached by (:func:`task_key`, the data ``fingerprint``,
    ``split``, ``limit``, ``seed``).

    Raises:
        DataError: see the task's ``load_split``.
    """
    key = ("rows", task_key(task), fingerprint, split, limit, seed)
    dataset = _cached(key, lambda: select(task.load_split(split, data_dir), limit, seed))
    _keys[dataset] = key
    return dataset


def tokenized(task, dataset, tokenizer, max_length: int):
    """``task.tokenize(dataset, tokenizer, max_length)``, cached when ``dataset`` came from
    :func:`rows` (its content key) and the tokenizer has a :func:`tokenizer_fingerprint`;
    otherwise tokenized as without the cache."""
    source = _keys.get(dataset)
    tokenizer_key = tokenizer_fingerprint(tokenizer) if source is not None and _enabled else None
    if tokenizer_key is None:
        return task.tokenize(dataset, tokenizer, max_length)
    return _cached(("tokenized", source, tokenizer_key, max_length),
                   lambda: task.tokenize(dataset, tokenizer, max_length))


def _cached(key: tuple, compute: Callable[[], Any]):
    """A fresh ``Dataset`` object over the table cached under ``key`` (computed on a miss)."""
    if not _enabled:
        return compute()
    if key in _cache:
        _cache.move_to_end(key)
    else:
        _cache[key] = compute()
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return copy.copy(_cache[key])
