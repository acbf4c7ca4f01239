"""Pre-flight checks that are not a bad-input row (tests/test_bad_input.py holds those): the
warning of a full-rank adapter, W&B credentials found where the installed wandb looks, the
shapes PEFT adapts (GPT-2's Conv1D), RoBERTa's position offset, sharded weights, and data
files read whole (docs/reliability.md, "Bad input")."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from loraexp.config.load import build_config, load_config
from loraexp.errors import ConfigError, DataError, ModelError
from loraexp.model.load import check_model_dir
from loraexp.sweep.expand import expand
from loraexp.sweep.preflight import _check_lora, _check_max_seq_length, _check_wandb_login, _skeleton, preflight
from loraexp.tasks import FORMS
from loraexp.tasks.base import read_text
from tests.conftest import tiny_gpt2_config
from tests.test_bad_input import fresh_wandb_session

KEY = "a" * 40


def _runs(model: str, data: str, out: Path, **overrides):
    cfg = load_config(cli={"task": "sst2", "model": model, "data_dir": data, "output_dir": str(out)},
                      overrides=overrides)
    return expand(cfg)


@pytest.mark.parametrize("overrides, warned", [
    ({"lora.r": 16}, "`lora.r` 16 equals the smaller dimension of the targeted layers "
                     "bert.encoder.layer.*.attention.self.query"),
    ({"lora.rank_pattern": {"value": 16}}, "`lora.rank_pattern` entry 'value' 16 equals the smaller dimension"),
    ({"lora.r": 8}, None),
])
def test_a_rank_equal_to_a_layer_dimension_is_a_warning_not_an_error(tiny_bert_dir, tiny_sst2_dir, tmp_path, caplog,
                                                                       overrides, warned):
    with caplog.at_level(logging.WARNING, logger="loraexp.sweep.preflight"):
        preflight(_runs(tiny_bert_dir, tiny_sst2_dir, tmp_path / "out", **overrides), tmp_path / "out" / "sweep")
    messages = [r.getMessage() for r in caplog.records if r.name == "loraexp.sweep.preflight"]
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warned in messages[0], messages
        assert "(16 in, 16 out)" in messages[0] and "not low-rank" in messages[0]
    assert not (tmp_path / "out").exists()  # preflight writes nothing


def test_the_shapes_are_those_peft_adapts_conv1d_included():
    """GPT-2's c_attn is a Conv1D with weight (in, out) = (16, 48): the bound is 16, not 48."""
    skeleton = _skeleton(tiny_gpt2_config(), "SEQ_CLS", 2)
    cfg = build_config(overrides={"lora.r": 17, "lora.target_modules": "standard"})
    with pytest.raises(ConfigError, match=r"`lora.r` must be at most 16, .*transformer.h.\*.attn.c_attn "
                                          r"\(16 in, 48 out\).*got 17"):
        _check_lora(cfg, skeleton, tiny_gpt2_config(), "SEQ_CLS")
    _check_lora(build_config(overrides={"lora.r": 8, "lora.target_modules": "standard"}), skeleton,
                tiny_gpt2_config(), "SEQ_CLS")


def test_layers_to_transform_in_range_keeps_the_layers_it_names():
    skeleton = _skeleton(tiny_gpt2_config(), "SEQ_CLS", 2)
    _check_lora(build_config(overrides={"lora.layers_to_transform": [1], "lora.target_modules": ["c_attn"]}),
                skeleton, tiny_gpt2_config(), "SEQ_CLS")
    with pytest.raises(ConfigError, match=r"must name layers from 0 to 1 \(the model has 2, num_hidden_layers\), "
                                          r"got 2"):
        _check_lora(build_config(overrides={"lora.layers_to_transform": 2, "lora.target_modules": ["c_attn"]}),
                    skeleton, tiny_gpt2_config(), "SEQ_CLS")


def test_roberta_loses_its_padding_offset_of_positions():
    from transformers import RobertaConfig

    config = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    _check_max_seq_length(build_config(overrides={"max_seq_length": 512}), config)
    with pytest.raises(ConfigError, match=r"`max_seq_length` must be at most 512, the model's max_position_embeddings "
                                          r"\(514\) less the 2 positions of roberta's padding offset.*got 513"):
        _check_max_seq_length(build_config(overrides={"max_seq_length": 513}), config)


def _netrc(tmp_path: Path, machine: str) -> str:
    path = tmp_path / "netrc"
    path.write_text(f"machine {machine}\n  login user\n  password {KEY}\n")
    return str(path)


