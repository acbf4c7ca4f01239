"""Reuse across a sweep: tokenized data cached by content (loraexp.tasks.data_cache) and the base
loaded once (loraexp.model.base_cache); a run's result is bit-identical with and without them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from loraexp.config.load import build_config
from loraexp.model import base_cache
from loraexp.model.load import load_model
from loraexp.run.recipe import run_experiment
from loraexp.tasks import SST2, data_cache
from loraexp.tasks.fingerprint import data_fingerprint
from tests.conftest import FAST, write_tiny_sst2

FAST = {**FAST, "tracking.cka_probe_examples": 8}



@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer Llama causal LM with MiniLM's tokenizer, saved as a local model directory."""
    from transformers import AutoTokenizer

    from tests.conftest import save_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer, vocab_size=tokenizer.vocab_size,
                           hidden_size=16, intermediate_size=24, max_position_embeddings=128)


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


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _storages(model) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


# (model fixture, objective, whether a head is missing from the checkpoint and drawn at load)
LOADS = [
    ("tiny_bert_dir", "SEQ_CLS", False),       # the checkpoint has its classifier
    ("tiny_encoder_dir", "SEQ_CLS", True),     # as MiniLM: the classifier
    ("tiny_bert_dir", "QUESTION_ANS", True),   # qa_outputs
    ("tiny_llama_dir", "CAUSAL_LM", False),
    ("tiny_llama_dir", "SEQ_CLS", True),       # score
]


@pytest.mark.parametrize("mode", ["map", "copy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fixture,objective,drawn", LOADS)
def test_a_cached_base_is_a_fresh_load(request, fixture, objective, drawn, dtype, mode):
    """A load through the cache gives what a fresh load gives -- weights, randomly initialised
    head under the same seed, torch's random state afterwards, config, name, generation
    config -- however the model handed out before was changed."""
    path = request.getfixturevalue(fixture)
    base_cache.set_mode(mode)
    before, _ = base_cache.load(path, objective, 2, dtype=dtype)  # fills the cache
    assert base_cache.cached_path() == path
    with torch.no_grad():  # what a run may do to its base: train it in place, wrap it
        for p in before.parameters():
            p.add_(1.0)

    torch.manual_seed(123)
    fresh, fresh_tokenizer = load_model(path, objective, 2, dtype=dtype)
    fresh_rng = torch.get_rng_state()
    torch.manual_seed(123)
    cached, tokenizer = base_cache.load(path, objective, 2, dtype=dtype)

    assert torch.equal(torch.get_rng_state(), fresh_rng)
    assert _same_state(cached, fresh)
    assert cached.config.to_dict() == fresh.config.to_dict() and cached.name_or_path == fresh.name_or_path
    assert getattr(cached, "generation_config", None) == getattr(fresh, "generation_config", None)
    assert type(cached) is type(fresh) and cached.training == fresh.training
    assert not _storages(cached) & _storages(before)
    assert data_cache.tokenizer_fingerprint(tokenizer) == data_cache.tokenizer_fingerprint(fresh_tokenizer)
    assert tokenizer is not base_cache.load(path, objective, 2, dtype=dtype)[1]  # each load its own copy

    torch.manual_seed(124)  # another seed: another head, as from a fresh load
    other, _ = base_cache.load(path, objective, 2, dtype=dtype)
    torch.manual_seed(124)
    assert _same_state(other, load_model(path, objective, 2, dtype=dtype)[0])
    assert _same_state(other, cached) is not drawn


@pytest.mark.parametrize("change,cached", [
    ({}, True),
    ({"dtype": torch.bfloat16}, False),
    ({"task_type": "QUESTION_ANS"}, False),
    ({"quantization_config": object()}, False),
    ({"trust_remote_code": True}, False),
])
def test_what_makes_two_base_loads_the_same(tiny_bert_dir, change, cached):
    key = dict(name=tiny_bert_dir, task_type="SEQ_CLS", num_labels=2, trust_remote_code=False, dtype=torch.float32,
               quantization_config=None)
    first = base_cache.base_key(**key)
    second = base_cache.base_key(**{**key, **change})
    assert (second == first) is cached


def test_another_base_replaces_the_cached_one(tiny_bert_dir, tiny_llama_dir):
    base_cache.load(tiny_bert_dir, "SEQ_CLS", 2)
    base_cache.load(tiny_llama_dir, "CAUSAL_LM", 0)
    assert base_cache.cached_path() == tiny_llama_dir
    base_cache.set_mode("off")
    assert base_cache.cached_path() is None
    base_cache.load(tiny_bert_dir, "SEQ_CLS", 2)
    assert base_cache.cached_path() is None


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


@pytest.mark.parametrize("mode", ["map", "copy"])
def test_a_run_is_bit_identical_with_and_without_reuse(mode, tiny_encoder_dir, tiny_sst2_dir, tmp_path, spies):
    """The same run with a fresh load and tokenization, and after another run (another seed,
    so another randomly initialised classifier head) filled the caches: the same evaluation,
    the same adapter and head, bit for bit; the second run loaded no tokenizer and tokenized
    nothing."""
    def config(seed):
        return build_config(overrides={"model": tiny_encoder_dir, "data_dir": tiny_sst2_dir,
                                       "output_dir": str(tmp_path), "seed": seed, **FAST})

    base_cache.set_mode("off")
    data_cache.set_enabled(False)
    fresh = run_experiment(config(0), tmp_path / "fresh", "fresh")
    base_cache.set_mode(mode)
    data_cache.set_enabled(True)
    run_experiment(config(1), tmp_path / "warm", "warm")
    spies.update(tokenizer=0, tokenize=0)
    reused = run_experiment(config(0), tmp_path / "reused", "reused")

    assert spies == {"tokenizer": 0, "tokenize": 0}
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
