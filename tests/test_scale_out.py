"""Scale-out on existing engines: the sweep as a parameter grid, a W&B grid sweep whose
trials run exactly as an agent calls them (no server), and Optuna workers sharing a study."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraexp.cli.trial import parse_overrides
from loraexp.config.load import build_config
from loraexp.sweep.expand import expand, overrides_for
from loraexp.sweep.grid import POINT, grid_parameters, overrides_from_params

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--set", "training.per_device_train_batch_size=8", "--set", "verification.latency_repeats=1",
            "--set", "training.learning_rate=1e-2", "--max-steps", "6"]


@pytest.mark.parametrize("sweep,params", [
    ({"sweep.mode": "single"}, [POINT]),
    ({"sweep.mode": "sweep"}, ["training.learning_rate", "seed"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "rank"}, [POINT]),  # r and lora_alpha = 2r are paired
    ({"sweep.mode": "ablation", "sweep.ablation_type": "modules"}, ["lora.target_modules"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid",
      "sweep.grid": {"lora.target_modules": [["query"], ["query", "key"]]}}, [POINT]),  # list values are not scalars
    ({"sweep.mode": "ablation", "sweep.ablation_type": "grid",
      "sweep.grid": {"lora.r": [4, 8], "training.learning_rate": [1e-4, 3e-4]}}, ["lora.r", "training.learning_rate"]),
    ({"sweep.mode": "ablation", "sweep.ablation_type": "quantization"}, [POINT]),
])
def test_grid_parameters_product_is_exactly_the_sweep(sweep, params):
    cfg = build_config(overrides=sweep)
    space = grid_parameters(cfg)
    assert list(space) == params
    combos = [overrides_from_params(dict(zip(space, c))) for c in itertools.product(*space.values())]
    key = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
    assert sorted(map(key, combos)) == sorted(map(key, overrides_for(cfg)))


@pytest.mark.parametrize("argv,expected", [
    (["--lora.r=8", "--training.learning_rate=0.0003"], {"lora.r": 8, "training.learning_rate": 3e-4}),
    (["--lora.target_modules=['query', 'value']"], {"lora.target_modules": ["query", "value"]}),
    (["--export_merged=True", "--max_eval_samples=None"], {"export_merged": True, "max_eval_samples": None}),
    (['--point={"lora.r": 4, "lora.lora_alpha": 8}'], {"lora.r": 4, "lora.lora_alpha": 8}),
])
def test_trial_arguments_parse_the_way_an_agent_formats_them(argv, expected):
    assert parse_overrides(argv) == expected


def _agent_command(spec: dict, values: dict) -> list[str]:
    """The command ``wandb agent`` runs for one grid combination: wandb's own formatting of
    the arguments, and the agent's substitution of ``${env}``, ``${interpreter}``,
    ``${program}`` and ``${args}`` (wandb_agent.py); the interpreter is this venv's python."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=[sys.executable], program=[spec["program"]], env=["/usr/bin/env"])
    command = []
    for part in create_sweep_command(spec["command"]):
        command += sweep_vars.get(part[2:-1], []) if part.startswith("${") and part.endswith("}") else [part]
    return command


