"""What differs between a LoRA run and full fine-tuning, behind one interface the recipe calls
(docs/design.md, "The run as a recipe"): attach (what trains), callbacks (what is verified
while it trains), save, verify, restore (from a checkpoint at the last step), the view of the
base model, and the advice after a NaN stop. :func:`strategy_for` picks one by
``cfg.method``; the recipe itself has no branch on the run type (docs/methods.md, "Full fine-tuning").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import VerificationError
from loraexp.results.record import FrozenBaseCheck, GradFlowCheck, MergeCheck, ReloadCheck, check_from_dict


@dataclass
class Tuned:
    """What :meth:`attach` hands on.

    Attributes:
        model: the model the Trainer trains (a ``peft.PeftModel`` for LoRA, the base itself
            for full fine-tuning).
        lora_config: the resolved ``peft.LoraConfig``; None for full fine-tuning.
        initial: LoRA's initial factors and DoRA magnitudes for the rank analysis
            (:func:`~loraexp.analysis.adapter_stats.initial_state`); empty otherwise.
    """

    model: Any
    lora_config: Any = None
    initial: dict[str, Any] = field(default_factory=dict)

    @property
    def init_lora_weights(self) -> Any:
        return self.lora_config.init_lora_weights if self.lora_config is not None else None


class LoraStrategy:
    """A PEFT LoRA adapter (any variant of :mod:`loraexp.config.methods`) on a frozen base."""

    is_lora = True

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, main: bool):
        self.cfg = cfg
        self.main = main
        self.initial_adapter_dir = run_dir / "initial_adapter"  # a base-rewriting init's start, for conversion

    def attach(self, model, task, train_data, tokenizer) -> Tuned:
        """``get_peft_model`` with the method's ``lora`` fields (seeded right before the factors
        are initialised); EVA's data-driven lora_A; for an initialisation that rewrites the base
        (PiSSA, OLoRA, CorDA) the initial adapter saved for PEFT's conversion at save time; the
        initial factors kept for the rank analysis; ``warm_start``'s adapter loaded last."""
        from loraexp.analysis.adapter_stats import initial_state
        from loraexp.config.methods import convertible, init_name, lora_fields, rewrites_base
        from loraexp.model.adapters import save_initial_adapter, warm_start
        from loraexp.model.load import attach_lora

        cfg = self.cfg
        lora = lora_fields(cfg.method, cfg.lora, cfg.method_options)
        peft_model, lora_config = attach_lora(model, lora, seed=cfg.seed, task_type=task.task_type)
        init = lora_config.init_lora_weights
        if init_name(init) == "eva":
            self._initialise_eva(peft_model, task, train_data, tokenizer)
        if convertible(init) and self.main:
            save_initial_adapter(peft_model, self.initial_adapter_dir)
        initial = initial_state(peft_model, factors=rewrites_base(init))
        if cfg.warm_start:
            warm_start(peft_model, cfg.warm_start)
        return Tuned(peft_model, lora_config, initial)

    def _initialise_eva(self, model, task, train_data, tokenizer) -> None:
        """EVA: lora_A from the SVD of the target layers' input activations
        (``peft.initialize_lora_eva_weights`` on ``method_options.eva_batches`` training batches)."""
        from peft import initialize_lora_eva_weights
        from torch.utils.data import DataLoader

        batches = []
        loader = DataLoader(train_data, batch_size=self.cfg.training.get("per_device_train_batch_size", 8),
                            collate_fn=task.collator(tokenizer, self.cfg.pad_to_multiple_of))
        for batch in loader:
            batches.append({k: v.to(model.device) for k, v in batch.items() if k != "labels"})
            if len(batches) == self.cfg.method_options.eva_batches:
                break
        initialize_lora_eva_weights(model, batches, show_progress_bar=False)

    def learning_rate(self, training: dict[str, Any], task) -> float:
        """``training.learning_rate``: a LoRA run trains at the config's rate."""
        return training["learning_rate"]

    def callbacks(self, tuned: Tuned, prior: dict[str, Any], checkpoint: str | None,
                  log: Callable[[dict, int], None]) -> dict[str, Any]:
        """The frozen-base and gradient-flow checks (carrying forward what was recorded with the
        checkpoint being resumed), their state saved with each checkpoint, and the adapter
        statistics every ``tracking.stats_every_steps``."""
        from loraexp.config.methods import init_name, rewrites_base
        from loraexp.run import callbacks as cb
        from loraexp.run.checkpoints import checkpoint_step

        init = init_name(tuned.init_lora_weights)
        reference = (f"residual base W - s*B0*A0 after {init} initialisation" if rewrites_base(init)
                     else "pretrained weights")
        carried = None
        if isinstance(prior.get("grad_flow"), dict):
            carried = check_from_dict(GradFlowCheck, prior["grad_flow"])
            if carried.passed:
                carried.carried_from_checkpoint = checkpoint_step(checkpoint)
        frozen = cb.FrozenBaseCallback(reference=reference)
        grad_flow = cb.GradFlowCallback(self.cfg.verification.grad_flow_steps, prior=carried, init=init)
        return {"frozen": frozen, "grad_flow": grad_flow,
                "checkpoint_record": cb.CheckpointRecordCallback({"frozen_base": frozen.state_now,
                                                                  "grad_flow": lambda model: grad_flow.result}),
                "stats": cb.AdapterStatsCallback(log, every=self.cfg.tracking.stats_every_steps, initial=tuned.initial)}

    def base_model_view(self, tuned: Tuned):
        """Context in which the model computes the base model: the adapters disabled (PEFT's
        ``disable_adapter``), except after a base-rewriting initialisation, whose adapter
        restores the base (W − s·B0·A0 + s·B0·A0; LoftQ approximately) until it trains."""
        from loraexp.config.methods import rewrites_base

        return contextlib.nullcontext() if rewrites_base(tuned.init_lora_weights) else tuned.model.disable_adapter()

    def restore(self, tuned: Tuned, checkpoint: str, callbacks: dict[str, Any], prior: dict[str, Any]) -> None:
        """Load the adapter (and trained head) of the checkpoint saved at the last optimizer
        step (``peft.set_peft_model_state_dict``) and take the frozen-base result recorded with it.

        Raises:
            VerificationError: the checkpoint holds tensors the model lacks.
        """
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from loraexp.run.checkpoints import checkpoint_step

        weights = load_file(Path(checkpoint) / "adapter_model.safetensors")
        loaded = set_peft_model_state_dict(tuned.model, weights)
        if loaded.unexpected_keys:
            raise VerificationError(f"checkpoint {checkpoint} holds tensors the model lacks: "
                                    f"{loaded.unexpected_keys[:3]}")
        frozen = prior.get("frozen_base")
        callbacks["frozen"].result = check_from_dict(FrozenBaseCheck, frozen) if isinstance(frozen, dict) else (
            FrozenBaseCheck(passed=False, reason=f"checkpoint {checkpoint} has no verification record"))
        callbacks["stats"].finish(checkpoint_step(checkpoint), tuned.model)

    def save(self, tuned: Tuned, adapter_dir: Path, export: Callable[[Any], None] | None = None) -> None:
        """On rank 0: ``save_pretrained`` the adapter (safetensors); an initialisation that
        rewrote the base is converted by PEFT to apply to the original base. ``export`` is not
        called here: the merged model is exported once the merge check passed (:meth:`exported`)."""
        from loraexp.model.adapters import save_converted_adapter

        if not self.main:
            return
        if self.initial_adapter_dir.is_dir():
            save_converted_adapter(tuned.model, adapter_dir, self.initial_adapter_dir)
        else:
            tuned.model.save_pretrained(str(adapter_dir))

    def verify(self, tuned: Tuned, verification, adapter_dir: Path, check_batches: Callable[[], list], task,
               load_original: Callable[[], Any], reference_logits) -> Any:
        """The reload check (the saved adapter on a fresh load of the original base reproduces
        the trained model's ``reference_logits``), then merge equivalence on a copy of the
        model; a quantized base is merged into a full-precision reload (``load_original``).
        Both compare on the eval batches ``check_batches()`` returns.
        Writes ``verification.reload`` and ``.merge``; other ranks record the checks as made on
        rank 0.

        Returns:
            The merged model when the merge check ran, else None.
        """
        from loraexp.run.merge_check import check_adapter_reload, check_merge_equivalence, check_quantized_merge

        if not self.main:
            verification.merge = MergeCheck(passed=True, checked_on="rank 0")
            verification.reload = ReloadCheck(passed=True, checked_on="rank 0")
            return None
        v, batches = self.cfg.verification, check_batches()
        space = task.merge_space if v.merge_space == "auto" else v.merge_space
        device = tuned.model.device
        if self.cfg.quantization.method == "none":
            if "reload" not in verification.not_applicable:
                verification.reload = check_adapter_reload(
                    tuned.model, load_original().to(device), adapter_dir, batches, atol=v.merge_atol, space=space,
                    converted=self.initial_adapter_dir.is_dir(), reference_logits=reference_logits)
            # a passed reload check found the model still gives the reference logits, bit for bit
            merged, verification.merge = check_merge_equivalence(
                tuned.model, batches, atol=v.merge_atol, latency_repeats=v.latency_repeats, space=space,
                adapter_logits=reference_logits if verification.reload.passed else None)
        else:
            merged, verification.merge = check_quantized_merge(
                tuned.model, load_original().to(device), adapter_dir, batches, atol=v.quantized_merge_atol,
                latency_repeats=v.latency_repeats)
        return merged

    def final_statistics(self, callbacks: dict[str, Any]) -> dict[str, Any] | None:
        """The adapter statistics and spectra per module at the end of training
        (:class:`~loraexp.run.callbacks.AdapterStatsCallback`)."""
        return callbacks["stats"].final

    def exported(self, tuned: Tuned, merged, verification):
        """What ``export_merged`` saves: the merged model, once the merge check passed."""
        return merged if verification.merge.passed else None

    def recovery_hint(self, config_path: Path, last_checkpoint: str, sweep: str) -> str:
        """After a NaN stop: the command that continues from the last good checkpoint's adapter
        with half the learning rate (``--warm-start``)."""
        lr = self.cfg.training["learning_rate"]
        return (f"; to continue from the last good checkpoint with a lower learning rate: "
                f"loraexp --config {config_path} --warm-start {last_checkpoint} "
                f"--set training.learning_rate={lr / 2:g} --set sweep.name={sweep}-nan-recovery")


