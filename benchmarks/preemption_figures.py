"""Preemption figures (issue 13): seconds from SIGTERM to exit, and checkpoint disk use per run
before and after pruning, on MiniLM and SmolLM2-135M.

    LORAEXP_DATA_DIR=../shared/data python benchmarks/preemption_figures.py [--out results/preemption] [--repeats 3]

1. SIGTERM to exit: for each model, ``--repeats`` single runs are started and sent SIGTERM
   once 5 optimizer steps are logged; the seconds until the process has exited (the optimizer
   step in progress, the checkpoint, the record and the summary) are printed with the exit code
   and the checkpoint step. Models alternate, so machine noise hits both alike.
2. Disk use: each model trains 20 steps with a checkpoint every 2 steps, once keeping every
   checkpoint (``training.save_total_limit=null``) and once with the default pruning (2 kept);
   the bytes under ``<run>/checkpoints`` are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loraexp.results.storage import RunStore

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "experiments" / "lora_finetune.py")
MODELS = {
    "minilm (sst2)": ["--model", "minilm", "--task", "sst2", "--set", "training.per_device_train_batch_size=16"],
    "smollm2-135m (shakespeare)": ["--model", "smollm2-135m", "--task", "shakespeare",
                                   "--set", "training.per_device_train_batch_size=8"],
    "smollm2-135m all-linear (shakespeare)": ["--model", "smollm2-135m", "--task", "shakespeare",
                                              "--set", "training.per_device_train_batch_size=8",
                                              "--set", "lora.target_modules=all-linear"],
}
COMMON = ["--no-progress", "--no-report", "--max-train-samples", "512", "--max-eval-samples", "64",
          "--set", "training.logging_steps=1", "--set", "verification.latency_repeats=1"]


def argv(model_args: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, ENTRY, *model_args, *COMMON, "--output-dir", str(out), *extra]


def run_dir(out: Path) -> Path | None:
    runs = [p for p in out.glob("*/*") if p.is_dir()]
    return runs[0] if len(runs) == 1 else None


def sigterm_to_exit(model_args: list[str], out: Path, env: dict) -> tuple[float, int, dict]:
    """``(seconds from SIGTERM to exit, exit code, interruption record)`` of one run."""
    proc = subprocess.Popen(argv(model_args, out, "--max-steps", "200"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while (RunStore(run_dir(out)).last_logged_step() if run_dir(out) else 0) < 5:
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the run in {out} exited ({proc.returncode}) or stalled before step 5")
        time.sleep(0.02)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait()
    seconds = time.monotonic() - sent
    record = json.loads((run_dir(out) / "metrics.json").read_text())
    return seconds, code, record.get("interruption") or {}


def checkpoint_bytes(model_args: list[str], out: Path, env: dict, *extra: str) -> tuple[int, int]:
    """``(bytes under checkpoints/, number of checkpoints)`` after a 20-step run saving every 2 steps."""
    done = subprocess.run(argv(model_args, out, "--max-steps", "20", "--save-steps", "2", *extra), env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run in {out} failed: {done.stderr[-500:]}")
    root = run_dir(out) / "checkpoints"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()), len(list(root.iterdir()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/preemption")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not os.environ.get("LORAEXP_DATA_DIR"):
        print("set LORAEXP_DATA_DIR to the shared/data directory", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose another --out", file=sys.stderr)
        return 2
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}

    seconds: dict[str, list[float]] = {name: [] for name in MODELS}
    for repeat in range(args.repeats):
        for i, (name, model_args) in enumerate(MODELS.items()):
            s, code, stop = sigterm_to_exit(model_args, out / f"sigterm-{i}-{repeat}", env)
            seconds[name].append(s)
            checkpoint = Path(stop.get("checkpoint") or "-").name
            print(f"{name}, repeat {repeat + 1}: SIGTERM to exit {s:.2f} s, exit {code}, interrupted at step "
                  f"{stop.get('step')} during {stop.get('during')}, checkpoint {checkpoint}", flush=True)
    print("\n| model | SIGTERM to exit, s (median) | max | runs |\n| --- | --- | --- | --- |")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {max(values):.2f} | {len(values)} |")

    print("\n| model | checkpoints kept | bytes under checkpoints/ | per checkpoint |\n| --- | --- | --- | --- |")
    for i, (name, model_args) in enumerate(MODELS.items()):
        for label, extra in (("all (save_total_limit null)", ["--set", "training.save_total_limit=null"]),
                             ("pruned (default save_total_limit 2)", [])):
            total, count = checkpoint_bytes(model_args, out / f"disk-{i}-{'all' if extra else 'pruned'}", env, *extra)
            print(f"| {name}, {label} | {count} | {total:,} | {total // max(count, 1):,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