@pytest.mark.parametrize("env, machine, found", [
    ({}, "api.forge.coreweave.com", True),  # wandb 0.31's default server
    ({}, "api.wandb.ai", True),  # the W&B host behind it (what older wandb login wrote)
    ({}, "example.org", False),
    ({"WANDB_BASE_URL": "http://localhost:8080"}, "localhost:8080", True),  # the netloc, port included
    ({"WANDB_BASE_URL": "http://localhost:8080"}, "localhost", False),
    ({"WANDB_BASE_URL": "https://wandb.example.com"}, "wandb.example.com", True),
    ({"WANDB_BASE_URL": "https://wandb.example.com"}, "api.wandb.ai", False),
    ({"settings": "http://localhost:8080"}, "localhost:8080", True),  # base_url in wandb's settings file
    ({"WANDB_API_KEY": KEY}, "example.org", True),
])
def test_wandb_credentials_are_looked_up_where_the_installed_wandb_looks(tmp_path, monkeypatch, env, machine, found):
    env = dict(env)
    settings = env.pop("settings", None)
    fresh_wandb_session(monkeypatch, tmp_path, NETRC=_netrc(tmp_path, machine), **env)
    if settings:
        (tmp_path / "wandb-config").mkdir()
        (tmp_path / "wandb-config" / "settings").write_text(f"[default]\nbase_url = {settings}\n")
    cfg = build_config(overrides={"tracking.wandb": "online"})
    if found:
        _check_wandb_login(cfg)
    else:
        with pytest.raises(ConfigError, match="`tracking.wandb` is 'online' but no W&B API key was found for "):
            _check_wandb_login(cfg)


def test_wandb_is_not_asked_unless_online(monkeypatch, tmp_path):
    fresh_wandb_session(monkeypatch, tmp_path, WANDB_MODE="offline")
    _check_wandb_login(build_config(overrides={"tracking.wandb": "online"}))  # WANDB_MODE=offline wins
    _check_wandb_login(build_config(overrides={"tracking.wandb": "disabled"}))


def test_labels_are_checked_in_the_whole_file_not_a_sample(tmp_path):
    root = tmp_path / "data" / "glue" / "sst2"
    root.mkdir(parents=True)
    rows = "".join(f"film {i}\t{i % 2}\n" for i in range(5000))
    (root / "train.tsv").write_text("sentence\tlabel\n" + rows + "\nthe last one\t-1\n")  # a blank line before it
    (root / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"train.tsv' line 5003 has label '-1'; allowed labels: 0, 1$"):
        FORMS["sst2"]["SEQ_CLS"].check_data(tmp_path / "data")


def test_mrpc_labels_are_read_past_its_byte_order_mark(tmp_path):
    root = tmp_path / "glue" / "mrpc"
    root.mkdir(parents=True)
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (root / "train.tsv").write_text("\ufeff" + header + "1\t1\t2\ta\tb\n0\t3\t4\tc\td\n", encoding="utf-8")
    (root / "dev.tsv").write_text("\ufeff" + header + "1\t1\t2\ta\tb\n3\t3\t4\tc\td\n", encoding="utf-8")
    mrpc = FORMS["mrpc"]["SEQ_CLS"]
    assert mrpc.load_split("train", tmp_path)["label"] == [1, 0]
    with pytest.raises(DataError, match=r"mrpc file .*dev.tsv' line 3 has label '3'; allowed labels: 0, 1"):
        mrpc.check_data(tmp_path)


def test_read_text_names_the_byte_offset_and_line(tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"first line\nsecond \xff line\n")
    with pytest.raises(DataError, match=r"^shakespeare file .* is not UTF-8 text \(byte 0xff at offset 18, line 2: "
                                        r"invalid start byte\); save it as UTF-8$"):
        read_text(path, "shakespeare")
    path.write_bytes("\ufeffbom".encode())
    assert read_text(path, "x", "utf-8-sig") == "bom"


@pytest.mark.parametrize("files, problem", [
    ({"model.safetensors": ""}, None),
    ({"pytorch_model.bin": ""}, None),
    ({"model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-1.safetensors"}}),
      "model-1.safetensors": ""}, None),
    ({"model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-1.safetensors",
                                                                 "b": "model-2.safetensors"}}),
      "model-1.safetensors": ""}, "names weight shards that are missing: model-2.safetensors"),
    ({"model.safetensors.index.json": "[]"}, "model.safetensors.index.json is not a weight index"),
    ({"tokenizer.json": "{}"}, "has a config.json but no weights"),
])
def test_a_local_model_directory_needs_its_weights(tmp_path, files, problem):
    (tmp_path / "config.json").write_text("{}")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if problem is None:
        check_model_dir(str(tmp_path))
    else:
        with pytest.raises(ModelError, match=problem):
            check_model_dir(str(tmp_path))
    check_model_dir("minilm")  # an alias: left alone
    check_model_dir("no-such-org/no-such-model")  # a Hub id: left alone
