"""Command line: parse -> load config -> run the sweep -> print the summary.

Exit codes: 0 every run completed; 1 some run failed (recorded in its metrics.json);
2 bad input (config, task, model, target modules, data files), found before any training.
"""

from __future__ import annotations

import argparse
import logging
import sys

from loraexp.config import (
    ABLATION_TYPES,
    OPTUNA_SAMPLERS,
    QUANT_METHODS,
    SWEEP_BACKENDS,
    SWEEP_MODES,
    WANDB_MODES,
    load_config,
    parse_set_overrides,
)
from loraexp.distributed import is_main_process
from loraexp.errors import LoraexpError

# CLI flag -> dotted config key
FLAG_KEYS = {
    "task": "task", "mode": "sweep.mode", "ablation_type": "sweep.ablation_type", "model": "model",
    "seed": "seed", "output_dir": "output_dir", "data_dir": "data_dir",
    "max_train_samples": "max_train_samples", "max_eval_samples": "max_eval_samples",
    "max_steps": "training.max_steps", "wandb": "tracking.wandb", "quantization": "quantization.method",
    "double_quant": "quantization.double_quant", "export_merged": "export_merged",
    "backend": "sweep.backend", "storage": "sweep.storage", "sampler": "sweep.sampler", "n_trials": "sweep.n_trials",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraexp", description="LoRA fine-tuning experiments (single runs, sweeps, ablations) on PEFT.",
        epilog="Flags override the YAML config; --set overrides both. Exit code 2 means bad input.")
    p.add_argument("--config", help="YAML config file (see configs/).")
    p.add_argument("--task", help="Task: sst2 | mrpc | rte | shakespeare | lima | gsm8k.")
    p.add_argument("--mode", choices=SWEEP_MODES, help="single run, lr x seed sweep, or ablation.")
    p.add_argument("--ablation-type", choices=ABLATION_TYPES, help="Which ablation with --mode ablation.")
    p.add_argument("--model", help="Model alias (minilm, smollm2-135m), Hub id or local directory.")
    p.add_argument("--seed", type=int, help="Run seed.")
    p.add_argument("--output-dir", help="Results root directory.")
    p.add_argument("--data-dir", help="Local data directory (else $LORAEXP_DATA_DIR, else the Hub).")
    p.add_argument("--max-train-samples", type=int, help="Training subset size (examples).")
    p.add_argument("--max-eval-samples", type=int, help="Evaluation subset size (examples).")
    p.add_argument("--max-steps", type=int, help="Optimizer steps (overrides epochs).")
    p.add_argument("--wandb", choices=WANDB_MODES, help="W&B mode.")
    p.add_argument("--quantization", choices=QUANT_METHODS, help="Quantize the frozen base (QLoRA: nf4).")
    p.add_argument("--double-quant", action="store_true", default=None,
                   help="4-bit double quantization (quantization.double_quant).")
    p.add_argument("--save-steps", type=int, help="Save a Trainer checkpoint every N optimizer steps (for --resume).")
    p.add_argument("--export-merged", action="store_true", default=None,
                   help="Save the merged model to <run>/merged after the merge check passes.")
    p.add_argument("--resume", action="store_true",
                   help="Continue unfinished runs from their last checkpoint (adapter, optimizer, scheduler, RNG).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override any config key, e.g. --set lora.r=32 --set training.learning_rate=3e-4.")
    p.add_argument("--rerun", action="store_true", help="Run again runs whose metrics.json says completed.")
    p.add_argument("--backend", choices=SWEEP_BACKENDS,
                   help="local: run here in order; optuna: work on a shared Optuna study (start on several "
                        "processes/machines).")
    p.add_argument("--storage", help="Optuna storage: journal file path or database URL (postgresql://...).")
    p.add_argument("--sampler", choices=OPTUNA_SAMPLERS, help="Optuna: grid (the sweep's runs) or tpe search.")
    p.add_argument("--n-trials", type=int, help="Optuna TPE: trials in the study (all workers together).")
    p.add_argument("--export-wandb-sweep", metavar="SWEEP_YAML",
                   help="Write a W&B grid sweep (and SWEEP_YAML's .base.yaml config beside it) instead of running; "
                        "then `wandb sweep SWEEP_YAML` and `wandb agent <id>` on each VM.")
    p.add_argument("--no-progress", action="store_true", help="Hide the sweep progress bar.")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python experiments/lora_finetune.py`` and the ``loraexp`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from loraexp.runner import run_sweep

    try:
        cli = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()}
        if args.save_steps is not None:
            cli.update({"training.save_strategy": "steps", "training.save_steps": args.save_steps})
        cfg = load_config(args.config, overrides=parse_set_overrides(args.overrides), cli=cli)
        if args.export_wandb_sweep:
            return _export(cfg, args.export_wandb_sweep)
        if cfg.sweep.backend == "optuna":
            from loraexp.optuna_backend import run_optuna

            result = run_optuna(cfg, resume=True)
        else:
            result = run_sweep(cfg, rerun=args.rerun, progress=not args.no_progress, resume=args.resume)
    except LoraexpError as exc:
        print(f"loraexp: error: {exc}", file=sys.stderr)
        return 2
    code = 0 if result.all_completed else 1
    if not is_main_process():  # under accelerate launch, rank 0 prints
        return code
    print(f"\nSweep {result.sweep_dir} ({len(result.runs)} runs):\n")
    print(result.summary_markdown)
    print(f"Summary written to {result.sweep_dir / 'summary.md'} and summary.csv")
    return code


def _export(cfg, path: str) -> int:
    from loraexp.wandb_sweep import export_wandb_sweep

    sweep_yaml, base_yaml = export_wandb_sweep(cfg, path)
    print(f"W&B sweep written to {sweep_yaml} (trials start from {base_yaml}).\n"
          f"Create it: wandb sweep {sweep_yaml}\nOn each VM, from the repository root: wandb agent <entity/project/id>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
