"""``loraexp validate``: the research plan's "validate implementation" checklist for one model
and LoRA config, run in under a minute on a 2-core CPU before GPU hours are spent
(docs/validate.md).

    loraexp validate --model smollm2-135m --set lora.target_modules=all-linear [--quantization nf4]

On the real model, with one fixed batch of the chosen task (``--task``) or of synthetic tokens,
it runs a run's own stages: the adapter attached by the run's strategy
(:meth:`loraexp.run.strategies.LoraStrategy.attach`: the method's fields, EVA, the initial
adapter of a base-rewriting initialisation), ``--steps`` optimizer steps of a
``transformers.Trainer`` with the run's verification callbacks (frozen base, gradient flow) and
its TrainingArguments (:func:`loraexp.run.training_args.training_arguments`; the learning rate
constant, no warmup, so that lora_B moves at step 1), then the run's save and its reload and
merge checks (:meth:`~loraexp.run.strategies.LoraStrategy.save`,
:meth:`~loraexp.run.strategies.LoraStrategy.verify`). One line per check
(:data:`CHECK_NAMES`): adapters applied, trainable parameters (against
``--max-trainable-pct``), base frozen, gradient flow, training loss, LoRA parameters changed,
base unchanged, save/load round trip, merge equivalence, and peak memory (information).

This module is the checklist on a loaded model and batch (:func:`run_checks`; tests give it
tiny models); :mod:`loraexp.cli.validate` parses the command line, runs pre-flight's checks,
loads the real model and a batch, and prints the result. A target-module list that matches
nothing is the failing check ``adapters applied`` (exit code 1). Imports nothing heavy at
module level.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError
from loraexp.run.checklist_report import (
    ADAPTERS,
    CHECK_NAMES,
    FAIL,
    FROZEN,
    GRAD_FLOW,
    INFO,
    LORA_CHANGED,
    LOSS,
    MEMORY,
    MERGE,
    NOT_RUN,
    PASS,
    ROUND_TRIP,
    TRAINABLE,
    UNCHANGED,
    Check,
    figure_number,
)

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 4
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_LENGTH = 32
SYNTHETIC_LABELS = 2  # classes of the synthetic labels of an encoder (a fresh 2-way head)


@dataclass
class Inputs:
    """What the checks run on.

    Attributes:
        model: the base model as loaded for training (quantized and prepared, if asked), on its
            device; LoRA is attached by :func:`run_checks`.
        batch: the fixed training batch, ``(rows, tokens)`` tensors with ``labels``, on the
            model's device.
        task_type: ``SEQ_CLS`` | ``CAUSAL_LM`` (``peft.TaskType`` value).
        space: where the round trip and the merge compare outputs (``logits`` | ``probs``).
        check_rows: rows of the batch the round trip and merge compare (None: all).
        fresh_base: ``fresh_base(quantized)`` loads the base again; the reload and merge checks
            take ``fresh_base(False)``, the full-precision original.
        data: what the batch is, for a person (``sst2 train: 4 rows, 31 tokens max``).
    """

    model: Any
    batch: dict[str, Any]
    task_type: str
    space: str
    check_rows: int | None
    fresh_base: Callable[[bool], Any]
    data: str


# -- the checks --------------------------------------------------------------------------------
def run_checks(cfg: ExperimentConfig, inputs: Inputs, steps: int = DEFAULT_STEPS,
               max_trainable_pct: float | None = None) -> list[Check]:
    """Attach LoRA to ``inputs.model``, take ``steps`` optimizer steps on ``inputs.batch`` and
    return the checklist, one :class:`Check` per name of :data:`CHECK_NAMES`, in that order.

    A stage that fails leaves the checks that need it ``not run`` (never passed): target
    modules matching nothing stop before anything else; an exception while training or
    checking is the failing check's figure.

    Args:
        cfg: the resolved config (``lora``, ``method``, ``seed``, ``training`` -- its optimizer
            settings; the schedule is constant --, ``verification`` tolerances, ``quantization``).
        steps: optimizer steps.
        max_trainable_pct: the trainable-parameters check fails above it (percent of all
            parameters); None: it only needs some trainable parameter.
    """
    validation = _Validation(cfg, inputs, steps, max_trainable_pct)
    validation.run()
    return validation.checklist()


@dataclass
class _FixedBatch:
    """The fixed batch as the task a run's strategy and Trainer expect: its rows, a collator
    that stacks them back, the objective and where outputs are compared."""

    inputs: Inputs

    @property
    def task_type(self) -> str:
        return self.inputs.task_type

    @property
    def merge_space(self) -> str:
        return self.inputs.space

    @functools.cached_property
    def rows(self) -> list[dict[str, Any]]:
        batch = self.inputs.batch
        # on the CPU: the Trainer moves each batch to the model's device (and pins CPU memory)
        return [{k: v[i].cpu() for k, v in batch.items()} for i in range(len(batch["input_ids"]))]

    def collator(self, tokenizer=None, pad_to_multiple_of=None) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        import torch

        return lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def training_defaults(self) -> dict[str, Any]:
        return {}


class _Validation:
    """The stages of :func:`run_checks` and the checks they produce."""

    def __init__(self, cfg: ExperimentConfig, inputs: Inputs, steps: int, max_trainable_pct: float | None):
        from loraexp.results.record import Verification
        from loraexp.run.strategies import LoraStrategy

        self.cfg, self.inputs, self.steps, self.max_pct = cfg, inputs, steps, max_trainable_pct
        self.checks: dict[str, Check] = {}
        self.quantized = cfg.quantization.method != "none"
        self.tmp = tempfile.TemporaryDirectory(prefix="loraexp-validate-")  # the saved adapters
        self.adapter_dir = Path(self.tmp.name) / "adapter"
        self.batch = _FixedBatch(inputs)
        self.strategy = LoraStrategy(cfg, Path(self.tmp.name), main=True)
        self.tuned = None  # the PEFT model, once attached and initialised
        self.verification = Verification()

    def run(self) -> None:
        stages = (  # each stage and the checks it produces
            (self.attach, (ADAPTERS, TRAINABLE)),
            (self.train, (LOSS, FROZEN, GRAD_FLOW, LORA_CHANGED, UNCHANGED)),  # training raised: the loss line says so
            (self.verify, (ROUND_TRIP, MERGE)),
        )
        for stage, names in stages:
            try:
                stage()
            except Exception as exc:  # noqa: BLE001 -- a stage that raises fails its checks, the rest still run
                pending = [n for n in names if n not in self.checks]
                logger.debug("validate: %s raised", stage.__name__, exc_info=True)
                if pending:
                    first_line = (str(exc).splitlines() or [""])[0][:300]
                    self.checks[pending[0]] = Check(pending[0], FAIL, f"{type(exc).__name__}: {first_line}")
                for name in pending[1:]:
                    self.checks[name] = Check(name, NOT_RUN, f"{pending[0]} raised an error")
            if self.tuned is None:  # no adapter: nothing else can run
                break
        try:
            self.memory()
        except Exception as exc:  # noqa: BLE001 -- a figure without a threshold: say why it is missing
            self.checks[MEMORY] = Check(MEMORY, INFO, f"not measured: {type(exc).__name__}: {exc}")
        finally:
            self.tmp.cleanup()

    def checklist(self) -> list[Check]:
        first_failed = next((c.name for c in self.checks.values() if c.status in (FAIL, NOT_RUN)), "an earlier check")
        return [self.checks.get(n) or Check(n, NOT_RUN, f"needs an adapter ({first_failed} failed)")
                for n in CHECK_NAMES]

    # -- stages -------------------------------------------------------------------------------
    def attach(self) -> None:
        """Adapters applied, and the parameter report."""
        from loraexp.analysis.params import parameter_report
        from loraexp.model.target_modules import matched_module_names, resolve_target_modules

        cfg, base = self.cfg, self.inputs.model
        targets = resolve_target_modules(cfg.lora["target_modules"], base.config.model_type)
        try:
            matched_module_names(base, targets)
        except ConfigError as exc:
            self.checks[ADAPTERS] = Check(ADAPTERS, FAIL, f"0 modules: {exc}", ">= 1 module",
                                          {"modules": 0, "target_modules": targets})
            return
        logger.info("attaching the adapter ...")
        self.tuned = self.strategy.attach(base, self.batch, self.batch.rows, tokenizer=None)
        model = self.tuned.model
        names = lora_module_names(model)
        groups = group_by_type(names)
        listed = ", ".join(f"{t} x{n}" for t, n in groups.items())
        self.checks[ADAPTERS] = Check(ADAPTERS, PASS if names else FAIL, f"{len(names)} modules: {listed or 'none'}",
                                      ">= 1 module", {"modules": len(names), "by_type": groups,
                                                           "target_modules": targets})
        report = parameter_report(model)
        # PEFT counts a packed 4-bit weight as the parameters it holds, so the percentage of a
        # 4-bit base is not overstated
        trainable, total = model.get_nb_trainable_parameters()
        report.update(total_params=total, trainable_params=trainable, trainable_pct=100.0 * trainable / total)
        pct = report["trainable_pct"]
        ok = trainable > 0 and (self.max_pct is None or pct <= self.max_pct)
        figure = (f"{trainable:,} of {total:,} ({pct:.3f}%); LoRA {report['lora_params']:,}"
                  + (f", head {report['head_params']:,}" if report["head_params"] else ""))
        self.checks[TRAINABLE] = Check(TRAINABLE, PASS if ok else FAIL, figure,
                                       f"<= {self.max_pct:g}%" if self.max_pct is not None else "> 0", report)

    def train(self) -> None:
        """``steps`` optimizer steps of a Trainer on the fixed batch, with the run's frozen-base
        and gradient-flow callbacks (a violation recorded, training going on), and the loss
        and LoRA-change checks around them."""
        import torch
        from transformers import Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from loraexp.analysis.params import is_lora_parameter
        from loraexp.config.methods import loraplus_optimizer
        from loraexp.run.callbacks.observe import LossRecorder, UntilFailure
        from loraexp.run.training_args import training_arguments

        cfg, model = self.cfg, self.tuned.model
        lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and is_lora_parameter(n)}
        run_callbacks = self.strategy.callbacks(self.tuned, {}, None, log=lambda metrics, step: None)
        frozen, grad_flow, losses = run_callbacks["frozen"], UntilFailure(run_callbacks["grad_flow"]), LossRecorder()
        frozen.stop = False
        rows = len(self.batch.rows)
        training = {**training_arguments(cfg, self.batch, self.strategy), "max_steps": self.steps,
                    "per_device_train_batch_size": rows, "gradient_accumulation_steps": 1, "num_train_epochs": 1,
                    "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_strategy": "steps", "logging_steps": 1,
                    "save_strategy": "no", "eval_strategy": "no", "eval_on_start": False,
                    "load_best_model_at_end": False, "push_to_hub": False, "disable_tqdm": True,
                    "dataloader_drop_last": False,
                    "dataloader_num_workers": 0, "dataloader_pin_memory": False}
        args = TrainingArguments(output_dir=str(Path(self.tmp.name) / "trainer"), seed=cfg.seed, report_to="none",
                                 **training)
        optimizer = loraplus_optimizer(model, training, cfg.method_options) if cfg.method == "lora-plus" else None
        trainer = Trainer(model=model, args=args, train_dataset=self.batch.rows, data_collator=self.batch.collator(),
                          callbacks=[frozen, grad_flow, losses], optimizers=(optimizer, None))
        for printer in (ProgressCallback, PrinterCallback):
            trainer.pop_callback(printer)
        logger.info("training %d steps ...", self.steps)
        trainer.train()
        model.eval()

        check = frozen.result
        requires, with_grad = check.base_requires_grad, check.base_with_grad
        figure = (f"{len(requires)} of {check.base_tensors} base tensors require grad; {len(with_grad)} got a gradient "
                  "in step 1")
        if requires or with_grad:
            figure += f", e.g. {(requires or with_grad)[:3]}"
        frozen_ok = check.base_tensors > 0 and not requires and not with_grad  # 0 of 0 observed nothing
        self.checks[FROZEN] = Check(FROZEN, PASS if frozen_ok else FAIL, figure, "none",
                                    {"base_tensors": check.base_tensors, "base_requires_grad": requires[:20],
                                     "base_with_grad": with_grad[:20]})
        self.checks[GRAD_FLOW] = self._grad_flow_check(grad_flow.callback.result, grad_flow.error)
        self.checks[LOSS] = self._loss_check(losses.values)
        changed = [n for n, p in model.named_parameters() if n in lora and not torch.equal(p.detach(), lora[n])]
        unchanged_lora = sorted(set(lora) - set(changed))
        figure = f"{len(changed)} of {len(lora)} trainable LoRA tensors changed"
        if unchanged_lora:
            figure += f"; unchanged e.g. {unchanged_lora[:3]}"
        self.checks[LORA_CHANGED] = Check(LORA_CHANGED, PASS if lora and not unchanged_lora else FAIL, figure,
                                          "all changed", {"changed": len(changed), "trainable_lora_tensors": len(lora),
                                                          "unchanged": unchanged_lora[:20]})
        moved = check.changed_tensors
        figure = f"{len(moved)} of {check.base_tensors} base tensors changed (BLAKE2b of their bytes)"
        if moved:
            figure += f", e.g. {moved[:3]}"
        self.checks[UNCHANGED] = Check(UNCHANGED, PASS if check.base_tensors > 0 and not moved else FAIL, figure,
                                       "bit-identical",
                                       {"base_tensors": check.base_tensors, "changed_tensors": moved[:20]})

    def verify(self) -> None:
        """The run's save, reload check and merge check: ``save_pretrained`` to a temporary
        directory (converted after a base-rewriting initialisation), loaded onto a fresh load of
        the base and compared with the trained model's outputs; then ``merge_and_unload`` of a
        copy against the adapter model, a 4-bit base merged into a full-precision reload."""
        from loraexp.config.methods import not_applicable_checks
        from loraexp.run.merge_check import model_logits

        v, model = self.cfg.verification, self.tuned.model
        self.verification.not_applicable = not_applicable_checks(self.cfg.method, self.tuned.init_lora_weights,
                                                                 self.quantized)
        batches = self.check_batches()
        reference = None
        if "reload" not in self.verification.not_applicable:
            reference = model_logits(model.eval(), batches)
        logger.info("save/load round trip and merge check ...")
        self.strategy.save(self.tuned, self.adapter_dir)
        self.strategy.verify(self.tuned, self.verification, self.adapter_dir, lambda: batches, self.batch,
                             lambda: self.inputs.fresh_base(False), reference)
        why_not = self.verification.not_applicable.get("reload")
        if why_not:  # a quantized base, LoftQ: the merge check is the round trip
            self.checks[ROUND_TRIP] = Check(ROUND_TRIP, INFO, f"not applicable: {why_not}")
        else:
            result = self.verification.reload
            figure = (f"max |Δ {self.inputs.space}| {figure_number(result.max_abs_diff)} ({result.precision}); "
                      f"trained vs base max |Δlogit| {figure_number(result.base_max_abs_diff)}")
            if result.reason:
                figure += f"; {result.reason}"
            self.checks[ROUND_TRIP] = Check(ROUND_TRIP, PASS if result.passed else FAIL, figure,
                                            f"<= {v.merge_atol:g}", dataclasses.asdict(result))
        result = self.verification.merge
        atol = v.quantized_merge_atol if self.quantized else v.merge_atol
        figure = (f"max |Δ {result.space}| {figure_number(result.max_abs_diff)} ({result.precision}); "
                  f"adapter vs base max |Δlogit| {figure_number(result.adapter_vs_base_max_abs_diff)}")
        if result.quantization_gap_max_abs_diff is not None:
            figure += (f"; merged into a full-precision reload; 4-bit vs full-precision adapter max |Δprobs| "
                       f"{figure_number(result.quantization_gap_max_abs_diff)}")
        if result.reason:
            figure += f"; {result.reason}"
        self.checks[MERGE] = Check(MERGE, PASS if result.passed else FAIL, figure, f"<= {atol:g}",
                                   dataclasses.asdict(result))

    def memory(self) -> None:
        from loraexp.run.callbacks.efficiency import peak_memory_bytes

        peak, kind = peak_memory_bytes()
        what = {"cuda_allocated": "CUDA max allocated"}.get(kind, "process peak RSS")
        self.checks[MEMORY] = Check(MEMORY, INFO, f"{peak / 2**30:.2f} GiB ({what})", "",
                                    {"peak_mem_bytes": peak, "peak_mem_kind": kind})

    # -- helpers ------------------------------------------------------------------------------
    def check_batches(self) -> list[dict[str, Any]]:
        """The batch without labels, cut to ``check_rows``: what the round trip and merge compare."""
        rows = self.inputs.check_rows
        return [{k: v[:rows] for k, v in self.inputs.batch.items() if k != "labels"}]

    def _grad_flow_check(self, result, error: str | None) -> Check:
        parts = []
        if result.lora_B_min_grad_norm_step1 is not None:
            parts.append(f"lora_B min |grad| {figure_number(result.lora_B_min_grad_norm_step1)} at step 1")
        if result.lora_A_min_grad_norm is not None:
            parts.append(f"lora_A min |grad| {figure_number(result.lora_A_min_grad_norm)} by step "
                         f"{result.lora_A_verified_step}")
        if result.magnitude_min_grad_norm_step1 is not None:
            parts.append(f"DoRA magnitude min |grad| {figure_number(result.magnitude_min_grad_norm_step1)}")
        figure = "; ".join(parts) or "no gradient observed"
        if not result.passed:
            figure += f"; {error or result.reason}"
        return Check(GRAD_FLOW, PASS if result.passed else FAIL, figure, "finite, non-zero",
                     dataclasses.asdict(result))

    def _loss_check(self, losses: list[float]) -> Check:
        """Passes when every loss is finite and the last step's is below the first's: the same
        batch every step, so the two are comparable (dropout aside)."""
        finite = all(math.isfinite(x) for x in losses)
        ok = finite and len(losses) >= 2 and losses[-1] < losses[0]
        shown = ", ".join(f"{x:.4f}" for x in losses)
        figure = f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps ({shown})" if losses else "no step"
        if not finite:
            figure += f"; not finite at step {next(i for i, x in enumerate(losses, 1) if not math.isfinite(x))}"
        return Check(LOSS, PASS if ok else FAIL, figure, "last < first", {"losses": losses})


def lora_module_names(model) -> list[str]:
    """Names of the modules PEFT wrapped with LoRA (``peft.tuners.lora.LoraLayer``), in model order."""
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def group_by_type(names: list[str]) -> dict[str, int]:
    """Module count per type, in model order: the last name component (``q_proj``), or, where
    two different modules share it (BERT's ``attention.output.dense`` and ``output.dense``), the
    name after the layer index."""
    def suffix(name: str) -> str:
        return re.split(r"\.\d+\.", name)[-1]

    kinds: dict[str, set[str]] = {}
    for n in names:
        kinds.setdefault(n.split(".")[-1], set()).add(suffix(n))
    out: dict[str, int] = {}
    for n in names:
        key = n.split(".")[-1] if len(kinds[n.split(".")[-1]]) == 1 else suffix(n)
        out[key] = out.get(key, 0) + 1
    return out