def test_exported_wandb_sweep_runs_every_trial_through_loraexp(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    from wandb.sdk.launch.sweeps.utils import load_sweep_config

    out = tmp_path / "results"
    sweep_yaml = tmp_path / "sweep.yaml"
    export = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "sst2", "--model", tiny_bert_dir,
         "--data-dir", tiny_sst2_dir, "--output-dir", str(out), "--mode", "ablation", "--ablation-type", "rank",
         "--set", "sweep.ranks=[2,4]", *TINY_RUN, "--export-wandb-sweep", str(sweep_yaml)],
        capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    assert not out.exists()  # exported, nothing run

    spec = load_sweep_config(str(sweep_yaml))  # as `wandb sweep` reads it
    assert spec["method"] == "grid" and spec["metric"] == {"name": "eval/accuracy", "goal": "maximize"}
    assert (ROOT / spec["program"]).is_file() and spec["command"][-1] == "${args}"
    assert all(isinstance(p["values"], list) and p["values"] for p in spec["parameters"].values())
    base = yaml.safe_load((tmp_path / "sweep.base.yaml").read_text())
    assert base["tracking"]["wandb"] == "online"

    space = {k: p["values"] for k, p in spec["parameters"].items()}
    combos = [dict(zip(space, c)) for c in itertools.product(*space.values())]
    assert len(combos) == 2
    for values in combos:
        proc = subprocess.run(_agent_command(spec, values), cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "WANDB_MODE": "disabled"})  # no W&B server here
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ": completed (" in proc.stdout

    expected = expand(build_config(base, overrides={"tracking.wandb": "disabled"}))
    sweep_dir = out / "sst2-ablation-rank"
    for name, cfg in expected:  # the same runs, names and identities as the local backend's
        metrics = json.loads((sweep_dir / name / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["run_id"] == cfg.run_id
    assert (sweep_dir / "summary.csv").read_text().count("completed") == 2


def test_two_optuna_workers_on_a_journal_file_complete_the_grid_once(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    optuna = pytest.importorskip("optuna")
    journal = tmp_path / "study.journal"
    argv = [sys.executable, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "sst2", "--model",
            tiny_bert_dir, "--data-dir", tiny_sst2_dir, "--output-dir", str(tmp_path / "out"), "--mode", "ablation",
            "--ablation-type", "grid", "--set", "sweep.grid={lora.r: [2, 4], training.learning_rate: [0.01, 0.003]}",
            "--backend", "optuna", "--storage", str(journal), "--no-progress", *TINY_RUN[:4], "--max-steps", "6"]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, logs[workers.index(worker)].read_text()[-3000:]

    trained = [line.split(": started")[0].split("] ")[-1] for log in logs for line in log.read_text().splitlines()
               if line.endswith(": started")]
    assert len(trained) == 4 and len(set(trained)) == 4  # every grid point trained, none twice
    assert all(": started" in log.read_text() for log in logs)  # both workers took part

    from loraexp.sweep.optuna_backend import make_storage

    study = optuna.load_study(study_name="sst2-ablation-grid", storage=make_storage(str(journal)))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted((t.params["lora.r"], t.params["training.learning_rate"]) for t in complete) == [
        (2, 0.003), (2, 0.01), (4, 0.003), (4, 0.01)]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials if t not in complete)
    assert sorted(t.user_attrs["run_name"] for t in complete) == sorted(trained)
    summary = (tmp_path / "out" / "sst2-ablation-grid" / "summary.csv").read_text()
    assert summary.count("completed") == 4


def test_optuna_tpe_searches_learning_rate_and_rank(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    optuna = pytest.importorskip("optuna")
    from loraexp.sweep.optuna_backend import make_storage, run_optuna

    cfg = build_config(overrides={
        "model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path / "out"),
        "training.max_steps": 4, "training.per_device_train_batch_size": 8, "verification.latency_repeats": 1,
        "sweep.backend": "optuna", "sweep.storage": str(tmp_path / "tpe.journal"), "sweep.sampler": "tpe",
        "sweep.n_trials": 3, "sweep.tpe_ranks": [2, 4], "sweep.tpe_learning_rate": [1e-3, 1e-2]})
    result = run_optuna(cfg)
    assert len(result.runs) == 3
    study = optuna.load_study(study_name="sst2-single", storage=make_storage(str(tmp_path / "tpe.journal")))
    assert len(study.trials) == 3 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in study.trials:
        assert trial.params["lora.r"] in (2, 4) and 1e-3 <= trial.params["training.learning_rate"] <= 1e-2
        metrics = json.loads((result.sweep_dir / trial.user_attrs["run_name"] / "metrics.json").read_text())
        assert metrics["config"]["lora"]["lora_alpha"] == 2 * trial.params["lora.r"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == metrics["eval"]["accuracy"]


def test_an_optuna_trial_left_by_a_killed_worker_is_taken_over_and_resumed(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    optuna = pytest.importorskip("optuna")
    import signal
    import time

    from loraexp.run.checkpoints import is_complete
    from loraexp.sweep.optuna_backend import make_storage

    journal = tmp_path / "study.journal"
    argv = [sys.executable, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "sst2", "--model",
            tiny_bert_dir, "--data-dir", tiny_sst2_dir, "--output-dir", str(tmp_path / "out"), "--mode", "ablation",
            "--ablation-type", "grid", "--set", "sweep.grid={lora.r: [2, 4]}", "--backend", "optuna",
            "--storage", str(journal), "--no-progress", *TINY_RUN[:4], "--max-steps", "24", "--save-steps", "4",
            "--set", "sweep.stale_trial_s=0"]
    sweep_dir = tmp_path / "out" / "sst2-ablation-grid"
    first = subprocess.Popen(argv, stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 300
    while not any(is_complete(p) for p in sweep_dir.glob("*/checkpoints/checkpoint-8")):
        assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-2000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # a preempted VM: its trial stays RUNNING in the journal
    first.wait()

    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "took over trial 0" in second.stderr
    study = optuna.load_study(study_name="sst2-ablation-grid", storage=make_storage(str(journal)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    metrics = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert [m["status"] for m in metrics] == ["completed", "completed"]
    assert sum("checkpoint-" in (m.get("resumed_from") or "") for m in metrics) == 1  # the killed run resumed
