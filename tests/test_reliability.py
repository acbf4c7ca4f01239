"""Nothing lost, nothing run twice: SIGKILL mid-sweep and mid-run with real subprocesses,
resume bit-identical on CPU, NaN/inf stops, locks on runs and the sweep summary."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file
from transformers import TrainerCallback

from loraexp.config.load import build_config
from loraexp.results.summary import SUMMARY_LOCK, write_sweep_summary
from loraexp.run.checkpoints import is_complete, last_complete_checkpoint
from loraexp.run.recipe import run_experiment

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "experiments" / "lora_finetune.py")
TIMING_COLUMNS = {"train_seconds", "tokens_per_s", "peak_mem_bytes"}  # differ between any two processes


def _cli(model, data, out, *extra):
    return [sys.executable, ENTRY, "--task", "sst2", "--model", model, "--data-dir", data, "--output-dir", str(out),
            "--no-progress", "--set", "training.per_device_train_batch_size=8", "--set", "training.logging_steps=1",
            "--set", "verification.latency_repeats=1", "--set", "training.learning_rate=1e-2", *extra]


def _start(argv, log: Path) -> subprocess.Popen:
    """A CLI process in its own session (so the kill reaches every child), output to ``log``."""
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before the kill point")
        if time.time() > deadline:
            raise AssertionError("kill point not reached in time")
        time.sleep(0.05)


def _sigkill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def _summary(sweep_dir: Path) -> dict[str, dict]:
    with (sweep_dir / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {row["run_name"]: {k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows}


def test_sigkill_mid_sweep_then_rerun_runs_only_the_missing_runs(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    sweep = ["--mode", "ablation", "--ablation-type", "rank", "--set", "sweep.ranks=[2,4,8]", "--max-steps", "30"]
    reference = subprocess.run(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "reference", *sweep),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    names = list(_summary(tmp_path / "reference" / "sst2-ablation-rank"))
    sweep_dir = tmp_path / "killed" / "sst2-ablation-rank"

    proc = _start(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "killed", *sweep), tmp_path / "first.log")
    _wait_for(lambda: _status(sweep_dir / names[1]) == "running", proc)  # run 1 done, run 2 training
    _sigkill(proc)
    assert _status(sweep_dir / names[0]) == "completed" and _status(sweep_dir / names[2]) is None
    first_run_metrics = (sweep_dir / names[0] / "metrics.json").read_bytes()

    again = subprocess.run(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "killed", *sweep),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    trained = [line for line in again.stderr.splitlines() if line.endswith(": started")]
    assert [names[1] in t for t in trained] == [True, False] and names[2] in trained[1]  # only the missing runs
    assert (sweep_dir / names[0] / "metrics.json").read_bytes() == first_run_metrics  # kept as it was
    assert _summary(sweep_dir) == _summary(tmp_path / "reference" / "sst2-ablation-rank")


def test_sigkill_mid_run_then_resume_is_bit_identical(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    run = ["--max-steps", "24", "--save-steps", "4"]
    reference = subprocess.run(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "reference", *run),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    (ref_dir,) = [p for p in (tmp_path / "reference" / "sst2-single").iterdir() if (p / "metrics.json").is_file()]
    run_dir = tmp_path / "killed" / "sst2-single" / ref_dir.name

    proc = _start(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "killed", *run), tmp_path / "first.log")
    _wait_for(lambda: is_complete(run_dir / "checkpoints" / "checkpoint-12"), proc)
    _sigkill(proc)
    assert _status(run_dir) == "running" and not (run_dir / "adapter").exists()

    resumed = subprocess.run(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "killed", *run, "--resume"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    step = int(metrics["resumed_from"].rsplit("-", 1)[1])
    assert step >= 12 and metrics["training_efficiency"]["optimizer_steps"] == 24 - step
    a = load_file(ref_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    reference_metrics = json.loads((ref_dir / "metrics.json").read_text())
    for key in ("loss", "accuracy", "f1"):
        assert metrics["eval"].get(key) == reference_metrics["eval"].get(key)


def test_two_processes_on_one_sweep_never_train_a_run_twice(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    sweep = ["--mode", "ablation", "--ablation-type", "rank", "--set", "sweep.ranks=[2,4]", "--max-steps", "20"]
    procs = [_start(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path / "out", *sweep), tmp_path / f"w{i}.log")
             for i in range(2)]
    for proc in procs:
        proc.wait(timeout=600)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    trained = [line.split("] ")[1].split(": started")[0] for log in logs for line in log.splitlines()
               if line.endswith(": started")]
    summary = _summary(tmp_path / "out" / "sst2-ablation-rank")
    assert sorted(trained) == sorted(summary)  # each run trained by exactly one of the processes
    assert all(row["status"] == "completed" for row in summary.values())


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_training_stops_at_that_step_and_keeps_the_last_good_checkpoint(
        tiny_bert_dir, tiny_sst2_dir, tmp_path, where):
    class PoisonStep5(TrainerCallback):
        """Makes the 5th training forward's loss NaN, or its lora_A gradient inf."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            forwards = {"n": 0}

            def count_and_poison(module, inputs, output):
                if module.training:
                    forwards["n"] += 1
                    if where == "loss" and forwards["n"] == 5:
                        output["loss"] = output["loss"] * float("nan")
                return output

            model.register_forward_hook(count_and_poison, prepend=True)  # before loraexp's loss check
            lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
            lora_a.register_hook(lambda g: g * float("inf") if where == "gradient" and forwards["n"] == 5 else g)

    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  "training.max_steps": 10, "training.save_strategy": "steps",
                                  "training.save_steps": 2, "training.per_device_train_batch_size": 8})
    result = run_experiment(cfg, tmp_path / "run", "run", extra_callbacks=[PoisonStep5()])
    assert result.status == "failed" and result.metrics["failed_step"] == 5
    assert ("training loss is nan" if where == "loss" else "gradient of") in result.metrics["error"]
    assert result.metrics["last_checkpoint"].endswith("checkpoint-4") and is_complete(result.metrics["last_checkpoint"])
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint-6").exists()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["failed_step"] == 5


