"""Variants and target-module presets, table-driven over architectures built from tiny configs."""

from __future__ import annotations

import re

import pytest
from peft import get_peft_model

from loraexp.analysis.adapter_stats import lora_layers, short_module_name
from loraexp.errors import ConfigError
from loraexp.model.load import attach_lora
from loraexp.model.target_modules import PRESET_NAMES, lora_config, resolve_target_modules
from loraexp.sweep import axes as variants
from tests.conftest import tiny_classifier

B = "bert.encoder.layer.*."
L = "model.layers.*."
G = "transformer.h.*."
EXPECTED = {  # (architecture, preset) -> adapted modules, layer index collapsed to *
    ("bert", "minimal"): {B + "attention.self.query"},
    ("bert", "standard"): {B + "attention.self.query", B + "attention.self.value"},
    ("bert", "attention"): {B + "attention.self.query", B + "attention.self.key", B + "attention.self.value",
                            B + "attention.output.dense"},
    ("bert", "mlp"): {B + "intermediate.dense", B + "output.dense"},
    ("bert", "all-linear"): {B + "attention.self.query", B + "attention.self.key", B + "attention.self.value",
                             B + "attention.output.dense", B + "intermediate.dense", B + "output.dense",
                             "bert.pooler.dense"},
    ("llama", "minimal"): {L + "self_attn.q_proj"},
    ("llama", "standard"): {L + "self_attn.q_proj", L + "self_attn.v_proj"},
    ("llama", "attention"): {L + f"self_attn.{p}_proj" for p in "qkvo"},
    ("llama", "mlp"): {L + f"mlp.{p}_proj" for p in ("gate", "up", "down")},
    ("llama", "all-linear"): {L + f"self_attn.{p}_proj" for p in "qkvo"}
    | {L + f"mlp.{p}_proj" for p in ("gate", "up", "down")},
    ("gpt2", "minimal"): {G + "attn.c_attn"},
    ("gpt2", "standard"): {G + "attn.c_attn"},
    ("gpt2", "attention"): {G + "attn.c_attn", G + "attn.c_proj"},
    ("gpt2", "mlp"): {G + "mlp.c_fc", G + "mlp.c_proj"},
    ("gpt2", "all-linear"): {G + "attn.c_attn", G + "attn.c_proj", G + "mlp.c_fc", G + "mlp.c_proj"},
}


def adapted(model) -> set[str]:
    return {re.sub(r"\.\d+\.", ".*.", short_module_name(n)) for n in lora_layers(model)}


@pytest.mark.parametrize("arch,preset", sorted(EXPECTED))
def test_preset_adapts_expected_modules(arch, preset):
    model, config = attach_lora(tiny_classifier(arch), {"r": 2, "lora_alpha": 4, "target_modules": preset})
    assert adapted(model) == EXPECTED[(arch, preset)]
    # the classification head is trained in full through modules_to_save, not adapted
    assert not any("classifier" in n or "score" in n for n in lora_layers(model))
    assert any(".modules_to_save." in n and p.requires_grad for n, p in model.named_parameters())


@pytest.mark.parametrize("arch,names,expected", [
    ("bert", ["query", "key"], {B + "attention.self.query", B + "attention.self.key"}),
    ("llama", ["o_proj"], {L + "self_attn.o_proj"}),
    ("gpt2", ["c_fc"], {G + "mlp.c_fc"}),
])
def test_explicit_module_lists_are_accepted(arch, names, expected):
    model, _ = attach_lora(tiny_classifier(arch), {"r": 2, "target_modules": names})
    assert adapted(model) == expected


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_unknown_target_module_lists_linear_modules(arch):
    with pytest.raises(ConfigError) as err:
        attach_lora(tiny_classifier(arch), {"r": 2, "target_modules": ["no_such_proj"]})
    message = str(err.value)
    assert "`lora.target_modules`" in message and "no_such_proj" in message
    assert {"bert": "attention.self.query", "llama": "self_attn.q_proj", "gpt2": "attn.c_attn"}[arch] in message


@pytest.mark.parametrize("axis,expected", [
    (variants.rank_axis(), [(4, 8), (8, 16), (16, 32)]),
    (variants.rank_axis((2, 64)), [(2, 4), (64, 128)]),
    (variants.alpha_axis(), [(8, 8), (8, 16), (8, 32)]),
    (variants.alpha_axis((1, 2), r=4), [(4, 1), (4, 2)]),
])
def test_rank_and_alpha_axes_build_peft_configs(axis, expected):
    base = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "standard"}
    configs = [lora_config({**base, **point}, "bert") for point in axis]
    assert [(c.r, c.lora_alpha) for c in configs] == expected
    assert all(c.lora_dropout == 0.05 and c.target_modules == {"query", "value"} for c in configs)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_module_axis_yields_one_config_per_preset_that_peft_accepts(arch):
    model_type = tiny_classifier(arch).config.model_type
    configs = [lora_config({"r": 2, **point}, model_type, task_type="SEQ_CLS") for point in variants.module_axis()]
    assert len(configs) == len(PRESET_NAMES)
    for config, preset in zip(configs, PRESET_NAMES):
        model = get_peft_model(tiny_classifier(arch), config)
        assert adapted(model) == EXPECTED[(arch, preset)]


@pytest.mark.parametrize("lora,match", [
    ({"r": 4, "no_such_field": 1}, "`lora` was rejected by peft.LoraConfig"),
    ({"r": 4, "layers_pattern": "layers"}, "`lora` was rejected by peft.LoraConfig"),
    ({"r": 4, "target_modules": "everything"}, "'everything' is unknown"),
])
def test_lora_config_reports_bad_fields_as_config_errors(lora, match):
    with pytest.raises(ConfigError, match=match):
        lora_config(lora, "bert")


def test_resolve_unknown_architecture_and_preset():
    with pytest.raises(ConfigError, match="model_type 't5'"):
        resolve_target_modules("standard", "t5")
    with pytest.raises(ConfigError, match="'everything' is unknown"):
        resolve_target_modules("everything", "bert")
    assert resolve_target_modules(["value", "query"], "t5") == ["query", "value"]
    assert resolve_target_modules("all-linear", "t5") == "all-linear"
