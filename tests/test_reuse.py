"""Reuse across a sweep: rows and tokenized data cached by content (loraexp.tasks.data_cache); a
run's result is bit-identical with and without it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from loraexp.config.load import build_config
from loraexp.run.recipe import run_experiment
from loraexp.tasks import SST2, data_cache
from loraexp.tasks.fingerprint import data_fingerprint
from tests.conftest import FAST, write_tiny_sst2

FAST = {**FAST, "tracking.cka_probe_examples": 8}



@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer BERT encoder without a classification head (as MiniLM is saved), so a
    classifier loaded from it draws its head at load."""
    from transformers import AutoTokenizer, BertModel

    from tests.conftest import tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(tiny_bert_config(vocab_size=tokenizer.vocab_size)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def spies(monkeypatch):
    """Counts of the tokenizer loads and the tokenizations a run makes."""
    import transformers

    counts = {"tokenizer": 0, "tokenize": 0}
    real_tokenizer, real_tokenize = transformers.AutoTokenizer.from_pretrained, type(SST2).tokenize

    def tokenizer(*args, **kwargs):
        counts["tokenizer"] += 1
        return real_tokenizer(*args, **kwargs)

    def tokenize(self, *args, **kwargs):
        counts["tokenize"] += 1
        return real_tokenize(self, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(type(SST2), "tokenize", tokenize)
    return counts


def test_a_run_is_bit_identical_with_and_without_reuse(tiny_encoder_dir, tiny_sst2_dir, tmp_path, spies):
    """The same run with a fresh tokenization, and after another run (another seed, so another
    randomly initialised classifier head) filled the data cache: the same evaluation, the same
    adapter and head, bit for bit; the second run tokenized nothing."""
    def config(seed):
        return build_config(overrides={"model": tiny_encoder_dir, "data_dir": tiny_sst2_dir,
                                       "output_dir": str(tmp_path), "seed": seed, **FAST})

    data_cache.set_enabled(False)
    fresh = run_experiment(config(0), tmp_path / "fresh", "fresh")
    data_cache.set_enabled(True)
    run_experiment(config(1), tmp_path / "warm", "warm")
    spies.update(tokenizer=0, tokenize=0)
    reused = run_experiment(config(0), tmp_path / "reused", "reused")

    assert spies["tokenize"] == 0
    assert fresh.status == reused.status == "completed", (fresh.record.error, reused.record.error)
    measured = [k for k in fresh.record.eval if "runtime" not in k and "per_second" not in k]
    assert measured and {k: fresh.record.eval[k] for k in measured} == {k: reused.record.eval[k] for k in measured}
    a, b = (load_file(r.run_dir / "adapter" / "adapter_model.safetensors") for r in (fresh, reused))
    assert a.keys() == b.keys() and any("classifier" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.record.verification.reload.passed and reused.record.verification.reload.passed


def _tiny_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("change,cached", [
    ({}, True),
    ({"max_length": 16}, False),
    ({"seed": 1}, False),
    ({"limit": 16}, False),
    ({"same_content_elsewhere": True}, True),   # cached by content, not by path
    ({"other_content": True}, False),
    ({"padding_side": "left"}, False),
    ({"used_tokenizer": True}, True),   # a call's truncation and padding state is not the tokenizer's
])
def test_what_makes_two_tokenizations_the_same(tiny_bert_dir, tmp_path, spies, change, cached):
    first_dir = write_tiny_sst2(tmp_path / "a")
    tokenizer = _tiny_tokenizer(tiny_bert_dir)

    def tokenized(data_dir, tokenizer, limit=32, seed=0, max_length=32):
        rows = data_cache.rows(SST2, "train", data_dir, data_fingerprint("sst2", data_dir), limit, seed)
        return data_cache.tokenized(SST2, rows, tokenizer, max_length)

    first = tokenized(first_dir, tokenizer)
    data_dir, other_tokenizer = first_dir, _tiny_tokenizer(tiny_bert_dir)
    if change.pop("same_content_elsewhere", False):
        data_dir = write_tiny_sst2(tmp_path / "b")
    if change.pop("other_content", False):
        data_dir = write_tiny_sst2(tmp_path / "c")
        with open(f"{data_dir}/glue/sst2/train.tsv", "a") as fh:
            fh.write("one more row\t1\n")
    if change.pop("used_tokenizer", False):
        other_tokenizer(["a film"], truncation=True, max_length=5, padding="max_length")
    if "padding_side" in change:
        other_tokenizer.padding_side = change.pop("padding_side")
    spies["tokenize"] = 0
    second = tokenized(data_dir, other_tokenizer, **change)
    assert spies["tokenize"] == (0 if cached else 1)
    if cached:
        assert second is not first and second["input_ids"] == first["input_ids"]


def test_each_run_gets_its_own_dataset_object(tiny_sst2_dir):
    fingerprint = data_fingerprint("sst2", tiny_sst2_dir)
    first = data_cache.rows(SST2, "validation", tiny_sst2_dir, fingerprint)
    first.set_format("numpy")
    second = data_cache.rows(SST2, "validation", tiny_sst2_dir, fingerprint)
    assert second.format["type"] is None and len(second) == len(first) == 32


def test_the_data_cache_is_bounded(tiny_sst2_dir, monkeypatch):
    monkeypatch.setattr(data_cache, "MAX_ENTRIES", 2)
    fingerprint = data_fingerprint("sst2", tiny_sst2_dir)
    for limit in (4, 8, 16):
        data_cache.rows(SST2, "train", tiny_sst2_dir, fingerprint, limit, 0)
    assert [key[4] for key in data_cache._cache] == [8, 16]
    data_cache.set_enabled(False)
    assert not data_cache._cache
    data_cache.rows(SST2, "train", tiny_sst2_dir, fingerprint, 4, 0)
    assert not data_cache._cache
