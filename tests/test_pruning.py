"""Successive halving over sweeps (loraexp.sweep.pruning): rungs, decisions through Optuna's pruners,
``paused``/``pruned`` records, bit-identical survivors, replay on rerun, continuing pruned runs
without a pruner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_sst2
from safetensors.torch import load_file

from loraexp.config.load import build_config
from loraexp.results.record import STATUS_COMPLETED, STATUS_PRUNED
from loraexp.sweep.pruning import make_pruner, rung_steps
from loraexp.sweep.runner import run_sweep

pytest.importorskip("optuna")


@pytest.mark.parametrize(("max_steps", "eta", "min_resource", "expected"), [
    (100, 3, None, [11, 33, 100]),
    (90, 3, None, [10, 30, 90]),
    (12, 2, 3, [3, 6, 12]),
    (10, 3, 5, [5, 10]),
    (9, 3, 1, [1, 3, 9]),
    (8, 2, None, [2, 4, 8]),
])
def test_rung_steps(max_steps, eta, min_resource, expected):
    assert rung_steps(max_steps, eta, min_resource) == expected


@pytest.mark.parametrize(("pruner", "cls"), [("successive-halving", "SuccessiveHalvingPruner"),
                                             ("hyperband", "HyperbandPruner")])
def test_the_pruner_gets_the_rungs_of_the_config(pruner, cls):
    cfg = build_config(overrides={"sweep.pruner": pruner, "training.max_steps": 90, "sweep.reduction_factor": 3})
    made = make_pruner(cfg)
    assert type(made).__name__ == cls
    if pruner == "hyperband":
        assert (made._min_resource, made._max_resource, made._reduction_factor) == (10, 90, 3)
    else:
        assert (made._min_resource, made._reduction_factor, made._min_early_stopping_rate) == (10, 3, 0)


def grid(tiny_bert_dir: str, root: Path, **extra) -> dict:
    """A 2 x 3 grid (r x learning rate) on the tiny BERT, rungs at 1, 3 and 9 optimizer steps,
    compared on eval loss (continuous: no ties on 32 dev rows)."""
    return {"model": tiny_bert_dir, "data_dir": write_tiny_sst2(root), "output_dir": str(root / "out"),
            "training.max_steps": 9, "training.per_device_train_batch_size": 8, "training.logging_steps": 1,
            "sweep.mode": "ablation", "sweep.ablation_type": "grid", "sweep.name": "g",
            "sweep.grid": {"lora.r": [2, 4], "training.learning_rate": [1e-4, 3e-2, 3e-1]},
            "sweep.metric": "loss", "sweep.pruner": "successive-halving", "sweep.min_resource": 1,
            "tracking.wandb": "disabled", **extra}


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))}


@pytest.fixture(scope="module")
def pruned_sweep(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("pruned")
    cfg = build_config(overrides=grid(tiny_bert_dir, root))
    return cfg, run_sweep(cfg, progress=False)


def test_a_pruned_grid_stops_configurations_at_rungs_and_records_why(pruned_sweep):
    cfg, result = pruned_sweep
    runs = records(result.sweep_dir)
    assert len(runs) == 6 and result.all_completed
    pruned = {n: r for n, r in runs.items() if r["status"] == STATUS_PRUNED}
    completed = {n: r for n, r in runs.items() if r["status"] == STATUS_COMPLETED}
    assert pruned and completed and len(pruned) + len(completed) == 6
    for record in pruned.values():
        p = record["pruning"]
        assert p["step"] in (1, 3) and record["completion"]["trained_steps"] == p["step"]
        assert p["metric"] == "loss" and p["value"] == record["rungs"][-1]["eval"]["loss"]
        assert p["configuration_value"] == p["value"]  # one seed: the configuration's value is the run's
        assert not record["verification"]["merge"].get("passed")  # not verified as if finished
        assert not (result.sweep_dir / record["run_name"] / "adapter").exists()
    for record in completed.values():
        assert [r["step"] for r in record["rungs"]] == [1, 3]
        assert record["completion"]["trained_steps"] == 9 and record["verification"]["passed"]
    used = sum(r["completion"]["trained_steps"] for r in runs.values())
    summary = (result.sweep_dir / "summary.md").read_text()
    assert "## Pruning" in summary and f"optimizer steps trained: {used} of 54" in summary
    assert used < 54


def test_a_configuration_that_survives_every_rung_matches_the_unpruned_run(pruned_sweep, tiny_bert_dir, tmp_path):
    """Stopping at rungs and continuing from the rung checkpoints trains exactly what an
    uninterrupted run trains (same adapter tensors, same eval loss)."""
    cfg, result = pruned_sweep
    name, survivor = next((n, r) for n, r in records(result.sweep_dir).items() if r["status"] == STATUS_COMPLETED)
    lora, lr = survivor["config"]["lora"], survivor["config"]["training"]["learning_rate"]
    plain = build_config(overrides={**grid(tiny_bert_dir, tmp_path), "sweep.pruner": "none", "sweep.mode": "single",
                                    "sweep.ablation_type": None, "sweep.grid": {}, "lora.r": lora["r"],
                                    "training.learning_rate": lr})
    (run,) = run_sweep(plain, progress=False).runs
    assert run.status == STATUS_COMPLETED and run.record.run_id == survivor["run_id"]
    assert run.record.eval["loss"] == survivor["eval"]["loss"]
    a = load_file(str(result.sweep_dir / name / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerunning_a_pruned_sweep_replays_it_without_training(pruned_sweep):
    cfg, result = pruned_sweep
    before = {p: p.stat().st_mtime_ns for p in result.sweep_dir.glob("*/metrics.json")}
    statuses = {n: r["status"] for n, r in records(result.sweep_dir).items()}
    again = run_sweep(cfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in result.sweep_dir.glob("*/metrics.json")} == before
    assert {r.run_name: r.record.status for r in again.runs} == statuses


def test_without_a_pruner_pruned_runs_continue_from_their_rung_checkpoint(tiny_bert_dir, tmp_path):
    overrides = grid(tiny_bert_dir, tmp_path)
    first = run_sweep(build_config(overrides=overrides), progress=False)
    pruned = [r.run_name for r in first.runs if r.record.status == STATUS_PRUNED]
    assert pruned
    full = run_sweep(build_config(overrides={**overrides, "sweep.pruner": "none"}), progress=False)
    runs = records(full.sweep_dir)
    assert all(r["status"] == STATUS_COMPLETED for r in runs.values())
    for name in pruned:
        assert runs[name]["resumed_from"] and runs[name]["completion"]["trained_steps"] == 9


def test_with_seeds_a_configuration_is_judged_on_its_mean_and_pruned_as_a_whole(tiny_bert_dir, tmp_path):
    cfg = build_config(overrides=grid(tiny_bert_dir, tmp_path, **{
        "sweep.grid": {"training.learning_rate": [3e-3, 3e-1, 3e-2, 1e-1]}, "sweep.seeds": [1, 2]}))
    result = run_sweep(cfg, progress=False)
    runs = records(result.sweep_dir)
    assert len(runs) == 8 and result.all_completed
    assert any(r["status"] == STATUS_PRUNED for r in runs.values())
    by_configuration: dict[float, list[dict]] = {}
    for record in runs.values():
        by_configuration.setdefault(record["config"]["training"]["learning_rate"], []).append(record)
    for members in by_configuration.values():
        assert len({r["status"] for r in members}) == 1  # both seeds share the decision
        if members[0]["status"] == STATUS_PRUNED:
            values = [r["pruning"]["value"] for r in members]
            assert all(math.isclose(r["pruning"]["configuration_value"], sum(values) / 2) for r in members)


@pytest.mark.parametrize(("pruner", "early_terminate"), [
    ("none", None), ("successive-halving", {"type": "hyperband", "min_iter": 1, "eta": 3}),
    ("hyperband", {"type": "hyperband", "min_iter": 1, "eta": 3})])
def test_the_wandb_export_stops_early_on_the_rungs(tmp_path, pruner, early_terminate):
    """W&B's hyperband counts iterations as the times the metric was logged: evaluating every
    first-rung steps makes its brackets 1, eta, eta**2 loraexp's rungs."""
    import yaml

    from loraexp.sweep.wandb_sweep import export_wandb_sweep

    cfg = build_config(overrides={"sweep.mode": "sweep", "sweep.learning_rates": [1e-4, 3e-4], "sweep.seeds": [1],
                                  "training.max_steps": 90, "sweep.pruner": pruner})
    spec_path, base_path = export_wandb_sweep(cfg, tmp_path / "sweep.yaml")
    spec, base = yaml.safe_load(spec_path.read_text()), yaml.safe_load(base_path.read_text())
    assert spec.get("early_terminate") == early_terminate
    if early_terminate:
        assert (base["training"]["eval_strategy"], base["training"]["eval_steps"]) == ("steps", 10)
    else:
        assert "eval_steps" not in base["training"]


