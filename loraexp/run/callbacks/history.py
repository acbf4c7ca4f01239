"""Step metrics (loss, grad norm, learning rate, eval metrics) from the Trainer's logs."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback
from transformers.integrations.integration_utils import rewrite_logs

BASE_PREFIX = "base_"  # the base-model evaluation's metric_key_prefix (adapters disabled)


class HistoryCallback(TrainerCallback):
    """Forwards every Trainer log (``on_log``) to ``log(metrics, step)`` on the main process,
    keys renamed as transformers' own W&B integration names them (``rewrite_logs``:
    ``eval_*`` -> ``eval/...``, everything else -> ``train/...``), and the base-model
    evaluation's ``base_*`` keys to ``base_eval/...``; only numbers. ``step`` is the optimizer
    step."""

    def __init__(self, log: Callable[[dict, int], None]):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        base = {f"base_eval/{k.removeprefix(BASE_PREFIX)}": v for k, v in numbers.items() if k.startswith(BASE_PREFIX)}
        metrics = {**rewrite_logs({k: v for k, v in numbers.items() if not k.startswith(BASE_PREFIX)}), **base}
        if metrics:
            self.log(metrics, state.global_step)
