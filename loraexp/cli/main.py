"""Command line: parse -> load config -> run the sweep -> print the summary.

The flags and their ``--help`` are generated from the config schema (:mod:`loraexp.config.schema`):
every field whose metadata names a ``flag`` becomes one, with the field's help text, type,
allowed values and default; every other field is reached with ``--set key=value``. Only
:data:`TRAINING_FLAGS` (pass-through ``TrainingArguments`` fields), the ``--fast`` preset
(:func:`loraexp.run.device.fast_overrides`) and the actions (``--resume``, ``--rerun``, ...)
are declared here.

Exit codes: 0 every run completed; 1 some run failed (recorded in its metrics.json);
2 bad input (config, task, model, target modules, data files), found before any training.
``loraexp report SWEEP_DIR`` writes a sweep's report (:mod:`loraexp.cli.report`); every sweep
ends with it unless ``--no-report``. ``loraexp validate ...`` runs the pre-flight checklist of one
model and LoRA config (:mod:`loraexp.cli.validate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Iterator
from typing import Any

from loraexp.config.schema import FAST_HELP, ExperimentConfig
from loraexp.errors import DiskFullError, LoraexpError
from loraexp.run.preemption import Preempted

# Pass-through TrainingArguments fields with a flag: flag -> (dotted key, type, help)
TRAINING_FLAGS = {
    "--max-steps": ("training.max_steps", int, "Optimizer steps (overrides training.num_train_epochs)."),
    "--save-steps": ("training.save_steps", int, "Save a Trainer checkpoint every N optimizer steps (sets "
                                                 "training.save_strategy: steps), for --resume."),
}


def schema_flags(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, str, dataclasses.Field, Any]]:
    """``(flag, dotted key, field, type hint)`` of every schema field promoted to a flag."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from schema_flags(hints[f.name], f"{prefix}{f.name}.")
        elif "flag" in f.metadata:
            yield f.metadata["flag"], f"{prefix}{f.name}", f, hints[f.name]


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _scalar_type(hint: Any) -> Any:
    """The argparse ``type`` of a flag: the hint without None; a list becomes comma-separated
    values of its element type (``--seeds 42,1337,2024``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if args and typing.get_origin(hint) is not list else hint
    if typing.get_origin(hint) is list:
        element = typing.get_args(hint)[0]

        def comma_separated(text: str) -> list:
            try:
                return [element(part) for part in text.split(",")]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated {element.__name__} values, e.g. 42,1337,2024, got {text!r}") from None

        comma_separated.__name__ = f"comma-separated {element.__name__} list"
        return comma_separated
    return hint


def _metavar(flag: str, f: dataclasses.Field) -> str | None:
    """``{a,b}`` for a field with choices (argparse's own), else the flag's name in capitals."""
    return None if "choices" in f.metadata else flag.lstrip("-").upper().replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    """The ``loraexp`` argument parser; config flags default to None (= not given, so the YAML
    value or the schema default stays)."""
    p = argparse.ArgumentParser(
        prog="loraexp", description="LoRA fine-tuning experiments (single runs, sweeps, ablations) on PEFT.",
        epilog="Precedence: schema defaults < --config YAML < flags < --set. Every config key is listed in "
               "docs/configuration.md. Exit codes: 0 all runs completed, 1 some run failed, 2 bad input. "
               "Reports: loraexp report SWEEP_DIR [--confirm] (see loraexp report --help). Checklist of a model and "
               "LoRA config before training: loraexp validate --model M [--set ...] (see loraexp validate --help).")
    p.add_argument("--config", metavar="YAML", help="YAML config file (see configs/).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override any config key; values are YAML, e.g. --set lora.r=32 "
                        "--set training.learning_rate=3e-4 --set lora.target_modules=[query,value].")
    config = p.add_argument_group("config (each flag sets the config key in brackets)")
    for flag, key, f, hint in schema_flags():
        text = f"{f.metadata['help']} [{key}; default: {_default(f)}]"
        if _scalar_type(hint) is bool:
            config.add_argument(flag, dest=key, action="store_true", default=None, help=text)
        else:
            config.add_argument(flag, dest=key, type=_scalar_type(hint), choices=f.metadata.get("choices"),
                                default=None, metavar=_metavar(flag, f), help=text)
    for flag, (key, kind, text) in TRAINING_FLAGS.items():
        config.add_argument(flag, dest=key, type=kind, default=None, metavar="N", help=f"{text} [{key}]")
    config.add_argument("--fast", action="store_true", help=f"{FAST_HELP} [training.bf16 or training.fp16]")
    actions = p.add_argument_group("actions")
    actions.add_argument("--resume", action="store_true",
                         help="Continue unfinished runs from their last checkpoint (adapter, optimizer, scheduler, "
                              "RNG state).")
    actions.add_argument("--rerun", action="store_true", help="Run again runs whose metrics.json says completed.")
    actions.add_argument("--export-wandb-sweep", metavar="SWEEP_YAML",
                         help="Write a W&B grid sweep (and SWEEP_YAML's .base.yaml config beside it) instead of "
                              "running; then `wandb sweep SWEEP_YAML` and `wandb agent <id>` on each VM.")
    console = p.add_argument_group("console")
    console.add_argument("--no-progress", action="store_true", help="Hide the sweep progress bar.")
    console.add_argument("--no-report", action="store_true",
                         help="Do not write the sweep report (report.md, report.html, figures/) at the end; "
                              "`loraexp report SWEEP_DIR` writes it later.")
    console.add_argument("--verbose", action="store_true",
                         help="Show the Trainer's log dicts and every third-party warning and log message.")
    return p


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config keys given on the command line (flags left out are None)."""
    keys = [key for _, key, _, _ in schema_flags()] + [key for key, _, _ in TRAINING_FLAGS.values()]
    values = {key: getattr(args, key) for key in keys}
    if values.get("training.save_steps") is not None:
        values["training.save_strategy"] = "steps"
    if getattr(args, "fast", False):
        from loraexp.run.device import fast_overrides

        values.update(fast_overrides())
    return values


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The resolved config of parsed command-line arguments: defaults < ``--config`` YAML <
    flags < ``--set`` (:func:`loraexp.config.load.load_config`).

    Raises:
        ConfigError: any problem with a value, named with the field and what is allowed.
    """
    from loraexp.config.load import load_config, parse_set_overrides

    return load_config(args.config, overrides=parse_set_overrides(args.overrides), cli=flag_values(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python experiments/lora_finetune.py`` and the ``loraexp`` script;
    ``loraexp report ...`` goes to :func:`loraexp.cli.report.main`, ``loraexp validate ...`` to
    :func:`loraexp.cli.validate.main`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        from loraexp.cli.report import main as report_main

        return report_main(argv[1:])
    if argv[:1] == ["validate"]:
        from loraexp.cli.validate import main as validate_main

        return validate_main(argv[1:])
    args = build_parser().parse_args(argv)
    from loraexp.cli import console
    from loraexp.run.distributed import is_main_process

    console.configure(verbose=args.verbose)
    try:
        cfg = config_from_args(args)
        if args.export_wandb_sweep:
            return _export(cfg, args.export_wandb_sweep)
        if cfg.sweep.backend == "optuna":
            from loraexp.sweep.optuna_backend import run_optuna

            result = run_optuna(cfg, resume=True)
        else:
            from loraexp.sweep.runner import run_sweep

            result = run_sweep(cfg, rerun=args.rerun, progress=not args.no_progress, resume=args.resume)
    except Preempted as exc:  # the run in progress saved a checkpoint and the summary is written
        print(f"loraexp: {exc}; the summary is written and a run stopped while training is recorded interrupted "
              "with its checkpoint: rerun the same command to continue (bit-identical on CPU)", file=sys.stderr)
        return exc.exit_code
    except DiskFullError as exc:
        print(f"loraexp: error: {exc}", file=sys.stderr)
        return 1
    except LoraexpError as exc:
        print(f"loraexp: error: {exc}", file=sys.stderr)
        return 2
    code = 0 if result.all_completed else 1
    if is_main_process():  # under accelerate launch, rank 0 prints
        console.print_summary(result)
        if not args.no_report:
            _report(result.sweep_dir, result.comparison)
    return code


def _report(sweep_dir, comparison) -> None:
    """Write the sweep report (from the comparison the summary just computed); a failure is
    logged and leaves the sweep's exit code alone."""
    import logging

    from loraexp.cli.report import run_report

    try:
        run_report(str(sweep_dir), comparison=comparison)
    except Exception as exc:  # noqa: BLE001 -- the runs and summary are written; the report is extra
        logging.getLogger(__name__).error("the report of %s was not written: %s: %s", sweep_dir,
                                          type(exc).__name__, exc)


def _export(cfg: ExperimentConfig, path: str) -> int:
    from loraexp.sweep.wandb_sweep import export_wandb_sweep

    sweep_yaml, base_yaml = export_wandb_sweep(cfg, path)
    print(f"W&B sweep written to {sweep_yaml} (trials start from {base_yaml}).\n"
          f"Create it: wandb sweep {sweep_yaml}\nOn each VM, from the repository root: wandb agent <entity/project/id>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
