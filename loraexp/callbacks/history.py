"""Step metrics (loss, grad norm, learning rate, eval metrics) from the Trainer's logs."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback

RENAMES = {"loss": "train/loss", "grad_norm": "train/grad_norm", "learning_rate": "train/learning_rate",
           "epoch": "train/epoch"}


class HistoryCallback(TrainerCallback):
    """Forwards every Trainer log (``on_log``) to ``log(metrics, step)`` on the main process,
    renaming training keys to ``train/...``, ``eval_*`` keys to ``eval/...`` and ``base_*``
    (base-model evaluation) to ``base_eval/...``. ``step`` is
    the optimizer step."""

    def __init__(self, log: Callable[[dict, int], None]):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {}
        for key, value in logs.items():
            if not isinstance(value, (int, float)):
                continue
            if key.startswith("eval_"):
                metrics[f"eval/{key[5:]}"] = value
            elif key.startswith("base_"):  # evaluation of the base model (adapters disabled)
                metrics[f"base_eval/{key[5:]}"] = value
            else:
                metrics[RENAMES.get(key, f"train/{key}")] = value
        if metrics:
            self.log(metrics, state.global_step)
