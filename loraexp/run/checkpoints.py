"""Trainer checkpoints of a run: find the last complete one after a crash.

The Trainer writes ``checkpoint-<step>/`` in place: model (adapter) files, then optimizer,
scheduler and RNG state, and ``trainer_state.json`` last. A process killed mid-save leaves a
directory without a readable ``trainer_state.json``; such a directory is never resumed from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from loraexp.results.storage import atomic_write_text

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Written by loraexp into each checkpoint (on_save): the verification state at that step.
VERIFICATION_FILE = "loraexp_verification.json"
# Written by Trainer._save_checkpoint; trainer_state.json comes last.
REQUIRED_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
# The weights: a LoRA run's adapter, or full fine-tuning's whole model.
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")


def checkpoint_step(path: str | Path) -> int:
    """Optimizer step of ``.../checkpoint-<step>``.

    Raises:
        ValueError: the name is not ``checkpoint-<int>``.
    """
    match = CHECKPOINT_RE.match(Path(path).name)
    if not match:
        raise ValueError(f"{str(path)!r} is not a checkpoint-<step> directory")
    return int(match.group(1))


def is_complete(path: str | Path) -> bool:
    """True when every file of :data:`REQUIRED_FILES`, one of :data:`WEIGHT_FILES` and an RNG
    state exist and ``trainer_state.json`` parses and names the directory's step."""
    path = Path(path)
    if not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return False
    if not any(path.glob("rng_state*.pth")):
        return False
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step") == checkpoint_step(path)


def last_complete_checkpoint(checkpoints_dir: str | Path, remove_incomplete: bool = True) -> str | None:
    """Path of the highest-step complete checkpoint under ``checkpoints_dir``, or None.

    Incomplete checkpoints (a save cut short by a kill) newer than it are deleted when
    ``remove_incomplete``, so the Trainer's checkpoint rotation never counts them.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return None
    candidates = sorted((p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)),
                        key=checkpoint_step, reverse=True)
    for path in candidates:
        if is_complete(path):
            return str(path)
        logger.warning("checkpoint %s is incomplete (killed while saving?)%s", path,
                       "; removing it" if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return None


def is_final(path: str | Path) -> bool:
    """True when the checkpoint was saved at the run's last optimizer step (``global_step >=
    max_steps`` in its ``trainer_state.json``): nothing is left to train. Resuming such a
    checkpoint with ``Trainer.train`` would take one step past ``max_steps`` (transformers
    5.23), so the recipe restores its adapter instead."""
    state = checkpoint_state(path)
    return state.get("max_steps", 0) > 0 and state["global_step"] >= state["max_steps"]


def write_verification(path: str | Path, record: dict) -> None:
    """Store the verification state (frozen base, gradient flow) of the attempt that saved
    checkpoint ``path``, so a resumed attempt can carry it forward."""
    atomic_write_text(Path(path) / VERIFICATION_FILE, json.dumps(record, indent=1) + "\n")


def read_verification(path: str | Path) -> dict:
    """The record of :func:`write_verification`, or ``{}`` if absent or unreadable (a kill
    between the Trainer's save and loraexp's)."""
    try:
        return json.loads((Path(path) / VERIFICATION_FILE).read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_state(path: str | Path) -> dict:
    """``trainer_state.json`` of checkpoint ``path`` (``global_step``, ``max_steps``, ...).

    Raises:
        OSError | ValueError: the file is missing or not JSON (use :func:`is_complete` first).
    """
    return json.loads((Path(path) / "trainer_state.json").read_text())


def optimizer_state_bytes(path: str | Path) -> int | None:
    """Bytes of the optimizer state tensors (AdamW: ``exp_avg``, ``exp_avg_sq``, ``step`` per
    trained weight) in checkpoint ``path``'s ``optimizer.pt``, loaded with
    ``torch.load(weights_only=True)``: the figure a run restored from its final checkpoint
    records in place of the trained optimizer's. None when the file cannot be read."""
    import torch

    try:
        saved = torch.load(Path(path) / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- a figure, not a check: missing or unreadable gives None
        return None
    return int(sum(t.numel() * t.element_size() for per_param in saved.get("state", {}).values()
                   for t in per_param.values() if torch.is_tensor(t)))