def test_a_shared_optuna_study_prunes_configurations(tiny_bert_dir, tmp_path):
    """The optuna backend over a journal file: trials are configurations, pruned ones are
    PRUNED trials whose runs are recorded ``pruned``."""
    import optuna

    from loraexp.sweep.optuna_backend import make_storage, run_optuna

    journal = tmp_path / "study.journal"
    cfg = build_config(overrides=grid(tiny_bert_dir, tmp_path, **{"sweep.backend": "optuna",
                                                                   "sweep.storage": str(journal)}))
    result = run_optuna(cfg)
    study = optuna.load_study(study_name="g", storage=make_storage(str(journal)))
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.PRUNED in states
    runs = records(result.sweep_dir)
    pruned_trials = {t.user_attrs["runs"][0] for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned_trials == {n for n, r in runs.items() if r["status"] == STATUS_PRUNED}
    assert "## Pruning" in (result.sweep_dir / "summary.md").read_text()


def test_the_report_shows_what_was_pruned_when(pruned_sweep):
    from loraexp.report.build import write_report

    _, result = pruned_sweep
    report = write_report(result.sweep_dir).markdown_path.read_text()
    assert "pruned" in report.split("\n\n")[1]  # the header line counts the statuses
    section = report.split("## Pruning")[1]
    pruned = [r for r in records(result.sweep_dir).values() if r["status"] == STATUS_PRUNED]
    for record in pruned:
        assert f"| {record['run_name']} | successive-halving | {record['pruning']['rung']} | " in section
