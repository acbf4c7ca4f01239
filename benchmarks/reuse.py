"""What reuse across a sweep saves per run (docs/design.md, "Reuse across a sweep").

Two runs of one sweep (seeds 42 and 1337, everything else equal) back to back in one process,
with the data cache ``off`` and ``on`` (the default), alternating within each repeat. (The base
cache this script also measured until 2026-12-04 is gone: it saved 0.6-1.2 s per run; docs/design.md,
"Reuse across a sweep".) Timed per run, in seconds:

* ``load``: the stages ``load_data`` + ``load_model`` (read and select the rows, load the base
  and its tokenizer, tokenize both splits);
* ``reload``: the reload check's second load of the base (inside ``verify_merge``).

Run 1 of a pair starts from an empty cache (cold), run 2 finds what run 1 left (warm). Saved per
run = warm (load + reload) with ``off`` minus the same with ``on``, medians over repeats. An
untimed run first pays the imports and fills the page cache. Training is cut to ``--steps``
optimizer steps and the evaluation to ``--max-eval-samples`` examples (they are not timed); the
training subset is the config's default (10,000 examples), what a sweep tokenizes.

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/reuse.py [--steps 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from loraexp.config.load import build_config
from loraexp.run import recipe
from loraexp.tasks import data_cache

MODELS = {"minilm": "sst2", "smollm2-135m": "sst2"}
MODES = ("off", "on")
SECONDS: dict[str, float] = {}


def _timed_stage(name: str):
    real = getattr(recipe.LoraRecipe, name)

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            SECONDS["load"] = SECONDS.get("load", 0.0) + time.perf_counter() - start

    setattr(recipe.LoraRecipe, name, timed)


def _timed_load_base():
    real = recipe.load_base

    def timed(cfg, task_type, num_labels, quantized=True):
        start = time.perf_counter()
        try:
            return real(cfg, task_type, num_labels, quantized=quantized)
        finally:
            if not quantized:  # the reload check's load of the base
                SECONDS["reload"] = SECONDS.get("reload", 0.0) + time.perf_counter() - start

    recipe.load_base = timed


for _stage in ("load_data", "load_model"):
    _timed_stage(_stage)
_timed_load_base()


def set_reuse(mode: str) -> None:
    """The data cache ``on`` or ``off``, emptied."""
    data_cache.set_enabled(mode == "on")
    data_cache.clear()


def run(cfg, out: str) -> dict[str, float]:
    """One run; its timed seconds."""
    SECONDS.clear()
    result = recipe.run_experiment(cfg, out, os.path.basename(out))
    assert result.status == "completed", result.record.error
    return {"load": SECONDS.get("load", 0.0), "reload": SECONDS.get("reload", 0.0)}


def config(model: str, seed: int, tmp: str, args):
    """A run of the benchmark's sweep on ``model``: the default training subset, training and
    evaluation cut short (not timed)."""
    return build_config(overrides={
        "model": model, "task": MODELS[model], "output_dir": tmp, "seed": seed,
        "training.max_steps": args.steps, "training.per_device_train_batch_size": 8,
        "training.per_device_eval_batch_size": 32, "max_eval_samples": args.max_eval_samples,
        "tracking.wandb": "disabled"})


def median(pairs: list[tuple[dict, dict]], which: int, key: str) -> float:
    """Median over repeats of run ``which`` (0 cold, 1 warm) of the pairs' ``key`` seconds."""
    return statistics.median(pair[which][key] for pair in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description="seconds per run that reuse across a sweep saves")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run (not timed)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs per mode, modes alternating")
    parser.add_argument("--max-eval-samples", type=int, default=128, help="eval examples per run (not timed)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            set_reuse("off")
            run(config(model, 0, tmp, args), os.path.join(tmp, f"{model}-warm-up"))
            for i in range(args.repeats):
                for mode in MODES:
                    set_reuse(mode)
                    cold = run(config(model, 42, tmp, args), os.path.join(tmp, f"{model}-{mode}-{i}-cold"))
                    warm = run(config(model, 1337, tmp, args), os.path.join(tmp, f"{model}-{mode}-{i}-warm"))
                    rows.setdefault((model, mode), []).append((cold, warm))
                    print(f"{model} {mode:4s} repeat {i}: cold load {cold['load']:.2f} s reload {cold['reload']:.2f} s;"
                          f" warm load {warm['load']:.2f} s reload {warm['reload']:.2f} s", flush=True)
    set_reuse("on")
    print(f"\nmedian of {args.repeats}; seconds per run; saved = warm (load + reload) without reuse - with it")
    print(f"{'model':14s} {'mode':5s} {'cold load':>9s} {'warm load':>9s} {'warm reload':>11s} {'saved/run':>9s}")
    for model in args.models:
        off = median(rows[(model, "off")], 1, "load") + median(rows[(model, "off")], 1, "reload")
        for mode in MODES:
            pairs = rows[(model, mode)]
            saved = off - median(pairs, 1, "load") - median(pairs, 1, "reload")
            print(f"{model:14s} {mode:5s} {median(pairs, 0, 'load'):9.2f} {median(pairs, 1, 'load'):9.2f} "
                  f"{median(pairs, 1, 'reload'):11.2f} {saved:9.2f}")


if __name__ == "__main__":
    main()
