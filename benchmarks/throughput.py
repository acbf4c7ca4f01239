"""Throughput knobs side by side: the same MiniLM SST-2 run (same seed, data and optimizer
steps) under each training setting, through loraexp's own ``run_experiment`` (every callback
and check on, W&B disabled), alternating the settings over ``--repeats``.

Settings (``--settings``; join names with ``+`` to combine them, e.g. ``bf16+workers``):

* ``fp32``: the defaults;
* ``bf16``: ``training.bf16`` (bf16 autocast; on a machine without a GPU loraexp sets
  ``training.use_cpu``, which transformers needs for it);
* ``compile``: ``training.torch_compile`` with ``pad_to_multiple_of`` ``--pad-multiple`` (64:
  every SST-2 batch of 32 pads to 64 tokens, one shape, so no recompiles);
* ``compile-dynamic``: ``training.torch_compile`` with dynamic padding (not in the default list;
  recompiles as batch lengths change);
* ``group_by_length``: ``training.train_sampling_strategy: group_by_length`` (batches of
  similar length, less padding);
* ``workers``: ``training.dataloader_num_workers`` ``--workers``.

Printed per setting: training seconds (``Trainer.train``, median and each repeat), ratio to
fp32, dev accuracy (all 872 dev examples unless ``--max-eval-samples``), the torch.compile graphs
compiled during training of each repeat (one graph break splits a model in several; a count that
grows with the batch shapes means recompiles) and run status. Then
the seed interval: fp32 and one candidate (the fastest completed setting, or ``--candidate``)
over ``--seeds`` (runs at the timing seed are reused), each mean ± 95% Student-t interval
(:func:`loraexp.results.statistics.seed_interval`), whether the candidate's mean lies inside fp32's
interval, and candidate − fp32 with its paired bootstrap interval over the dev examples and
seeds (:func:`loraexp.results.statistics.paired_difference`).

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/throughput.py \\
        [--steps 100] [--train-samples 3200] [--repeats 2] [--seeds 42 1337 2024] [--settings fp32 bf16 ...]

A quick check that it runs (minutes, not a measurement):

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/throughput.py --steps 4 --train-samples 64 \\
        --max-eval-samples 64 --repeats 1 --seeds 42 1337 --settings fp32 bf16 group_by_length workers
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from loraexp.config.load import build_config
from loraexp.errors import ConfigError
from loraexp.run.recipe import run_experiment

TRAIN_SECONDS: list[float] = []
GRAPHS_COMPILED: list[int] = []  # torch.compile graphs compiled during each Trainer.train (0 without compile)
_real_train = transformers.Trainer.train


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _timed_train(self, *args, **kwargs):
    graphs = _graphs()
    start = time.perf_counter()
    try:
        return _real_train(self, *args, **kwargs)
    finally:
        TRAIN_SECONDS.append(time.perf_counter() - start)
        GRAPHS_COMPILED.append(_graphs() - graphs)


transformers.Trainer.train = _timed_train

DEFAULT_SETTINGS = ("fp32", "bf16", "compile", "group_by_length", "workers")


def setting_overrides(name: str, args: argparse.Namespace) -> dict:
    """Config overrides of setting ``name`` (names joined by ``+`` merge theirs).

    Raises:
        SystemExit: an unknown name (argparse-style message).
    """
    known = {
        "fp32": {},
        "bf16": {"training.bf16": True},
        "compile": {"training.torch_compile": True, "pad_to_multiple_of": args.pad_multiple},
        "compile-dynamic": {"training.torch_compile": True},
        "group_by_length": {"training.train_sampling_strategy": "group_by_length"},
        "workers": {"training.dataloader_num_workers": args.workers},
    }
    out: dict = {}
    for part in name.split("+"):
        if part not in known:
            raise SystemExit(f"throughput.py: error: unknown setting {part!r}; allowed: {', '.join(known)} "
                             "(join with + to combine)")
        out.update(known[part])
    return out


def run_once(args: argparse.Namespace, root: Path, setting: str, seed: int, label: str) -> dict:
    """One run of ``setting`` at ``seed``: training seconds, accuracy, status, run directory."""
    cfg = build_config(overrides={"output_dir": str(root), "seed": seed, "training.max_steps": args.steps,
                                  "max_train_samples": args.train_samples, "max_eval_samples": args.max_eval_samples,
                                  "tracking.wandb": "disabled", **setting_overrides(setting, args)})
    before = len(TRAIN_SECONDS)
    start = time.perf_counter()
    result = run_experiment(cfg, root / label, label)
    wall = time.perf_counter() - start
    train = TRAIN_SECONDS[-1] if len(TRAIN_SECONDS) > before else float("nan")
    graphs = GRAPHS_COMPILED[-1] if len(TRAIN_SECONDS) > before else 0
    row = {"setting": setting, "seed": seed, "train_s": train, "wall_s": wall, "status": result.status,
           "graphs": graphs,
           "accuracy": (result.record.eval or {}).get("accuracy"), "run_dir": root / label,
           "error": result.record.error}
    accuracy = f"{row['accuracy']:.4f}" if row["accuracy"] is not None else "-"
    compiled = f"  {graphs} graph(s) compiled" if graphs else ""
    error = f"  ({str(result.record.error)[:160]})" if result.record.error else ""
    print(f"  {setting:24s} seed {seed:<5d} train {train:7.1f} s{compiled}  end to end {wall:7.1f} s  "
          f"accuracy {accuracy}  {result.status}{error}", flush=True)
    return row


def _fmt_interval(values: list[float]) -> str:
    from loraexp.results.statistics import seed_interval

    si = seed_interval(values)
    if si.low is None:
        return f"{si.mean:.4f} (n=1, no interval)"
    return f"{si.mean:.4f} ± {(si.high - si.low) / 2:.4f}  [{si.low:.4f}, {si.high:.4f}]  (n={si.n})"


def timing_table(rows: list[dict], settings: list[str]) -> str:
    """The per-setting table: median and each repeat's training seconds, ratio to fp32,
    accuracy (distinct values over repeats), torch.compile graphs compiled while training
    (graph breaks split a model into several; recompiles for new batch shapes add more), status."""
    median = {s: statistics.median(r["train_s"] for r in rows if r["setting"] == s) for s in settings}
    reference = median.get("fp32")
    lines = ["| setting | train s (median) | train s per repeat | ratio to fp32 | dev accuracy | graphs compiled | "
             "status |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in settings:
        mine = [r for r in rows if r["setting"] == s]
        each = ", ".join(f"{r['train_s']:.1f}" for r in mine)
        ratio = f"{median[s] / reference:.3f}" if reference else "-"
        accuracies = sorted({f"{r['accuracy']:.4f}" for r in mine if r["accuracy"] is not None}) or ["-"]
        statuses = sorted({r["status"] for r in mine})
        graphs = ", ".join(str(r["graphs"]) for r in mine)
        lines.append(f"| {s} | {median[s]:.1f} | {each} | {ratio} | {' / '.join(accuracies)} | {graphs} | "
                     f"{', '.join(statuses)} |")
    return "\n".join(lines)


def seed_comparison(args: argparse.Namespace, root: Path, rows: list[dict], candidate: str) -> None:
    """fp32 and ``candidate`` over ``args.seeds``: each mean ± t-interval, the verdict, and the
    paired bootstrap of candidate − fp32 over the dev examples and seeds."""
    from loraexp.results.statistics import PREDICTIONS_FILE, load_scores, paired_difference, seed_interval

    runs: dict[str, list[dict]] = {"fp32": [], candidate: []}
    for setting in runs:
        for seed in args.seeds:
            reused = next((r for r in rows if r["setting"] == setting and r["seed"] == seed
                           and r["status"] == "completed"), None)
            runs[setting].append(reused or run_once(args, root, setting, seed, f"{setting}-seed{seed}"))
    print(f"\nDev accuracy over seeds {', '.join(map(str, args.seeds))} (mean ± half-width of the 95% Student-t "
          "interval):")
    accuracy = {}
    for setting, mine in runs.items():
        accuracy[setting] = [r["accuracy"] for r in mine if r["status"] == "completed" and r["accuracy"] is not None]
        if len(accuracy[setting]) < len(mine):
            print(f"  {setting:24s} {len(mine) - len(accuracy[setting])} of {len(mine)} runs did not complete")
        if accuracy[setting]:
            print(f"  {setting:24s} {_fmt_interval(accuracy[setting])}")
    base = seed_interval(accuracy["fp32"]) if accuracy["fp32"] else None
    other = seed_interval(accuracy[candidate]) if accuracy[candidate] else None
    if base is None or other is None or base.low is None:
        print("  verdict: not enough completed seeds for an interval")
        return
    inside = base.low <= other.mean <= base.high
    print(f"  verdict: {candidate}'s mean {other.mean:.4f} is {'INSIDE' if inside else 'OUTSIDE'} fp32's interval "
          f"[{base.low:.4f}, {base.high:.4f}]")
    try:
        scores = {s: [load_scores(r["run_dir"] / PREDICTIONS_FILE)["accuracy"] for r in mine
                      if r["status"] == "completed"] for s, mine in runs.items()}
        diff = paired_difference(scores[candidate], scores["fp32"])
        print(f"  {candidate} - fp32: {diff.estimate:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] (95% paired bootstrap "
              f"over {diff.examples} dev examples x seeds, {diff.resamples} resamples)")
    except (OSError, KeyError, ValueError) as exc:
        print(f"  paired difference not computed: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Throughput knobs side by side on the same MiniLM SST-2 run.")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--train-samples", type=int, default=3200, help="training examples (100 steps x batch 32)")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="dev examples (default: all 872)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each setting, alternating")
    parser.add_argument("--seed", type=int, default=42, help="seed of the timed runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1337, 2024],
                        help="seeds of the accuracy interval (fp32 and the candidate)")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                        help=f"settings to time (default: {' '.join(DEFAULT_SETTINGS)}; fp32 is always added)")
    parser.add_argument("--candidate", default=None, help="setting compared with fp32 over seeds (default: the "
                                                          "fastest completed one)")
    parser.add_argument("--pad-multiple", type=int, default=64, help="pad_to_multiple_of of the compile setting")
    parser.add_argument("--workers", type=int, default=1, help="dataloader_num_workers of the workers setting")
    parser.add_argument("--output-dir", default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    settings = ["fp32", *[s for s in args.settings if s != "fp32"]]
    for s in [*settings, *([args.candidate] if args.candidate else [])]:  # bad names and values fail before any run
        try:
            build_config(overrides=setting_overrides(s, args))
        except ConfigError as exc:
            raise SystemExit(f"throughput.py: error: setting {s!r}: {exc}") from None
    torch.set_num_threads(os.cpu_count() or 1)
    logging.getLogger("loraexp").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output_dir or tmp)
        print(f"MiniLM + SST-2: {args.steps} optimizer steps, {args.train_samples} training examples, "
              f"{args.max_eval_samples or 'all'} dev examples, seed {args.seed}, {args.repeats} repeat(s), "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
        rows = []
        for i in range(args.repeats):
            order = settings[i % len(settings):] + settings[:i % len(settings)]  # alternate, rotating the start
            print(f"repeat {i + 1}/{args.repeats}", flush=True)
            for s in order:
                rows.append(run_once(args, root, s, args.seed, f"{s}-r{i}"))
        print(f"\nTraining wall time (Trainer.train), median of {args.repeats}:\n")
        print(timing_table(rows, settings))
        completed = [s for s in settings[1:] if all(r["status"] == "completed" for r in rows if r["setting"] == s)]
        candidate = args.candidate or min(
            completed, key=lambda s: statistics.median(r["train_s"] for r in rows if r["setting"] == s), default=None)
        if candidate is None:
            print("\nno setting other than fp32 completed: no seed comparison")
            return
        seed_comparison(args, root, rows, candidate)


if __name__ == "__main__":
    main()
