"""The metric a scheduler optimises (Optuna study direction, W&B sweep ``metric``)."""

from __future__ import annotations

from loraexp.config import ExperimentConfig
from loraexp.tasks import CLASSIFICATION_TASKS

MINIMIZED = ("loss", "perplexity")


def objective(cfg: ExperimentConfig) -> tuple[str, str]:
    """``(eval metric key, "maximize" | "minimize")`` from ``sweep.metric``/``sweep.direction``;
    defaults: accuracy (maximize) for a classification task, loss (minimize) otherwise. The
    sst2 verbalizer on a causal LM also reports accuracy, so sst2 defaults to accuracy."""
    metric = cfg.sweep.metric or ("accuracy" if cfg.task in CLASSIFICATION_TASKS else "loss")
    direction = cfg.sweep.direction or ("minimize" if metric in MINIMIZED else "maximize")
    return metric, direction
