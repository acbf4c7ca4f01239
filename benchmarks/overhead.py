"""loraexp overhead: the same model, data and optimizer steps through loraexp (every
callback at its default cadence) and through a bare PEFT + Trainer script.

Prints two wall-time ratios, loraexp / bare (median over alternating repeats), each with its
target and MET or MISSED:
* training: the ``Trainer.train()`` call, which contains every loraexp callback (base
  fingerprints, gradient-flow checks, adapter statistics + factor SVD every 50 steps,
  history) — target <= 1.03;
* end to end: load, tokenize, train, evaluate, save — loraexp also runs what the bare script
  does not: the representation-drift probe, the adapter reload and merge-equivalence checks
  (on 2 x 16 examples; latency timing is off by default) — target <= 1.10.

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/overhead.py [--steps 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import transformers

from loraexp.config import build_config
from loraexp.recipe import run_experiment

TRAIN_TARGET = 1.03  # loraexp / bare, Trainer.train() wall time
END_TO_END_TARGET = 1.10  # loraexp / bare, load to saved adapter
TRAIN_SECONDS: list[float] = []
_real_train = transformers.Trainer.train


def _timed_train(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return _real_train(self, *args, **kwargs)
    finally:
        TRAIN_SECONDS.append(time.perf_counter() - start)


transformers.Trainer.train = _timed_train


def bare(cfg, out: str) -> float:
    """The PEFT + Trainer script a researcher would write by hand."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from loraexp.models import resolve_model
    from loraexp.tasks import get_task

    start = time.perf_counter()
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
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: task.compute_metrics(p.predictions, p.label_ids))
    trainer.train()
    trainer.evaluate()
    model.save_pretrained(os.path.join(out, "adapter"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="loraexp vs bare PEFT + Trainer wall time")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = {"bare": [], "loraexp": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(overrides={"output_dir": tmp, "training.max_steps": args.steps,
                                      "max_train_samples": args.steps * 32, "tracking.wandb": "disabled"})
        for i in range(args.repeats):
            for kind in ("bare", "loraexp"):
                out = os.path.join(tmp, f"{kind}-{i}")
                start = time.perf_counter()
                if kind == "bare":
                    bare(cfg, out)
                else:
                    result = run_experiment(cfg, out, "overhead")
                    assert result.status == "completed", result.metrics.get("error")
                rows[kind].append((TRAIN_SECONDS[-1], time.perf_counter() - start))
                print(f"{kind:8s} repeat {i}: train {rows[kind][-1][0]:.1f} s, end to end {rows[kind][-1][1]:.1f} s",
                      flush=True)
    med = {k: (statistics.median(t for t, _ in v), statistics.median(e for _, e in v)) for k, v in rows.items()}
    ratio_train = med["loraexp"][0] / med["bare"][0]
    ratio_e2e = med["loraexp"][1] / med["bare"][1]
    print(f"\nMiniLM + SST-2, {args.steps} optimizer steps x batch {cfg.training['per_device_train_batch_size']}, "
          f"median of {args.repeats}")
    print(f"training wall time: bare {med['bare'][0]:.1f} s, loraexp {med['loraexp'][0]:.1f} s, "
          f"ratio {ratio_train:.3f} (target <= {TRAIN_TARGET}: {'MET' if ratio_train <= TRAIN_TARGET else 'MISSED'})")
    print(f"end-to-end wall time: bare {med['bare'][1]:.1f} s, loraexp {med['loraexp'][1]:.1f} s, "
          f"ratio {ratio_e2e:.3f} (target <= {END_TO_END_TARGET}: "
          f"{'MET' if ratio_e2e <= END_TO_END_TARGET else 'MISSED'}; loraexp adds the drift probe and the "
          f"reload and merge checks)")


if __name__ == "__main__":
    main()
