"""The ``transformers.TrainingArguments`` fields of a run: the config's ``training`` mapping
plus what loraexp adds unless the config sets it."""

from __future__ import annotations

from typing import Any

from loraexp.config.schema import ExperimentConfig

# Checkpoints kept per run unless training.save_total_limit says otherwise: the newest, and the
# one before it (a NaN stop's last good checkpoint may be the older one; docs/reliability.md).
DEFAULT_SAVE_TOTAL_LIMIT = 2


def training_arguments(cfg: ExperimentConfig, task, strategy) -> dict[str, Any]:
    """``cfg.training`` plus what loraexp adds unless the config sets it: the strategy's
    learning rate (full fine-tuning: :func:`~loraexp.config.methods.full_learning_rate`); the
    Trainer's progress bar (``disable_tqdm: false``); ``save_total_limit``
    :data:`DEFAULT_SAVE_TOTAL_LIMIT`; the task's own defaults
    (:meth:`~loraexp.tasks.base.Task.training_defaults`); paged 8-bit AdamW for a quantized base
    on CUDA; ``use_cpu`` for DDP on CPU (else transformers runs each process alone) and for bf16
    on a machine without a GPU (:func:`~loraexp.run.device.needs_use_cpu`: then bf16 autocast on
    the CPU; else transformers refuses bf16).

    Args:
        task: the run's :class:`~loraexp.tasks.base.Task`.
        strategy: the run's :mod:`~loraexp.run.strategies` strategy.
    """
    import torch

    from loraexp.model.quantization import default_optimizer
    from loraexp.run.device import needs_use_cpu
    from loraexp.run.distributed import needs_cpu_ddp

    training = {"disable_tqdm": False,  # the Trainer's bar; without this it follows transformers' log level
                **task.training_defaults(), **cfg.training}
    training["learning_rate"] = strategy.learning_rate(training, task)
    optimizer = default_optimizer(cfg.quantization, torch.cuda.is_available())
    if optimizer:
        training.setdefault("optim", optimizer)
    if needs_cpu_ddp() or needs_use_cpu(training, torch.accelerator.is_available()):
        training.setdefault("use_cpu", True)
    training.setdefault("save_total_limit", DEFAULT_SAVE_TOTAL_LIMIT)
    return training
