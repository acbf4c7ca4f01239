"""Store the verification state in every checkpoint, for a resumed attempt to carry forward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import TrainerCallback

from loraexp.callbacks.frozen_base import FrozenBaseCallback
from loraexp.callbacks.grad_flow import GradFlowCallback
from loraexp.checkpoints import write_verification


class CheckpointRecordCallback(TrainerCallback):
    """After each Trainer save (``on_save``, main process), writes into the new
    ``checkpoint-<step>/`` the frozen-base state at that step (base tensors compared with
    their fingerprints at the attempt's start) and the gradient-flow result so far
    (:func:`loraexp.checkpoints.write_verification`)."""

    def __init__(self, frozen: FrozenBaseCallback, grad_flow: GradFlowCallback):
        self.frozen = frozen
        self.grad_flow = grad_flow

    def on_save(self, args, state, control, model=None, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and path.is_dir():
            write_verification(path, {"step": state.global_step,
                                      "frozen_base": dataclasses.asdict(self.frozen.state_now(model)),
                                      "grad_flow": dataclasses.asdict(self.grad_flow.result)})
