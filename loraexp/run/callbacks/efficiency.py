"""Training-efficiency figures: throughput and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory() -> bool:
    """Start a new peak-memory window: ``torch.cuda.reset_peak_memory_stats`` on CUDA; on
    Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the process's peak RSS
    (``VmHWM``; proc(5), Linux >= 4.0). Returns whether a reset happened."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_memory_bytes() -> tuple[int, str]:
    """``(bytes, kind)``: ``torch.cuda.max_memory_allocated`` on CUDA (kind ``cuda_allocated``);
    on Linux the process's peak RSS since the last :func:`reset_peak_memory` (``VmHWM``, kind
    ``process_peak_rss``); elsewhere ``ru_maxrss`` (kind ``process_peak_rss_lifetime``: the
    peak of the whole process, so in a sweep it never decreases)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_allocated"
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "process_peak_rss"
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss_lifetime"


class EfficiencyCallback(TrainerCallback):
    """Measures from ``on_train_begin`` to ``on_train_end``:

    ``train_seconds`` (wall clock), ``samples_per_s`` (optimizer steps x global batch size
    per second; the last partial batch counts as full), ``tokens_per_s`` (non-padding input
    tokens, from Trainer's ``num_input_tokens_seen``; 0 if that is off), ``peak_mem_bytes``
    and ``peak_mem_kind`` (see :func:`peak_memory_bytes`). Results are in ``result``.
    """

    def __init__(self):
        self.result: dict = {}
        self._start = 0.0
        self._first_step = 0
        self._first_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        reset_peak_memory()
        self._start = time.perf_counter()
        self._first_step = state.global_step  # > 0 when resumed from a checkpoint
        self._first_tokens = state.num_input_tokens_seen or 0

    def on_train_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._start
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        peak, kind = peak_memory_bytes()
        optimizer = kwargs.get("optimizer")
        state_bytes = sum(t.numel() * t.element_size() for per_param in getattr(optimizer, "state", {}).values()
                          for t in per_param.values() if torch.is_tensor(t))
        steps = state.global_step - self._first_step
        tokens = (state.num_input_tokens_seen or 0) - self._first_tokens
        self.result = {
            "train_seconds": seconds,
            "optimizer_steps": steps,
            "samples_per_s": steps * global_batch / seconds if seconds else 0.0,
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "peak_mem_bytes": peak,
            "peak_mem_kind": kind,
            "optimizer_state_bytes": int(state_bytes),
        }
