"""loraexp overhead: the same model, data and optimizer steps through loraexp (every
callback at its default cadence) and through a bare PEFT + Trainer script.

Prints two wall-time ratios, loraexp / bare (the geometric mean over the repeats' pairs, with
its 95% t interval), each with its target and MET or MISSED:
* training: the ``Trainer.train()`` call, which contains every loraexp callback (base
  fingerprints, gradient-flow checks, adapter statistics + factor SVD every 50 steps,
  history) — target <= 1.03;
* end to end: load, tokenize, train, evaluate, save — loraexp also runs what the bare script
  does not: the representation-drift probe (the base model's pass over 256 dev examples; the
  trained model's states come from the evaluation pass), the adapter reload and
  merge-equivalence checks (on 2 x 16 examples; latency timing is off by default) — target
  <= 1.10.

On a shared machine one run's wall time varies by about 10%, more than the training target,
so the script also times what loraexp adds inside ``Trainer.train()`` directly: the seconds
spent in callbacks and checkpoint saves, loraexp's minus the bare script's.

The runs alternate in ABBA order (bare, loraexp, loraexp, bare, ...), so a drift of the
machine's speed over the invocation weighs on both alike, and loraexp's in-process data cache
(:mod:`loraexp.tasks.data_cache`) is cleared before each of its runs:
every loraexp run pays what a single run pays, not what a later run of a sweep pays. An even
``--repeats`` keeps the order balanced (the README's figures: 6).

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/overhead.py [--steps 100] [--repeats 4]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import torch
import transformers
from scipy import stats
from transformers.trainer_callback import CallbackHandler

from loraexp.config.load import build_config
from loraexp.run.recipe import run_experiment
from loraexp.tasks import data_cache

TRAIN_TARGET = 1.03  # loraexp / bare, Trainer.train() wall time
END_TO_END_TARGET = 1.10  # loraexp / bare, load to saved adapter
TRAIN_SECONDS: list[float] = []
# Inside each Trainer.train(): seconds in the callbacks (every event of every callback, the
# Trainer's own progress bar included) and in checkpoint saves. loraexp's minus the bare
# script's is what loraexp adds to training, timed directly rather than as the difference of two
# noisy wall times.
CALLBACK_SECONDS: list[float] = []
SAVE_SECONDS: list[float] = []


def _timed(function, totals: list[float], start_new: bool = False):
    """``function`` with its seconds added to ``totals[-1]`` when called inside a
    ``Trainer.train()``; ``start_new``: it is ``Trainer.train`` itself, which opens a new entry
    in each list."""
    def timed(*args, **kwargs):
        inside = bool(TRAIN_SECONDS) and TRAIN_SECONDS[-1] is None
        if start_new:
            TRAIN_SECONDS.append(None)
            CALLBACK_SECONDS.append(0.0)
            SAVE_SECONDS.append(0.0)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if start_new:
                TRAIN_SECONDS[-1] = time.perf_counter() - start
            elif inside:
                totals[-1] += time.perf_counter() - start
    return timed


def install_timers() -> None:
    """Time every ``Trainer.train()`` and, inside it, the callbacks and checkpoint saves."""
    transformers.Trainer.train = _timed(transformers.Trainer.train, TRAIN_SECONDS, start_new=True)
    CallbackHandler.call_event = _timed(CallbackHandler.call_event, CALLBACK_SECONDS)
    transformers.Trainer._save_checkpoint = _timed(transformers.Trainer._save_checkpoint, SAVE_SECONDS)


def paired_ratio(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Geometric mean of loraexp / bare over the repeats' pairs and its 95% t interval
    (scipy.stats.t on the log ratios); NaN bounds with one pair."""
    logs = [math.log(lx / bare) for bare, lx in pairs]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.nan, math.nan
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def bare_trainer(cfg, out: str):
    """The ``Trainer`` of the PEFT + Trainer script a researcher would write by hand: the task's
    splits (training subsampled with ``data_seed`` as loraexp does), the pretrained model with
    LoRA on query and value, ``cfg.training`` as ``TrainingArguments``, seeded with ``cfg.seed``."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from loraexp.model.load import resolve_model
    from loraexp.tasks import get_task

    set_seed(cfg.seed)
    task = get_task(cfg.task)
    path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = task.load_split("train", cfg.resolved_data_dir()).shuffle(seed=cfg.data_seed).select(
        range(cfg.max_train_samples))
    dev = task.load_split("validation", cfg.resolved_data_dir())
    train, dev = (task.tokenize(d, tokenizer, cfg.max_seq_length) for d in (train, dev))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=cfg.lora["r"], lora_alpha=cfg.lora["lora_alpha"],
                                             lora_dropout=cfg.lora["lora_dropout"], target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=out, seed=cfg.seed, report_to="none", **cfg.training)
    return Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                   data_collator=DataCollatorWithPadding(tokenizer),
                   compute_metrics=lambda p: task.compute_metrics(p.predictions, p.label_ids))


def bare(cfg, out: str) -> float:
    """The bare script end to end (:func:`bare_trainer`: load, tokenize; train, evaluate, save
    the adapter); its wall time in seconds."""
    start = time.perf_counter()
    trainer = bare_trainer(cfg, out)
    trainer.train()
    trainer.evaluate()
    trainer.model.save_pretrained(os.path.join(out, "adapter"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="loraexp vs bare PEFT + Trainer wall time")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each, alternating in ABBA order")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.repeats < 2 or args.repeats % 2:
        parser.error(f"--repeats must be an even number >= 2 (ABBA order), got {args.repeats}")
    torch.set_num_threads(os.cpu_count() or 1)
    install_timers()
    rows = {"bare": [], "loraexp": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(overrides={"output_dir": tmp, "training.max_steps": args.steps,
                                      "max_train_samples": args.steps * 32, "tracking.wandb": "disabled"})
        for i in range(args.repeats):
            for kind in ("bare", "loraexp") if i % 2 == 0 else ("loraexp", "bare"):
                out = os.path.join(tmp, f"{kind}-{i}")
                data_cache.clear()
                start = time.perf_counter()
                if kind == "bare":
                    bare(cfg, out)
                else:
                    result = run_experiment(cfg, out, "overhead")
                    assert result.status == "completed", result.record.error
                rows[kind].append((TRAIN_SECONDS[-1], time.perf_counter() - start, CALLBACK_SECONDS[-1],
                                   SAVE_SECONDS[-1]))
                print(f"{kind:8s} repeat {i}: train {rows[kind][-1][0]:.1f} s (callbacks {rows[kind][-1][2]:.2f} s, "
                      f"checkpoint saves {rows[kind][-1][3]:.2f} s), end to end {rows[kind][-1][1]:.1f} s", flush=True)
    med = {k: [statistics.median(run[j] for run in v) for j in range(4)] for k, v in rows.items()}
    print(f"\nMiniLM + SST-2, {args.steps} optimizer steps x batch {cfg.training['per_device_train_batch_size']}, "
          f"median of {args.repeats} runs each; ratio = geometric mean of the {args.repeats} pairs "
          f"[95% t interval]")
    for label, j, target in (("training", 0, TRAIN_TARGET), ("end-to-end", 1, END_TO_END_TARGET)):
        ratio, low, high = paired_ratio([(b[j], lx[j]) for b, lx in zip(rows["bare"], rows["loraexp"])])
        print(f"{label} wall time: bare {med['bare'][j]:.1f} s, loraexp {med['loraexp'][j]:.1f} s, ratio {ratio:.3f} "
              f"[{low:.3f}, {high:.3f}] (target <= {target}: {'MET' if ratio <= target else 'MISSED'})")
    added = (med["loraexp"][2] - med["bare"][2]) + (med["loraexp"][3] - med["bare"][3])
    print(f"inside Trainer.train(), timed directly: callbacks bare {med['bare'][2]:.2f} s, loraexp "
          f"{med['loraexp'][2]:.2f} s; checkpoint saves bare {med['bare'][3]:.2f} s, "
          f"loraexp {med['loraexp'][3]:.2f} s: "
          f"loraexp adds {added:.2f} s = {added / med['bare'][0]:.1%} of the bare training time")


if __name__ == "__main__":
    main()