class FullFineTuningStrategy:
    """Every weight trains (``method: full``): no adapter, no frozen base and no merge; the
    check is that every weight trains (:class:`~loraexp.run.callbacks.FullTrainingCallback`)."""

    is_lora = False

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, main: bool):
        self.cfg = cfg
        self.main = main

    def attach(self, model, task, train_data, tokenizer) -> Tuned:
        """The model itself, every parameter trainable."""
        return Tuned(model.requires_grad_(True))

    def learning_rate(self, training: dict[str, Any], task) -> float:
        """:func:`~loraexp.config.methods.full_learning_rate`: ``method_options`` or the
        objective's default, not ``training.learning_rate``."""
        from loraexp.config.methods import full_learning_rate

        return full_learning_rate(self.cfg.method_options, task.task_type)

    def callbacks(self, tuned: Tuned, prior: dict[str, Any], checkpoint: str | None,
                  log: Callable[[dict, int], None]) -> dict[str, Any]:
        """The every-weight-trains check, its state saved with each checkpoint."""
        from loraexp.run import callbacks as cb

        full = cb.FullTrainingCallback(self.cfg.verification.grad_flow_steps, prior=prior.get("full_training"))
        return {"full_training": full,
                "checkpoint_record": cb.CheckpointRecordCallback({"full_training": full.state_now})}

    def base_model_view(self, tuned: Tuned):
        """Before training, the model is the base."""
        return contextlib.nullcontext()

    def restore(self, tuned: Tuned, checkpoint: str, callbacks: dict[str, Any], prior: dict[str, Any]) -> None:
        """Load the whole model from the checkpoint saved at the last optimizer step.

        Raises:
            VerificationError: the checkpoint's tensors do not fit the model.
        """
        from safetensors.torch import load_model

        missing, unexpected = load_model(tuned.model, Path(checkpoint) / "model.safetensors", strict=False)
        if missing or unexpected:
            raise VerificationError(f"checkpoint {checkpoint} does not fit the model: missing "
                                    f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        callbacks["full_training"].finish_restored(tuned.model)

    def save(self, tuned: Tuned, adapter_dir: Path, export: Callable[[Any], None] | None = None) -> None:
        """No adapter to save; with ``export_merged`` (``export`` given) the trained model itself."""
        if export is not None:
            export(tuned.model)

    def verify(self, tuned: Tuned, verification, adapter_dir: Path, check_batches, task, load_original,
               reference_logits) -> Any:
        """Nothing to merge or reload (the checks are recorded not applicable)."""
        return None

    def final_statistics(self, callbacks: dict[str, Any]) -> dict[str, Any] | None:
        """No adapter: no adapter statistics."""
        return None

    def exported(self, tuned: Tuned, merged, verification):
        """Nothing more: :meth:`save` exported the trained model."""
        return None

    def recovery_hint(self, config_path: Path, last_checkpoint: str, sweep: str) -> str:
        """No adapter to warm-start from: no hint."""
        return ""


def strategy_for(cfg: ExperimentConfig, run_dir: Path, main: bool) -> LoraStrategy | FullFineTuningStrategy:
    """The strategy of ``cfg.method``: full fine-tuning for ``full``, else LoRA."""
    from loraexp.config.methods import is_lora

    return (LoraStrategy if is_lora(cfg.method) else FullFineTuningStrategy)(cfg, run_dir, main)
