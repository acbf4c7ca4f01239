"""Process identity under ``accelerate launch`` / ``torchrun`` (docs/design.md, "Scale-out").

One run on several processes is plain DDP driven by the Trainer; loraexp only needs to know
which process writes results (rank 0) and to make every process take the same decision
(skip a completed run, wait for a run locked elsewhere).
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    """Number of processes of this run (``$WORLD_SIZE``, set by torchrun/accelerate; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on global rank 0 (``$RANK``), or when not launched distributed. Only the main
    process writes results and logs to W&B."""
    return int(os.environ.get("RANK", "0")) == 0


def needs_cpu_ddp() -> bool:
    """Several processes and no CUDA: ``TrainingArguments(use_cpu=True)`` is needed for the
    Trainer to set up DDP over gloo (without it, transformers runs each process alone)."""
    import torch

    return world_size() > 1 and not torch.cuda.is_available()


def broadcast_from_main(value: Any) -> Any:
    """``value`` as computed on rank 0, on every process (a picklable object); unchanged when
    not distributed. Initialises accelerate's process group (gloo on CPU) if needed."""
    if world_size() == 1:
        return value
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState(cpu=not torch.cuda.is_available())
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
