"""Store the verification state in every checkpoint, for a resumed attempt to carry forward."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from loraexp.run.checkpoints import write_verification


class CheckpointRecordCallback(TrainerCallback):
    """After each Trainer save (``on_save``, main process), writes into the new
    ``checkpoint-<step>/`` each check's state at that step (:func:`loraexp.run.checkpoints.write_verification`):
    ``sections`` maps a record key to a function of the model giving that state (a check
    dataclass or a JSON-able dict), e.g. the frozen-base comparison so far and the
    gradient-flow result of a LoRA run, or full fine-tuning's start fingerprints and gradient
    result."""

    def __init__(self, sections: dict[str, Callable[[Any], Any]]):
        self.sections = sections

    def on_save(self, args, state, control, model=None, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and path.is_dir():
            record: dict[str, Any] = {"step": state.global_step}
            for key, now in self.sections.items():
                value = now(model)
                record[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            write_verification(path, record)
