"""Successive halving vs the full grid: the same 12-point grid on real SST-2 with MiniLM,
r in {4, 8, 16} x learning rate in {5e-4, 1e-3, 2e-3, 4e-3}, once as a plain grid and once
with ``--prune successive-halving``; prints both side by side: each configuration's dev
accuracy (all 872 examples) and status, the optimizer steps each sweep trained, the wall time,
and the best configuration of each.

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/pruning.py [--out /tmp/prune] \\
        [--steps 90] [--train-samples 2000] [--pruner successive-halving]

The issue's targets: the pruned sweep trains at most 40% of the full grid's optimizer steps,
and its best configuration's accuracy is within 1 point of the full grid's best (one seed).
A rerun with the same ``--out`` reuses the completed runs of both sweeps.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from loraexp.config.load import build_config
from loraexp.sweep.runner import run_sweep

RANKS = [4, 8, 16]
LEARNING_RATES = [5e-4, 1e-3, 2e-3, 4e-3]


def sweep(out: Path, name: str, steps: int, samples: int, pruner: str, min_resource: int | None):
    cfg = build_config(overrides={
        "model": "minilm", "task": "sst2", "output_dir": str(out), "max_train_samples": samples,
        "training.max_steps": steps, "training.per_device_train_batch_size": 16, "training.logging_steps": 10,
        "sweep.mode": "ablation", "sweep.ablation_type": "grid", "sweep.name": name,
        "sweep.grid": {"lora.r": RANKS, "training.learning_rate": LEARNING_RATES},
        "sweep.pruner": pruner, "sweep.min_resource": min_resource, "tracking.wandb": "disabled"})
    start = time.perf_counter()
    result = run_sweep(cfg, progress=False)
    seconds = time.perf_counter() - start
    records = {p.parent.name: json.loads(p.read_text()) for p in result.sweep_dir.glob("*/metrics.json")}
    return records, seconds


def key(record: dict) -> tuple[int, float]:
    return record["config"]["lora"]["r"], record["config"]["training"]["learning_rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/loraexp-pruning", help="output directory of both sweeps")
    parser.add_argument("--steps", type=int, default=90, help="optimizer steps of a full run")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--pruner", default="successive-halving", choices=("successive-halving", "hyperband"))
    parser.add_argument("--min-resource", type=int, default=None, help="first rung (default steps // 9)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "peft", "datasets", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    full, full_s = sweep(out, "grid-full", args.steps, args.train_samples, "none", None)
    pruned, pruned_s = sweep(out, f"grid-{args.pruner}", args.steps, args.train_samples, args.pruner,
                             args.min_resource)
    full_by = {key(r): r for r in full.values()}
    pruned_by = {key(r): r for r in pruned.values()}
    print(f"\nMiniLM, SST-2: {args.train_samples} training examples, {args.steps} optimizer steps x batch 16, "
          "dev accuracy on all 872 examples, one seed (42)")
    print(f"{'r':>3} {'lr':>7} | {'full grid':>10} | {'pruned sweep':>12} {'status':>10} {'steps':>5} "
          f"{'rung acc':>8}")
    for k in sorted(full_by):
        f, p = full_by[k], pruned_by.get(k, {})
        acc = p.get("eval", {}).get("accuracy")
        rung = (p.get("pruning") or {}).get("value")
        print(f"{k[0]:>3} {k[1]:>7.0e} | {f['eval'].get('accuracy', float('nan')):>10.4f} | "
              f"{acc if acc is not None else float('nan'):>12.4f} {p.get('status', 'missing'):>10} "
              f"{(p.get('completion') or {}).get('trained_steps') or 0:>5} "
              f"{rung if rung is not None else float('nan'):>8.4f}")
    steps_full = sum(r["completion"]["trained_steps"] or 0 for r in full.values())
    steps_pruned = sum(r["completion"]["trained_steps"] or 0 for r in pruned.values())
    best_full = max(full.values(), key=lambda r: r["eval"].get("accuracy", -1))
    done = [r for r in pruned.values() if r["status"] == "completed"]
    best_pruned = max(done, key=lambda r: r["eval"].get("accuracy", -1))
    gap = best_full["eval"]["accuracy"] - best_pruned["eval"]["accuracy"]
    ratio = steps_pruned / steps_full
    print(f"\noptimizer steps: full grid {steps_full}, pruned {steps_pruned} = {ratio:.1%} "
          f"(target <= 40%: {'MET' if ratio <= 0.40 else 'MISSED'})")
    print(f"wall time: full grid {full_s / 60:.1f} min, pruned {pruned_s / 60:.1f} min = {pruned_s / full_s:.1%} "
          "(a rerun that reused completed runs shows less)")
    print(f"best: full grid r={key(best_full)[0]} lr={key(best_full)[1]:.0e} {best_full['eval']['accuracy']:.4f}; "
          f"pruned r={key(best_pruned)[0]} lr={key(best_pruned)[1]:.0e} {best_pruned['eval']['accuracy']:.4f}; "
          f"gap {100 * gap:.2f} points (target <= 1 point: {'MET' if gap <= 0.01 else 'MISSED'})")
    same = all(pruned_by[key(r)]["eval"][m] == full_by[key(r)]["eval"][m] for r in done for m in ("accuracy", "loss"))
    print(f"the pruned sweep's completed runs have the full grid's dev accuracy and loss exactly: {same}")


if __name__ == "__main__":
    main()
