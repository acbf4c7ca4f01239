"""Where loraexp's training time could differ from the bare PEFT + Trainer script's, measured
in one process so that the machine's drift (~10% within minutes on a shared 2-core VM) does
not decide: the parts of ``benchmarks/overhead.py``'s training comparison, alternating.

1. forward + backward of the model loraexp builds (``LoraRecipe`` up to the adapter) and of the
   bare script's model on the same 6 training batches of 32, ``--repeats`` times each after one
   warm-up pass each;
2. ``Trainer.train()`` of loraexp's Trainer (its data, collator, arguments and every callback)
   and of the bare script's Trainer, ``--steps`` optimizer steps, ``--repeats`` times each.

Prints the medians and their ratio, loraexp / bare, and every timing (ABBA order).

    LORAEXP_DATA_DIR=../shared/data .venv/bin/python benchmarks/overhead_parts.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def forward_backward(model, batches) -> None:
    """One training-mode forward and backward pass per batch (gradients accumulate; no step)."""
    model.train()
    for batch in batches:
        model(**batch).loss.backward()


def main() -> None:
    from overhead import bare_trainer
    from transformers import Trainer

    from loraexp.config.load import build_config
    from loraexp.run.recipe import LoraRecipe

    parser = argparse.ArgumentParser(description="loraexp vs bare: model and Trainer, side by side in one process")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per Trainer.train()")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of each part")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.mkdtemp()
    cfg = build_config(overrides={"output_dir": tmp, "training.max_steps": args.steps, "max_train_samples": 3200,
                                  "tracking.wandb": "disabled"})
    recipe = LoraRecipe(cfg, os.path.join(tmp, "loraexp"), "loraexp", [])
    plan = recipe.start(False)
    data = recipe.load_data()
    base = recipe.load_model(data)
    tuned = recipe.attach_adapter(data, base)
    recipe.build_trainer(data, base, tuned, plan)

    bare = bare_trainer(cfg, os.path.join(tmp, "bare"))
    model, train = bare.model, bare.train_dataset
    batches = [bare.data_collator([train[i] for i in range(j * 32, (j + 1) * 32)]) for j in range(6)]
    parts = {"forward + backward, 6 batches of 32": {"bare": model, "loraexp": tuned.model},
             f"Trainer.train(), {args.steps} steps": {"bare": bare, "loraexp": recipe.trainer}}
    for model_ in parts["forward + backward, 6 batches of 32"].values():
        forward_backward(model_, batches)  # warm-up: the first pass allocates what later ones reuse
    for part, runs in parts.items():
        seconds: dict[str, list[float]] = {"bare": [], "loraexp": []}
        for i in range(args.repeats):
            for kind in ("bare", "loraexp") if i % 2 == 0 else ("loraexp", "bare"):
                start = time.perf_counter()
                if isinstance(runs[kind], Trainer):
                    runs[kind].train()  # Trainer.train(): the whole training run
                else:
                    forward_backward(runs[kind], batches)
                seconds[kind].append(time.perf_counter() - start)
        med = {kind: statistics.median(v) for kind, v in seconds.items()}
        print(f"{part}: bare {med['bare']:.2f} s, loraexp {med['loraexp']:.2f} s, ratio "
              f"{med['loraexp'] / med['bare']:.3f} (median of {args.repeats}; bare "
              f"{', '.join(f'{s:.2f}' for s in seconds['bare'])}; loraexp "
              f"{', '.join(f'{s:.2f}' for s in seconds['loraexp'])})", flush=True)


if __name__ == "__main__":
    main()
