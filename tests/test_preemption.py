"""Preemption-grade runs (docs/reliability.md): SIGTERM/SIGINT with real processes and signals
save a checkpoint after the step in progress and resume bit-identically; a run is ``completed``
only when it is (every planned step, evaluated, its adapter on disk); the skip decision checks
the directory's identity, the data and the files; a full disk stops the sweep; a NaN stop
continues from its last good checkpoint with ``--warm-start``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from loraexp.config.load import build_config
from loraexp.errors import ConfigError
from loraexp.results.storage import RunStore, is_disk_full
from loraexp.run.checkpoints import is_complete
from loraexp.run.recipe import run_experiment
from loraexp.run.run_state import decide
from loraexp.sweep.runner import run_sweep
from tests.conftest import write_tiny_sst2

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "experiments" / "lora_finetune.py")
RUN = ["--max-steps", "24", "--set", "training.per_device_train_batch_size=8", "--set", "training.logging_steps=1",
       "--set", "verification.latency_repeats=1", "--set", "training.learning_rate=1e-2", "--no-progress"]


def _cli(model, data, out, *extra):
    return [sys.executable, ENTRY, "--task", "sst2", "--model", model, "--data-dir", data, "--output-dir", str(out),
            *RUN, *extra]


def _adapter(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _config(tiny_bert_dir, tiny_sst2_dir, out, **overrides):
    return build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(out),
                                   "training.max_steps": 10, "training.per_device_train_batch_size": 8,
                                   "verification.latency_repeats": 1, **overrides})


@pytest.fixture(scope="module")
def module_sst2_dir(tmp_path_factory) -> str:
    return write_tiny_sst2(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference_run(tiny_bert_dir, module_sst2_dir, tmp_path_factory) -> Path:
    """An uninterrupted 24-step run of :data:`RUN`."""
    out = tmp_path_factory.mktemp("reference")
    done = subprocess.run(_cli(tiny_bert_dir, module_sst2_dir, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = [p for p in (out / "sst2-single").iterdir() if (p / "metrics.json").is_file()]
    return run_dir


def test_sigterm_saves_a_checkpoint_after_the_step_and_resume_is_bit_identical(
        tiny_bert_dir, module_sst2_dir, tmp_path, reference_run):
    """With transformers' own SIGTERM handler asked for too (``enable_jit_checkpoint``): SIGINT
    takes the same path (a unit test below; benchmarks/fault_injection.py with a real process)."""
    tiny_sst2_dir, signum = module_sst2_dir, signal.SIGTERM
    extra = ["--set", "training.enable_jit_checkpoint=true"]
    run_dir = tmp_path / "sst2-single" / reference_run.name
    proc = subprocess.Popen(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path, *extra), stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "first.log").open("w"), start_new_session=True)
    deadline = time.time() + 300
    while RunStore(run_dir).last_logged_step() < 6:
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.02)
    reached = RunStore(run_dir).last_logged_step()
    os.killpg(proc.pid, signum)
    sent = time.monotonic()
    assert proc.wait(timeout=60) == 128 + signum, (tmp_path / "first.log").read_text()
    exit_seconds = time.monotonic() - sent
    record = json.loads((run_dir / "metrics.json").read_text())
    stop = record["interruption"]
    assert record["status"] == "interrupted" and stop["signal"] == signal.Signals(signum).name
    assert reached <= stop["step"] <= reached + 1  # no step lost beyond the one in progress
    assert stop["checkpoint"].endswith(f"checkpoint-{stop['step']}") and is_complete(stop["checkpoint"])
    assert exit_seconds < 30, exit_seconds  # fits a 30 s preemption notice
    assert "rerun the same command" in (tmp_path / "first.log").read_text()

    resumed = subprocess.run(_cli(tiny_bert_dir, tiny_sst2_dir, tmp_path, *extra, "--resume"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"] == stop["checkpoint"]
    assert metrics["completion"]["trained_steps"] == metrics["completion"]["planned_steps"] == 24
    a, b = _adapter(reference_run), _adapter(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert metrics["eval"]["accuracy"] == json.loads((reference_run / "metrics.json").read_text())["eval"]["accuracy"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_guard_defers_a_first_signal_while_training_and_raises_elsewhere(signum):
    from loraexp.run.preemption import Preempted, PreemptionGuard

    before = signal.getsignal(signum)
    with PreemptionGuard() as guard:
        with guard.training():
            os.kill(os.getpid(), signum)  # handled at once in the main thread: only the flag is set
            time.sleep(0.01)
        assert guard.signum == signum
        with pytest.raises(Preempted) as stopped:
            guard.raise_if_signalled()
        assert stopped.value.exit_code == 128 + signum
        with pytest.raises(Preempted):  # outside training a signal stops at once
            os.kill(os.getpid(), signum)
            time.sleep(0.01)
        guard.signum = None
        with pytest.raises(Preempted), guard.deferred():  # recording: waits for the end of the span
            os.kill(os.getpid(), signum)
            time.sleep(0.01)
            recorded = True
        assert recorded
    assert signal.getsignal(signum) == before  # the handlers are given back


def test_a_trainer_that_stops_early_is_not_completed(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    class StopAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    cfg = _config(tiny_bert_dir, tiny_sst2_dir, tmp_path)
    result = run_experiment(cfg, tmp_path / "run", "run", extra_callbacks=[StopAtStep3()])
    assert result.status == "failed"
    assert "trained 3 of 10 planned optimizer steps" in result.metrics["error"]
    assert result.metrics["completion"]["trained_steps"] == 3


@pytest.fixture(scope="module")
def completed_sweep_template(tiny_bert_dir, module_sst2_dir, tmp_path_factory):
    """A completed one-run sweep, trained once per module; read-only (tests take a copy)."""
    out = tmp_path_factory.mktemp("completed") / "out"
    first = run_sweep(_config(tiny_bert_dir, module_sst2_dir, out, **{"training.max_steps": 4}), progress=False)
    assert first.all_completed
    (result,) = first.runs
    return out, result.run_dir.relative_to(out)


@pytest.fixture
def completed_sweep(completed_sweep_template, tiny_bert_dir, tiny_sst2_dir, tmp_path):
    """A copy of the completed sweep for this test, its config pointing at this test's data
    directory (the same rows: the same data fingerprint) and at the copy."""
    template, run = completed_sweep_template
    shutil.copytree(template, tmp_path / "out")
    cfg = _config(tiny_bert_dir, tiny_sst2_dir, tmp_path / "out", **{"training.max_steps": 4})
    return cfg, tmp_path / "out" / run


@pytest.mark.parametrize("damage", ["delete adapter", "replace adapter file", "delete predictions"])
def test_a_completed_run_whose_files_are_gone_is_trained_again(completed_sweep, damage, caplog):
    cfg, run_dir = completed_sweep
    record = json.loads((run_dir / "metrics.json").read_text())
    assert len(record["completion"]["adapter_sha256"]) == 64
    if damage == "delete adapter":
        shutil.rmtree(run_dir / "adapter")
    elif damage == "replace adapter file":
        weights = _adapter(run_dir)
        from safetensors.torch import save_file
        save_file({k: v + 1 for k, v in weights.items()}, str(run_dir / "adapter" / "adapter_model.safetensors"))
    else:
        (run_dir / "predictions.npz").unlink()
    again = run_sweep(cfg, progress=False)
    assert [r.status for r in again.runs] == ["completed"]  # trained, not "skipped"
    assert "training it again" in caplog.text
    assert run_sweep(cfg, progress=False).runs[0].status == "skipped"  # intact now


def test_the_skip_decision_compares_identity_and_data_inside_the_lock(completed_sweep, tiny_sst2_dir, tmp_path):
    from loraexp.config.load import apply_overrides

    cfg, run_dir = completed_sweep
    store = RunStore(run_dir)
    assert decide(store, cfg, json.loads((run_dir / "metrics.json").read_text())["resolved"]["data_fingerprint"]
                  ).action == "skip"
    with pytest.raises(ConfigError, match="holds a different config"):  # another sweep's run of the same name
        decide(store, apply_overrides(cfg, {"max_seq_length": 64}), None)
    with pytest.raises(ConfigError, match="data files changed"):
        decide(store, cfg, "sha256:0000000000000000")
    assert decide(store, cfg, "sha256:0000000000000000", rerun=True).action == "run"
    # checkpoint settings are not part of the identity: adding them skips the finished run
    with_saves = apply_overrides(cfg, {"training.save_strategy": "steps", "training.save_steps": 2,
                                       "training.save_total_limit": 1, "sweep.checkpoint_minutes": 1.0})
    assert with_saves.run_id == cfg.run_id
    assert run_sweep(with_saves, progress=False).runs[0].status == "skipped"


def test_changed_data_files_are_refused_before_training(completed_sweep, tiny_sst2_dir):
    cfg, run_dir = completed_sweep
    dev = Path(tiny_sst2_dir) / "glue" / "sst2" / "dev.tsv"
    original = dev.read_bytes()
    try:
        dev.write_bytes(original + b"one more sentence\t1\n")
        with pytest.raises(ConfigError, match="data files changed since run"):
            run_sweep(cfg, progress=False)
        assert run_sweep(cfg, progress=False, rerun=True).runs[0].status == "completed"
    finally:
        dev.write_bytes(original)


def test_timed_checkpoints_are_saved_and_pruned(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = _config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **{"sweep.checkpoint_minutes": 1e-9})
    result = run_experiment(cfg, tmp_path / "run", "run")
    assert result.status == "completed", result.metrics.get("error")
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["checkpoint-10", "checkpoint-9"]  # one per step, pruned to save_total_limit 2


def test_nan_stop_continues_from_the_last_good_checkpoint_with_warm_start(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    class NanAtStep5(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            calls = {"n": 0}

            def poison(module, inputs, output):
                if module.training:
                    calls["n"] += 1
                    if calls["n"] == 5:
                        output["loss"] = output["loss"] * float("nan")
                return output

            model.register_forward_hook(poison, prepend=True)

    cfg = _config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **{"training.save_strategy": "steps",
                                                              "training.save_steps": 2})
    failed = run_experiment(cfg, tmp_path / "diverged", "run", extra_callbacks=[NanAtStep5()])
    checkpoint = failed.metrics["last_checkpoint"]
    assert failed.status == "failed" and checkpoint.endswith("checkpoint-4")
    assert (f"loraexp --config {tmp_path / 'diverged' / 'config.yaml'} --warm-start {checkpoint} "
            "--set training.learning_rate=0.001 --set sweep.name=") in failed.metrics["error"]

    class StartingWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    seen = StartingWeights()
    recovery = build_config(overrides={**cfg.to_dict(), "warm_start": checkpoint, "training": {
        **cfg.training, "learning_rate": 1e-3}})
    resumed = run_experiment(recovery, tmp_path / "recovered", "run", extra_callbacks=[seen])
    assert resumed.status == "completed", resumed.metrics.get("error")
    saved = load_file(Path(checkpoint) / "adapter_model.safetensors")
    lora_a = next(k for k in saved if "lora_A" in k)
    started = next(v for n, v in seen.weights.items() if n.replace(".default", "").endswith(
        lora_a.removeprefix("base_model.model.")))
    assert torch.equal(started, saved[lora_a])  # training started from the checkpoint's adapter


def test_warm_start_from_another_rank_is_refused(tiny_bert_dir, tiny_sst2_dir, tmp_path, completed_sweep):
    _, run_dir = completed_sweep
    cfg = _config(tiny_bert_dir, tiny_sst2_dir, tmp_path, **{"warm_start": str(run_dir / "adapter"), "lora.r": 4,
                                                              "lora.lora_alpha": 8})
    result = run_experiment(cfg, tmp_path / "other", "run")
    assert result.status == "failed" and "does not fit this run's adapter" in result.metrics["error"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB file system (tmpfs), or a skip naming why there is none (mounting needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"no small tmpfs here (mount: {done.stderr.strip() or done.returncode}); the full-disk test "
                    "needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros to ``directory/filler`` until the disk is full."""
    path = directory / "filler"
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(bytes(1 << 16))
                fh.flush()
        except OSError:
            pass
    return path


