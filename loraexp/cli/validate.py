"""The command line of ``loraexp validate`` (:mod:`loraexp.run.checklist` holds the checklist):
parse the flags and the config as ``loraexp`` does, check what can be checked before loading
the model (flags, data files, method and quantization on this device, the ``peft.LoraConfig``),
load the base and one batch of the task (or synthetic tokens), run the checklist and print it
(``--json`` for CI).

Exit codes: 0 every check passed; 1 a check failed or could not run; 2 bad input, reported
before the model is loaded where possible. Imports nothing heavy at module level, so
``--help`` and bad-input errors are instant.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import sys
import time
from typing import Any

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError, LoraexpError
from loraexp.run.checklist import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    DEFAULT_STEPS,
    SYNTHETIC_LABELS,
    Inputs,
    run_checks,
)
from loraexp.run.checklist_report import Report

logger = logging.getLogger(__name__)

# -- the command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from loraexp.tasks import TASK_NAMES  # the registry only: cheap

    p = argparse.ArgumentParser(
        prog="loraexp validate",
        description="Check a model + LoRA config before spending GPU hours: adapters applied, trainable parameters, "
                    "frozen base, gradient flow, falling training loss, LoRA parameters changed, save/load round "
                    "trip, merge equivalence, peak memory. One line per check; on a few real batches with --task, "
                    "else on synthetic tokens.",
        epilog="Exit codes: 0 every check passed, 1 a check failed or could not run, 2 bad input. "
               "See docs/validate.md.")
    p.add_argument("--model", default=None, help="Model alias (minilm, smollm2-135m), Hub id or local directory "
                                                 "[model; default: the config's, minilm].")
    p.add_argument("--task", default=None,
                   help=f"Train on a batch of this task's training split ({', '.join(TASK_NAMES)}; its data from "
                        "--data-dir, data_dir or $LORAEXP_DATA_DIR); without it (and without `task` in --config or "
                        "--set), on synthetic tokens.")
    p.add_argument("--config", metavar="YAML", help="YAML config file (as for loraexp).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override any config key, as for loraexp, e.g. --set lora.target_modules=all-linear "
                        "--set lora.r=16.")
    p.add_argument("--quantization", default=None, metavar="METHOD",
                   help="Quantize the frozen base: none | nf4 | fp4 | int8 [quantization.method].")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="Directory with local task files [data_dir].")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                   help=f"Optimizer steps on the fixed batch (>= 2 and >= verification.grad_flow_steps; default "
                        f"{DEFAULT_STEPS}).")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"Rows in the batch (default {DEFAULT_BATCH_SIZE}).")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, metavar="N",
                   help=f"Tokens per row: task rows are truncated to it, synthetic rows have exactly it (default "
                        f"{DEFAULT_MAX_LENGTH}); squad_v2 windows use max_seq_length instead.")
    p.add_argument("--max-trainable-pct", type=float, default=None, metavar="PCT",
                   help="Fail the trainable-parameters check above this percentage of all parameters, e.g. 0.3 "
                        "(0 < PCT <= 100; default: no target).")
    p.add_argument("--json", action="store_true", help="Print the checklist as one JSON object (for CI).")
    p.add_argument("--verbose", action="store_true", help="Show third-party warnings and log messages.")
    return p


def check_args(args: argparse.Namespace, cfg: ExperimentConfig) -> None:
    """The flags' values, against the config.

    Raises:
        ConfigError: every bad value at once, naming the flag, the value and what is allowed.
    """
    from loraexp.config.methods import is_lora

    problems = []
    least = max(2, cfg.verification.grad_flow_steps)
    if args.steps < least:
        problems.append(f"`--steps` must be an int >= {least}, got {args.steps} (the loss check compares the first "
                        f"and last step; lora_A's gradient is non-zero only once lora_B has moved, and "
                        f"verification.grad_flow_steps is {cfg.verification.grad_flow_steps})")
    if args.batch_size < 1:
        problems.append(f"`--batch-size` must be a positive int, got {args.batch_size}")
    if args.max_length < 2:
        problems.append(f"`--max-length` must be an int >= 2 (tokens per row), got {args.max_length}")
    pct = args.max_trainable_pct
    if pct is not None and not (math.isfinite(pct) and 0 < pct <= 100):
        problems.append(f"`--max-trainable-pct` must be a percentage in (0, 100], got {pct}")
    if not is_lora(cfg.method):
        problems.append(f"`method` {cfg.method!r} has no adapter to validate; allowed: a LoRA method (lora, rslora, "
                        "dora, pissa, olora, lora-plus, loftq, eva)")
    if problems:
        raise ConfigError(problems)


def _task_requested(args: argparse.Namespace, overrides: dict[str, Any]) -> bool:
    """Whether a task was asked for (``--task``, ``--set task=...``, or ``task`` in
    ``--config``); otherwise the batch is synthetic."""
    from loraexp.config.load import read_yaml

    return args.task is not None or "task" in overrides or bool(args.config and "task" in read_yaml(args.config))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``loraexp validate`` (dispatched from :func:`loraexp.cli.main.main`)."""
    args = build_parser().parse_args(argv)
    from loraexp.cli import console
    from loraexp.config.load import load_config, parse_set_overrides
    from loraexp.config.precision import resolve_device_defaults

    console.configure(verbose=args.verbose)
    try:
        overrides = parse_set_overrides(args.overrides)
        cli = {"model": args.model, "task": args.task, "data_dir": args.data_dir,
               "quantization.method": args.quantization}
        cfg = resolve_device_defaults(load_config(args.config, overrides=overrides, cli=cli))
        check_args(args, cfg)
        report = validate(cfg, use_task=_task_requested(args, overrides), steps=args.steps,
                          batch_size=args.batch_size, max_length=args.max_length,
                          max_trainable_pct=args.max_trainable_pct)
    except LoraexpError as exc:
        print(f"loraexp validate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return report.exit_code


# -- loading -----------------------------------------------------------------------------------
def validate(cfg: ExperimentConfig, use_task: bool = False, steps: int = DEFAULT_STEPS,
             batch_size: int = DEFAULT_BATCH_SIZE, max_length: int = DEFAULT_MAX_LENGTH,
             max_trainable_pct: float | None = None) -> Report:
    """Load the model and a batch (:func:`load_inputs`) and run the checklist
    (:func:`run_checks`); time it (wall seconds, loading included).

    Raises:
        ConfigError | DataError | ModelError: bad input, before any training.
    """
    started = time.perf_counter()
    check_files(cfg, use_task)
    from loraexp.run.callbacks.efficiency import reset_peak_memory  # torch, transformers

    reset_peak_memory()
    inputs = load_inputs(cfg, use_task, batch_size, max_length)
    checks = run_checks(cfg, inputs, steps, max_trainable_pct)
    return Report(model=cfg.model, objective=inputs.task_type, data=inputs.data, steps=steps,
                  learning_rate=cfg.training["learning_rate"], method=cfg.method,
                  quantization=cfg.quantization.method + ("-dq" if _double_quant(cfg) else ""), lora=dict(cfg.lora),
                  checks=checks,
                  seconds=time.perf_counter() - started)


def _double_quant(cfg: ExperimentConfig) -> bool:
    """Whether a 4-bit base quantizes its quantization constants too (named ``nf4-dq`` as in the
    quantization ablation)."""
    return cfg.quantization.method in ("nf4", "fp4") and cfg.quantization.double_quant


def check_files(cfg: ExperimentConfig, use_task: bool) -> None:
    """What pre-flight checks before any heavy import: a model path that is not a directory, and
    (with a task) missing data files.

    Raises:
        ModelError | DataError: naming the path.
    """
    from loraexp.model.load import MODEL_ALIASES, resolve_model
    from loraexp.tasks import FORMS
    from loraexp.tasks.base import check_files_exist

    if cfg.model not in MODEL_ALIASES:
        resolve_model(cfg.model)
    if use_task:
        for form in FORMS[cfg.task].values():  # the forms of a task read the same files
            check_files_exist(form, cfg.resolved_data_dir())


def load_inputs(cfg: ExperimentConfig, use_task: bool, batch_size: int, max_length: int) -> Inputs:
    """Check what can be checked without the model (the method and quantization on this device,
    the model's config, the task's data, the ``peft.LoraConfig``), then load the base (as a run
    loads it) and one batch: the first ``batch_size`` rows of the task's training split (drawn with
    ``data_seed``, as a run's subset), tokenized to at most ``max_length`` tokens, or synthetic
    tokens (uniform over the vocabulary, seeded with ``seed``; labels: the tokens themselves for
    a causal LM, random classes for an encoder's fresh 2-way head).

    Raises:
        ConfigError | DataError | ModelError: unknown task or model, missing data files, a quantization
            or method this device cannot run, ``lora`` fields PEFT rejects, target-module presets
            unknown for the architecture.
    """
    import torch
    from transformers import set_seed

    from loraexp.model.load import SEQ_CLS, load_base, load_model_config, model_task_type
    from loraexp.sweep.preflight import check_adapter_setup
    from loraexp.tasks import configured_task
    from loraexp.tasks.causal_lm import CausalLMTask
    from loraexp.tasks.data_cache import select
    from loraexp.tasks.sst2 import SST2

    set_seed(cfg.seed)  # as a run seeds before loading: a fresh classification head is reproducible
    cuda = torch.cuda.is_available()
    model_config = load_model_config(cfg.model, cfg.trust_remote_code)
    model_type = model_task_type(model_config)
    task = rows = None
    if use_task:
        task = configured_task(cfg, model_type)
        rows = select(_train_split(task, cfg.resolved_data_dir()), batch_size, seed=cfg.data_seed)
        if task.windows_per_example:  # a question and a context need a run's window length, not --max-length
            max_length = cfg.max_seq_length
    task_type = task.task_type if task else model_type
    num_labels = task.num_labels if task else (SYNTHETIC_LABELS if task_type == SEQ_CLS else 0)
    check_adapter_setup(cfg, load_model_config(cfg.model, cfg.trust_remote_code), task_type, num_labels)

    quantized = cfg.quantization.method != "none"
    logger.info("loading %s%s ...", cfg.model, f" ({cfg.quantization.method})" if quantized else "")
    model, tokenizer = load_base(cfg, task_type, num_labels)
    if not quantized:  # a quantized base is placed by load_base (device_map)
        model.to("cuda" if cuda else "cpu")
    device = model.device
    if task is not None:
        tokenized = select(task.tokenize(rows, tokenizer, max_length), batch_size)
        accepted = inspect.signature(model.forward).parameters  # as the Trainer drops columns the model lacks
        tokenized = tokenized.remove_columns([c for c in tokenized.column_names if c not in accepted])
        batch = task.collator(tokenizer)([tokenized[i] for i in range(len(tokenized))])
        tokens = int(batch["attention_mask"].sum())
        data = (f"{cfg.task} train split, {len(tokenized)} rows, {tokens} tokens (longest "
                f"{batch['input_ids'].shape[1]})")
        space = task.merge_space
        check_rows = task.merge_check_rows
    else:
        vocab = min(len(tokenizer), model.config.vocab_size)
        generator = torch.Generator().manual_seed(cfg.seed)
        ids = torch.randint(0, vocab, (batch_size, max_length), generator=generator)
        labels = ids.clone() if task_type != SEQ_CLS else torch.randint(0, num_labels, (batch_size,),
                                                                        generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        data = f"synthetic tokens, {batch_size} rows x {max_length} tokens"
        family = SST2 if task_type == SEQ_CLS else CausalLMTask  # where a task of the objective compares
        space, check_rows = family.merge_space, family.merge_check_rows
    if cfg.verification.merge_space != "auto":
        space = cfg.verification.merge_space

    def fresh_base(quantized: bool):
        fresh = load_base(cfg, task_type, num_labels, quantized=quantized)[0]
        return fresh if quantized else fresh.to(device)

    return Inputs(model=model, batch={k: v.to(device) for k, v in batch.items()}, task_type=task_type, space=space,
                  check_rows=check_rows, fresh_base=fresh_base, data=data)


def _train_split(task, data_dir: str | None):
    """The task's raw training split, from ``data_dir`` or the Hub.

    Raises:
        DataError: a local file is missing, malformed or empty, or the Hub could not provide the
            split (offline machines need a data directory).
    """
    from loraexp.errors import DataError

    try:
        return task.load_split("train", data_dir)
    except LoraexpError:
        raise
    except Exception as exc:  # datasets' own errors (no network, no such dataset)
        raise DataError(f"`task` {task.name!r}: the training split could not be loaded from the Hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); give a data "
                        "directory with --data-dir, `data_dir` or $LORAEXP_DATA_DIR") from None
