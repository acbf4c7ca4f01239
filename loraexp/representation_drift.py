"""Representation drift of one run (docs/report.md, "Representation drift"): the base model's
hidden states on the probe examples before training, the trained model's after, and linear CKA
per layer between them (:mod:`loraexp.analysis.cka`). A measurement only: it restores torch's
random state (:func:`rng_untouched`) and never raises for the run; a failure is recorded."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

METRIC = "linear CKA (Kornblith et al. 2019)"
POOLING = "mean over non-padding tokens"


def rng_untouched():
    """Context that restores torch's CPU (and CUDA) random state on exit: a measurement inside
    it (iterating a DataLoader draws a base seed from the global generator) leaves the run's
    random stream, and so its result, as it would be without the measurement."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


# Rows per probe batch after regrouping by length (regroup_by_length): a 128-example SST-2 eval batch
# is padded to its longest row (~55 tokens) while its rows average ~25; in four groups of 32 the
# forward passes compute ~45% fewer positions.
PROBE_BATCH_ROWS = 32


def probe_batches(loader: Iterable[dict[str, Any]], wanted: int, device,
                  rows: int = PROBE_BATCH_ROWS) -> list[dict[str, Any]]:
    """The first ``wanted`` examples of ``loader`` (without labels) on ``device``, fewer when
    the loader has fewer; the rows of each loader batch regrouped by length into batches of
    at most ``rows`` rows (:func:`regroup_by_length`). The pooled states leave padding out and
    CKA does not depend on the order of the examples (the same for both models), so the
    figures are those of the loader's batches, up to float rounding, at less cost."""
    batches, taken = [], 0
    with rng_untouched():
        for batch in loader:
            take = min(wanted - taken, len(batch["input_ids"]))
            cut = {k: v[:take] for k, v in batch.items() if k != "labels"}
            batches += [{k: v.to(device) for k, v in part.items()} for part in regroup_by_length(cut, rows)]
            taken += take
            if taken == wanted:
                break
    return batches


def regroup_by_length(batch: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    """``batch`` split into batches of at most ``rows`` rows of similar length (sorted by their
    number of real tokens, ties in order), each without the padding columns all its rows have
    at the end. A batch that is not right-padded, or has no ``attention_mask``, is returned
    whole (its columns carry positions).

    Args:
        batch: ``(n, seq)`` tensors (and any others with ``n`` rows first).
    """
    import torch

    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or bool((mask[:, 1:] > mask[:, :-1]).any()):
        return [batch]
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    seq = mask.shape[1]
    parts = []
    for start in range(0, len(order), rows):
        index = order[start:start + rows]
        length = max(int(lengths[index].max()), 1)
        parts.append({k: v[index][:, :length] if v.dim() >= 2 and v.shape[1] == seq else v[index]
                      for k, v in batch.items()})
    return parts


class DriftProbe:
    """The probe batches and the base model's pooled hidden states on them (one ``(n, hidden)``
    tensor per layer, embeddings first), taken by :meth:`capture_base` before training;
    :meth:`measure` gives the ``representation_drift`` record after it."""

    def __init__(self, batches: list[dict[str, Any]]):
        self.batches = batches
        self.base = None
        self.error: str | None = None

    def capture_base(self, model, base_view) -> None:
        """The base model's states: ``model`` inside the context ``base_view`` (the recipe's
        view of the pretrained model)."""
        from loraexp.analysis.cka import pooled_hidden_states

        try:
            with rng_untouched(), base_view:
                self.base = pooled_hidden_states(model, self.batches)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory with output_hidden_states
            self.error = f"base model: {type(exc).__name__}: {exc}"

    def measure(self, model) -> dict[str, Any]:
        """``metric``, ``probe_examples``, ``pooling`` and either ``layers`` and ``cka`` (one
        value per entry of ``hidden_states``) or the ``error`` that prevented it."""
        from loraexp.analysis.cka import layerwise_cka, pooled_hidden_states

        if self.base is None:
            return {"error": self.error or "base states not captured"}
        drift: dict[str, Any] = {"metric": METRIC, "probe_examples": int(self.base[0].shape[0]), "pooling": POOLING}
        if drift["probe_examples"] < 2:
            return {**drift, "error": "fewer than 2 probe examples in the eval split"}
        try:
            with rng_untouched():
                cka = layerwise_cka(self.base, pooled_hidden_states(model, self.batches))
        except (RuntimeError, ValueError) as exc:
            return {**drift, "error": f"{type(exc).__name__}: {exc}"}
        return {**drift, "layers": ["embeddings", *map(str, range(1, len(cka)))], "cka": cka}