def test_a_full_disk_records_the_run_stops_the_sweep_and_a_rerun_recovers(
        tiny_bert_dir, tiny_sst2_dir, small_disk, tmp_path):
    argv = _cli(tiny_bert_dir, tiny_sst2_dir, small_disk, "--save-steps", "4")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = None
    deadline = time.time() + 300
    while run_dir is None or not is_complete(run_dir / "checkpoints" / "checkpoint-4"):
        assert proc.poll() is None and time.time() < deadline
        runs = [p for p in (small_disk / "sst2-single").glob("*") if p.is_dir()] if (
            small_disk / "sst2-single").is_dir() else []
        run_dir = runs[0] if runs else None
        time.sleep(0.02)
    filler = fill(small_disk)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert f"the disk holding {str(small_disk / 'sst2-single')!r} is full" in stderr
    assert "Traceback" not in stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("disk full")
    checkpoints = list((run_dir / "checkpoints").iterdir())
    assert checkpoints and all(is_complete(c) for c in checkpoints)  # the partial one is gone

    filler.unlink()  # space freed: the same command with --resume finishes the run
    again = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"].split("-")[-1] in ("4", "8", "12", "16", "20")


@pytest.mark.parametrize("exc,expected", [
    (OSError(28, "No space left on device"), True),
    (RuntimeError("safetensors: No space left on device (os error 28)"), True),
    (OSError(13, "Permission denied"), False),
])
def test_is_disk_full(exc, expected):
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = exc
    assert is_disk_full(exc) is expected and is_disk_full(wrapped) is expected
