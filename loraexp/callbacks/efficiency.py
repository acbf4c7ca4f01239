"""Training-efficiency figures: throughput and peak memory."""

from __future__ import annotations

import resource
import sys
import time

import torch
from transformers import TrainerCallback


def peak_memory_bytes() -> tuple[int, str]:
    """``(bytes, kind)``: ``torch.cuda.max_memory_allocated`` on CUDA (kind ``cuda_allocated``),
    else the process's peak resident set size (kind ``process_peak_rss``; Linux reports KiB,
    macOS bytes). RSS is the peak of the whole process, so in a sweep it never decreases."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


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

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._start
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        peak, kind = peak_memory_bytes()
        self.result = {
            "train_seconds": seconds,
            "optimizer_steps": state.global_step,
            "samples_per_s": state.global_step * global_batch / seconds if seconds else 0.0,
            "tokens_per_s": (state.num_input_tokens_seen or 0) / seconds if seconds else 0.0,
            "peak_mem_bytes": peak,
            "peak_mem_kind": kind,
        }