def _fake_checkpoint(root: Path, step: int, state: str | None = "ok") -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (path / name).write_bytes(b"x")
    if state == "ok":
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "truncated":
        (path / "trainer_state.json").write_text('{"global_st')
    elif state == "other-step":
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step + 1}))
    return path


@pytest.mark.parametrize("newest,expected", [("ok", 8), (None, 4), ("truncated", 4), ("other-step", 4)])
def test_last_complete_checkpoint_skips_a_save_cut_short(tmp_path, newest, expected):
    _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 8, state=newest)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / f"checkpoint-{expected}")
    assert (tmp_path / "checkpoint-8").exists() == (expected == 8)  # an incomplete save is removed


def test_summary_writers_wait_for_each_other(tmp_path):
    lock = FileLock(tmp_path / SUMMARY_LOCK)
    lock.acquire()
    done = threading.Event()
    writer = threading.Thread(target=lambda: (write_sweep_summary(tmp_path, ["a"]), done.set()))
    writer.start()
    time.sleep(0.5)
    assert not done.is_set() and not (tmp_path / "summary.csv").exists()  # waiting for the lock holder
    lock.release()
    writer.join(timeout=30)
    assert done.is_set() and "missing" in (tmp_path / "summary.csv").read_text()


@pytest.mark.parametrize("crash_after_step", [24, 23])
def test_resume_after_a_crash_near_the_end_carries_verification_forward(
        tiny_bert_dir, tiny_sst2_dir, tmp_path, crash_after_step):
    """A crash after the last save (24: training done, evaluation cut short) or with one step
    left (23) resumes to the same adapter as an uninterrupted run: no step past max_steps, and
    the gradient-flow check passed in the first attempt counts (one or zero steps remain)."""
    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  "training.max_steps": 24, "training.save_strategy": "steps",
                                  "training.save_steps": 23 if crash_after_step == 23 else 8,
                                  "training.per_device_train_batch_size": 8, "verification.latency_repeats": 1})
    reference = run_experiment(cfg, tmp_path / "reference", "run")
    assert reference.status == "completed", reference.metrics.get("error")

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == crash_after_step:
                raise KeyboardInterrupt  # like a kill: nothing after the save runs

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "crashed", "run", extra_callbacks=[Crash()])  # after loraexp's callbacks
    resumed = run_experiment(cfg, tmp_path / "crashed", "run", resume=True)
    assert resumed.status == "completed", resumed.metrics.get("error")
    ver = resumed.metrics["verification"]
    assert ver["grad_flow"]["carried_from_checkpoint"] == crash_after_step
    assert ver["grad_flow"]["passed"] and ver["frozen_base"]["passed"]
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "crashed" / "checkpoints").iterdir())
    assert max(steps) == 24  # never a step past max_steps
    a = load_file(tmp_path / "reference" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "crashed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["eval"]["accuracy"] == reference.metrics["eval"]["accuracy"]
    assert resumed.metrics["lora_rank"] == reference.metrics["lora_rank"]
    assert resumed.metrics["training_efficiency"]["optimizer_state_bytes"] == (  # also when restored, not trained
        reference.metrics["training_efficiency"]["optimizer_state_bytes"])
