"""The metric a sweep is judged by: the Optuna study's direction, the W&B sweep's ``metric``,
the console's main column and the best run it marks."""

from __future__ import annotations

from loraexp.config.schema import ExperimentConfig
from loraexp.tasks import MAIN_METRICS

MINIMIZED = ("loss", "perplexity")


def sweep_metric(cfg: ExperimentConfig) -> tuple[str, str]:
    """``(eval metric key, "maximize" | "minimize")`` from ``sweep.metric``/``sweep.direction``;
    defaults: the task's main metric (:data:`loraexp.tasks.MAIN_METRICS`: accuracy for the
    classification tasks, sst2 with a verbalizer included; loss for the language-modelling
    tasks) and minimize for loss/perplexity, else maximize."""
    metric = cfg.sweep.metric or MAIN_METRICS[cfg.task]
    direction = cfg.sweep.direction or ("minimize" if metric in MINIMIZED else "maximize")
    return metric, direction
