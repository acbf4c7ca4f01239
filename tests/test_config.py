"""Config loading, overrides, validation errors, expansion into runs, and every shipped YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from loraexp.config.load import ExperimentConfig, build_config, load_config, parse_set_overrides
from loraexp.errors import ConfigError
from loraexp.results.naming import format_lr, run_name, sweep_name
from loraexp.sweep.expand import expand

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("overrides,fragment", [
    ({"lora.r": 0}, "`lora.r` must be a positive int, got 0"),
    ({"lora.r": -4}, "`lora.r` must be a positive int, got -4"),
    ({"lora.lora_alpha": 0}, "`lora.lora_alpha` must be a number > 0, got 0"),
    ({"lora.lora_dropout": 1.0}, "`lora.lora_dropout` must be in [0, 1), got 1.0"),
    ({"lora.target_modules": "everything"}, "preset 'everything' is unknown"),
    ({"lora.rank": 8}, "unknown key `lora.rank`"),
    ({"training.learning_rate": -1e-4}, "`training.learning_rate` must be a number > 0"),
    ({"training.max_steps": 0}, "`training.max_steps` must be a positive int"),
    ({"training.lerning_rate": 1e-4}, "unknown key `training.lerning_rate`"),
    ({"training.output_dir": "x"}, "`training.output_dir` is set by loraexp"),
    ({"task": "cola"}, "`task` 'cola' is unknown; allowed: gsm8k, lima, mrpc, rte, shakespeare, squad_v2, sst2"),
    ({"seed": "abc"}, "`seed` must be of type int, got 'abc'"),
    ({"max_train_samples": 0}, "`max_train_samples` must be a positive int or null"),
    ({"tracking.wandb": "cloud"}, "`tracking.wandb` must be one of online, offline, disabled, got 'cloud'"),
    ({"tracking.colour": "red"}, "unknown key `tracking.colour`; allowed keys: wandb, project"),
    ({"sweep.mode": "ablation"},
     "`sweep.ablation_type` must be one of rank, alpha, modules, quantization, method, grid"),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid"}, "`sweep.grid` must map at least one"),
    ({"learning_rate": 1e-4}, "unknown key `learning_rate`; allowed keys: task, model"),
])
def test_bad_values_name_field_value_and_allowed(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=overrides)
    assert fragment in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        build_config({"lora": {"r": 0, "lora_dropout": 2}, "task": "cola", "bogus": 1})
    problems = err.value.problems
    assert len(problems) == 4
    assert [p.split("`")[1] for p in problems] == ["bogus", "task", "lora.r", "lora.lora_dropout"]
    assert str(err.value).startswith("4 problems in the config")


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 3e-4\n")
    assert load_config(path).training["learning_rate"] == 3e-4


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: sst2\nlora:\n  r: [8\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*not valid YAML at line"):
        load_config(path)


def test_precedence_defaults_yaml_flags_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nlora:\n  r: 4\n")
    cfg = load_config(path, cli={"seed": 7, "model": None}, overrides=parse_set_overrides(["lora.r=32"]))
    assert (cfg.seed, cfg.lora["r"], cfg.lora["lora_alpha"], cfg.model) == (7, 32, 16, "minilm")


def test_set_parses_yaml_values():
    assert parse_set_overrides(["lora.target_modules=[query,key]", "training.learning_rate=1e-3", "x=",
                                "sweep.grid={lora.r: [4, 8]}"]) == {
        "lora.target_modules": ["query", "key"], "training.learning_rate": 1e-3, "x": None,
        "sweep.grid": {"lora.r": [4, 8]}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_overrides(["lora.r"])
    with pytest.raises(ConfigError, match=r"`--set lora.target_modules` value '\[query' is not valid YAML"):
        parse_set_overrides(["lora.target_modules=[query"])


def test_yaml_duplicate_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: sst2\nlora:\n  r: 4\n  r: 8\n")
    with pytest.raises(ConfigError, match=r"c.yaml' is not valid YAML at line 4, column 3: found duplicate key r"):
        load_config(path)


def test_a_mapping_merges_into_the_defaults_and_a_later_grid_replaces_an_earlier_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora: {r: 4}\nsweep: {grid: {lora.r: [4, 8], seed: [1, 2]}}\n")
    cfg = load_config(path, overrides=parse_set_overrides(["sweep.grid={lora.lora_dropout: [0.0, 0.1]}"]))
    assert cfg.lora == {**ExperimentConfig().lora, "r": 4}
    assert cfg.sweep.grid == {"lora.lora_dropout": [0.0, 0.1]}


def test_wrong_types_name_the_expected_type():
    with pytest.raises(ConfigError) as err:
        build_config(overrides={"sweep.ranks": ["four"], "max_train_samples": "many", "export_merged": "maybe",
                                "lora": 5})
    assert sorted(err.value.problems) == sorted([
        "`max_train_samples` must be of type int or null, got 'many'",
        "`export_merged` must be of type bool, got 'maybe'",
        "`sweep.ranks` must be of type list of int, got ['four']",
        "`lora` must be of type mapping, got 5"])


@pytest.mark.parametrize("keys, fields", [
    ("COMMON_LORA_KEYS", lambda: {f.name for f in dataclasses.fields(__import__("peft").LoraConfig)}),
    ("COMMON_TRAINING_KEYS",
     lambda: {f.name for f in dataclasses.fields(__import__("transformers").TrainingArguments)}),
])
def test_the_cheap_key_lists_are_fields_of_peft_and_transformers(keys, fields):
    from loraexp.config import checks as validation

    assert getattr(validation, keys) <= fields()


def test_the_lora_alpha_2r_rule_and_default_ranks_live_once():
    from loraexp.config.schema import DEFAULT_LORA, SweepConfig, lora_alpha_for_rank
    from loraexp.sweep import axes as variants

    assert DEFAULT_LORA["lora_alpha"] == lora_alpha_for_rank(DEFAULT_LORA["r"]) == 16
    assert list(variants.DEFAULT_RANKS) == SweepConfig().ranks
    assert variants.rank_axis([4]) == [{"r": 4, "lora_alpha": lora_alpha_for_rank(4)}]


def test_data_dir_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LORAEXP_DATA_DIR", "/data/here")
    assert ExperimentConfig().resolved_data_dir() == "/data/here"
    assert ExperimentConfig(data_dir="/explicit").resolved_data_dir() == "/explicit"


@pytest.mark.parametrize("cli,run_id", [
    ({}, "37a87b53fe"),                                      # the default: MiniLM on SST-2
    ({"task": "mrpc", "model": "smollm2-135m"}, "33c7b6bb8b"),
])
def test_run_ids_stay_those_of_earlier_versions(cli, run_id):
    """A new config field that is unset must not change existing run ids (a rerun of a sweep
    would not find its finished runs): ids computed with loraexp at fc2595f."""
    from loraexp.config.load import load_config

    assert load_config(cli=cli).run_id == run_id


@pytest.mark.parametrize("overrides", [
    {"verification.latency_repeats": 0},   # the default since latency timing is opt-in
    {"verification.latency_repeats": 1},   # the default the pinned ids were made with
    {"verification.latency_repeats": 5},
    {"verification.merge_eval_batches": 1},
    {"verification.merge_eval_batches": 8, "verification.latency_repeats": 3},
])
def test_what_a_check_costs_is_not_part_of_the_run_id(overrides):
    """How many batches the post-training checks compare on and whether latency is timed do
    not change what a run trains: the run id stays (a finished run is not redone for them)."""
    assert build_config(overrides=overrides).run_id == build_config().run_id


def test_run_id_ignores_output_and_logging_only():
    base = build_config()
    assert build_config(overrides={"output_dir": "elsewhere", "tracking.wandb": "offline"}).run_id == base.run_id
    assert build_config(overrides={"lora.r": 4}).run_id != base.run_id
    assert build_config(overrides={"seed": 1}).run_id != base.run_id


@pytest.mark.parametrize("overrides,count,names", [
    ({}, 1, ["sst2-minilm-r8-a16-standard-lr2e-3-s42"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "rank"}, 3,
     ["sst2-minilm-r4-a8-standard-lr2e-3-s42", "sst2-minilm-r8-a16-standard-lr2e-3-s42",
      "sst2-minilm-r16-a32-standard-lr2e-3-s42"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "alpha"}, 3,
     ["sst2-minilm-r8-a8-standard-lr2e-3-s42", "sst2-minilm-r8-a16-standard-lr2e-3-s42",
      "sst2-minilm-r8-a32-standard-lr2e-3-s42"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "modules"}, 5, None),
    ({"sweep.mode": "sweep"}, 6, None),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid",
      "sweep.grid": {"lora.r": [4, 8], "lora.lora_dropout": [0.0, 0.1]}}, 4, None),
])
def test_expansion(overrides, count, names):
    cfg = build_config(overrides=overrides)
    runs = expand(cfg)
    assert len(runs) == count
    assert len({n for n, _ in runs}) == count and len({c.run_id for _, c in runs}) == count
    assert all(c.sweep.mode == "single" and c.sweep.name == sweep_name(cfg) for _, c in runs)
    if names:
        assert [n for n, _ in runs] == names
    assert [n for n, _ in expand(cfg)] == [n for n, _ in runs]  # stable


def test_sweep_mode_is_learning_rates_times_seeds_with_warmup_ratio():
    runs = expand(build_config(overrides={"sweep.mode": "sweep"}))
    pairs = [(c.training["learning_rate"], c.seed) for _, c in runs]
    assert pairs == [(1e-4, 42), (1e-4, 1337), (1e-4, 2024), (3e-4, 42), (3e-4, 1337), (3e-4, 2024)]
    assert all(c.training["warmup_steps"] == 0.06 for _, c in runs)


def test_grid_collisions_get_the_run_id():
    cfg = build_config(overrides={"sweep.mode": "ablation", "sweep.ablation_type": "grid",
                                  "sweep.grid": {"lora.lora_dropout": [0.0, 0.1]}})
    (n1, c1), (n2, c2) = expand(cfg)
    assert n1.endswith(c1.run_id) and n2.endswith(c2.run_id)


@pytest.mark.parametrize("lr,text", [(3e-4, "3e-4"), (1e-3, "1e-3"), (1.5e-4, "1.5e-4"), (2e-5, "2e-5")])
def test_format_lr(lr, text):
    assert format_lr(lr) == text


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_validates_and_expands(path):
    cfg = load_config(path)
    assert isinstance(yaml.safe_load(path.read_text()), dict)
    runs = expand(cfg)
    assert runs and all(run_name(c) in n for n, c in runs)


@pytest.mark.parametrize("layer, message", [
    ({"quantization": {"method": "nf3"}}, "`quantization.method` must be one of none, nf4, fp4, int8, got 'nf3'"),
    ({"quantization": {"method": "int8", "double_quant": True}}, "`quantization.double_quant` applies to nf4/fp4"),
    ({"quantization": {"compute_dtype": "float64"}}, "`quantization.compute_dtype` must be one of"),
    ({"model_dtype": "int4"}, "`model_dtype` must be one of auto, float32, bfloat16, float16, got 'int4'"),
    ({"evaluation": {"generation_samples": 0}}, "`evaluation.generation_samples` must be a positive int"),
    ({"sweep": {"quantizations": ["nf4", "nf2"]}}, "`sweep.quantizations` must list values from"),
    ({"verification": {"merge_space": "bits"}}, "`verification.merge_space` must be one of auto, logits, probs"),
    ({"verification": {"latency_repeats": -1}}, "`verification.latency_repeats` must be 0 (latency not measured) or "
                                                "a positive int, got -1"),
    ({"verification": {"merge_eval_batches": 0}}, "`verification.merge_eval_batches` must be a positive int, got 0"),
])
def test_quantization_and_evaluation_fields_are_validated(layer, message):
    with pytest.raises(ConfigError) as err:
        build_config(layer)
    assert message in str(err.value)


@pytest.mark.parametrize("quantization, label", [
    ({"method": "none"}, "-attention-lr"),
    ({"method": "nf4"}, "-attention-nf4-lr"),
    ({"method": "nf4", "double_quant": True}, "-attention-nf4dq-lr"),
    ({"method": "int8"}, "-attention-int8-lr"),
])
def test_run_name_shows_the_quantization(quantization, label):
    cfg = build_config({"lora": {"target_modules": "attention"}, "quantization": quantization})
    assert label in run_name(cfg)


def test_a_sweep_point_replaces_a_mapping_instead_of_merging_into_it():
    base = build_config({"lora": {"rank_pattern": {"query": 4}}},
                        overrides={"sweep.mode": "ablation", "sweep.ablation_type": "grid",
                                   "sweep.grid": {"lora.rank_pattern": [{"value": 16}, {}]}})
    assert [c.lora["rank_pattern"] for _, c in expand(base)] == [{"value": 16}, {}]


def test_the_same_point_of_two_ablations_is_the_same_run():
    def ids(kind):
        return {n: c.run_id for n, c in expand(build_config(overrides={"sweep.mode": "ablation",
                                                                       "sweep.ablation_type": kind}))}

    name = "sst2-minilm-r8-a16-standard-lr2e-3-s42"
    assert ids("alpha")[name] == ids("rank")[name]  # lora_alpha 16 stays an int in the alpha ablation


@pytest.mark.parametrize("text, fragment", [
    ("42\n", "must hold a mapping of settings, got int"),
    ("hello\n", "must hold a mapping of settings, got str"),
    ("data_dir: ${oc.env:HOME}\n", "`data_dir` value '${oc.env:HOME}' is not allowed"),
    ("sweep: {grid: {lora.r: 4}, mode: ablation, ablation_type: grid}\n", "`sweep.grid.lora.r` must be a non-empty"),
])
def test_hostile_yaml_files_give_one_config_error(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
