"""Chaos test: a 6-run sweep on MiniLM + real SST-2, killed (SIGKILL) or preempted (SIGTERM)
at random points, resumed.

    LORAEXP_DATA_DIR=../shared/data python benchmarks/chaos_sweep.py [--kills 3] [--seed 0] [--signal TERM]

1. Runs the sweep uninterrupted into ``<out>/reference`` and times it (T).
2. Runs the same sweep into ``<out>/chaos``; ``--kills`` times, after a random delay from
   (re)start (start-up time plus a uniform fraction of this start's share of the work left,
   estimated from T and the runs not yet completed), SIGKILLs the whole process group, then
   restarts the same command with ``--resume``; the last start runs to the end. With
   ``--signal TERM`` the process is sent SIGTERM instead and left to exit by itself: it must
   exit with 143, and the interrupted run's checkpoint must hold every optimizer step logged
   before the signal (``training.logging_steps`` is 1, so each step is logged); the seconds from
   SIGTERM to exit are printed.
3. Prints where each kill landed (which run, last complete checkpoint), and whether the
   final summaries match: every column except wall-clock ones (train_seconds, tokens_per_s,
   peak_mem_bytes) and every adapter tensor bit for bit. Exit code 0 on a match.

The two sweeps run one after the other ("beside" = sibling directories), not at the same
time: two trainings on 2 cores would only slow each other down.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraexp.results.storage import RunStore

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "chaos-grid"
TIMING = {"train_seconds", "tokens_per_s", "peak_mem_bytes"}
STARTUP_S = 8.0  # python + torch + transformers imports before the first run starts


def command(out: Path, args) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "lora_finetune.py"), "--task", "sst2", "--model", "minilm",
            "--output-dir", str(out), "--mode", "ablation", "--ablation-type", "grid", "--no-progress",
            "--set", "sweep.grid={lora.r: [4, 8, 16], training.learning_rate: [0.001, 0.002]}",
            "--set", f"sweep.name={SWEEP}", "--set", "training.logging_steps=1",
            "--max-steps", str(args.max_steps), "--save-steps", str(args.save_steps),
            "--max-train-samples", str(args.train_samples), "--max-eval-samples", str(args.eval_samples)]


def summary(sweep_dir: Path) -> dict[str, dict]:
    with (sweep_dir / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {r["run_name"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def completed(sweep_dir: Path) -> int:
    """Runs of the sweep whose metrics.json says completed."""
    return sum(RunStore(p).is_completed() for p in sweep_dir.glob("*") if p.is_dir())


def where(sweep_dir: Path) -> str:
    """The run that was training when killed and its checkpoints."""
    for run in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if (RunStore(run).read_metrics() or {}).get("status") == "running":
            steps = sorted(int(c.name.split("-")[1]) for c in (run / "checkpoints").glob("checkpoint-*")) \
                if (run / "checkpoints").is_dir() else []
            return f"during {run.name} (checkpoints at steps {steps or 'none yet'})"
    return "between runs"


def running_run(sweep_dir: Path) -> Path | None:
    """The run whose metrics.json says running (the one being trained), if any."""
    return next((run for run in sorted(p for p in sweep_dir.glob("*") if p.is_dir())
                 if (RunStore(run).read_metrics() or {}).get("status") == "running"), None)


def preempt(proc: subprocess.Popen, sweep_dir: Path) -> tuple[str, list[str], float]:
    """SIGTERM the sweep and let it exit; ``(what happened, problems, seconds to exit)``."""
    run = running_run(sweep_dir)
    reached = RunStore(run).last_logged_step() if run else None
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait()
    seconds = time.monotonic() - sent
    problems = [] if code == 128 + signal.SIGTERM else [f"exit code {code} after SIGTERM, not 143"]
    if run is None:
        return f"between runs; exit {code} in {seconds:.1f} s", problems, seconds
    record = RunStore(run).read_metrics() or {}
    stop = record.get("interruption") or {}
    step = stop.get("step")
    if record.get("status") != "interrupted":
        problems.append(f"{run.name}: status {record.get('status')!r} after SIGTERM, not 'interrupted'")
    elif stop.get("during") == "train_or_restore" and (step is None or step < reached):
        problems.append(f"{run.name}: checkpoint at step {step}, but step {reached} was logged before SIGTERM")
    lost = f"steps lost: {max(0, reached - step)}" if step is not None else "no checkpoint yet"
    return (f"during {run.name} ({stop.get('during')}) at logged step {reached}; exit {code} in {seconds:.1f} s; "
            f"checkpoint at step {step} ({lost})"), problems, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/chaos", help="Output root (reference/ and chaos/ go under it).")
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="Seed of the kill times.")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--save-steps", type=int, default=10)
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=400)
    p.add_argument("--signal", choices=("KILL", "TERM"), default="KILL",
                   help="KILL: SIGKILL (nothing can be saved); TERM: a preemption notice (SIGTERM).")
    args = p.parse_args()
    if not os.environ.get("LORAEXP_DATA_DIR"):
        print("set LORAEXP_DATA_DIR to the shared/data directory", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose another --out", file=sys.stderr)
        return 2
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    rng = random.Random(args.seed)

    started = time.time()
    reference = subprocess.run(command(out / "reference", args), env=env, capture_output=True, text=True)
    total = time.time() - started
    if reference.returncode != 0:
        print(reference.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"uninterrupted sweep: 6 runs in {total:.0f} s")

    chaos_dir = out / "chaos" / SWEEP
    log = (out / "chaos.log").open("w")
    starts = 0
    problems: list[str] = []
    exit_seconds: list[float] = []
    for kill in range(args.kills + 1):
        argv = command(out / "chaos", args) + (["--resume"] if starts else [])
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        starts += 1
        if kill == args.kills:
            code = proc.wait()
            print(f"start {starts}: ran to the end (exit code {code})")
            break
        # a random point within this start's share of the work left (so every kill lands before the end)
        remaining = total * (6 - completed(chaos_dir)) / 6
        delay = STARTUP_S + rng.uniform(0.05, 1.0) * remaining / (args.kills - kill)
        try:
            code = proc.wait(timeout=delay)
            print(f"start {starts}: finished before the kill at {delay:.0f} s (exit code {code})")
            break
        except subprocess.TimeoutExpired:
            if args.signal == "KILL":
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"start {starts}: SIGKILL after {delay:.0f} s, {where(chaos_dir)}")
            else:
                what, found, seconds = preempt(proc, chaos_dir)
                problems += found
                exit_seconds.append(seconds)
                print(f"start {starts}: SIGTERM after {delay:.0f} s, {what}")

    want, got = summary(out / "reference" / SWEEP), summary(chaos_dir)
    problems += [f"{name}: {key} {want[name][key]!r} != {got.get(name, {}).get(key)!r}"
                 for name in want for key in want[name] if got.get(name, {}).get(key) != want[name][key]]
    for name in want:
        a = load_file(out / "reference" / SWEEP / name / "adapter" / "adapter_model.safetensors")
        b_path = chaos_dir / name / "adapter" / "adapter_model.safetensors"
        b = load_file(b_path) if b_path.is_file() else {}
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            problems.append(f"{name}: adapter weights differ")
    resumed = [json.loads((chaos_dir / n / "metrics.json").read_text()).get("resumed_from") for n in want]
    print(f"runs resumed from a checkpoint: {sum(r is not None for r in resumed)} "
          f"({', '.join(Path(r).parent.parent.name + '@' + Path(r).name for r in resumed if r) or 'none'})")
    if exit_seconds:
        print(f"SIGTERM to exit: {', '.join(f'{s:.1f}' for s in exit_seconds)} s (max {max(exit_seconds):.1f} s)")
    if problems:
        print("MISMATCH:\n  " + "\n  ".join(problems))
        return 1
    stops = "kills" if args.signal == "KILL" else "SIGTERMs"
    print(f"MATCH: the summary after {starts - 1} {stops} equals the uninterrupted sweep's for all {len(want)} runs "
          "(every column but wall-clock ones; adapters bit-identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
