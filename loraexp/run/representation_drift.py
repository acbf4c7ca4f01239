"""Representation drift of one run (docs/report.md, "Representation drift"): the base model's
hidden states on the probe examples before training, the trained model's after, and linear CKA
per layer between them (:mod:`loraexp.analysis.cka`). A measurement only: it restores torch's
random state (:func:`rng_untouched`) and never raises for the run; a failure is recorded."""

from __future__ import annotations

import contextlib
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


# The most bytes of float32 hidden states, (rows, seq, hidden) for every layer, that one evaluation
# batch may return for the trained model's probe states to be taken from the evaluation pass
# (DriftProbe.taken_from_evaluation); a larger batch leaves them to a probe pass of its own, in
# PROBE_BATCH_ROWS-row batches. Computed for a 128-row SST-2 eval batch of 66 tokens: MiniLM
# (384 x 7 per token) 90 MB, taken; SmolLM2-135M (576 x 31) 0.6 GB, left to the probe pass.
EVALUATION_STATES_MAX_BYTES = 256 * 2**20


def length_groups(mask, rows: int):
    """Row indices of ``mask`` ``(n, seq)`` sorted by their number of real tokens (ties in
    order) and cut into groups of at most ``rows``; None when the rows are not right-padded
    (positions would change with the padding) or ``mask`` is not 2-D."""
    import torch

    if mask is None or mask.dim() != 2 or bool((mask[:, 1:] > mask[:, :-1]).any()):
        return None
    order = torch.argsort(mask.sum(1), stable=True)
    return [order[start:start + rows] for start in range(0, len(order), rows)]


def regroup_by_length(batch: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    """``batch`` split into batches of at most ``rows`` rows of similar length
    (:func:`length_groups`), each without the padding columns all its rows have at the end. A
    batch that is not right-padded, or has no ``attention_mask``, is returned whole (its
    columns carry positions).

    Args:
        batch: ``(n, seq)`` tensors (and any others with ``n`` rows first).
    """
    mask = batch.get("attention_mask")
    groups = length_groups(mask, rows)
    if groups is None:
        return [batch]
    seq, lengths = mask.shape[1], mask.sum(1)
    parts = []
    for index in groups:
        length = max(int(lengths[index].max()), 1)
        parts.append({k: v[index][:, :length] if v.dim() >= 2 and v.shape[1] == seq else v[index]
                      for k, v in batch.items()})
    return parts


def _real_tokens(batch: dict[str, Any]) -> list:
    """Each row's ``input_ids`` without padding (all of them when there is no mask)."""
    mask = batch.get("attention_mask")
    ids = batch["input_ids"]
    return [row if mask is None else row[mask[i].bool()] for i, row in enumerate(ids)]


class DriftProbe:
    """The probe examples -- the first ``wanted`` rows of the eval loader -- and the base
    model's pooled hidden states on them (one ``(n, hidden)`` float32 tensor per layer,
    embeddings first, rows in loader order), taken by :meth:`capture_base` before training;
    :meth:`measure` gives the ``representation_drift`` record after it.

    The probe passes run on the rows regrouped by length into batches of at most
    :data:`PROBE_BATCH_ROWS` (:func:`regroup_by_length`): the pooled states leave padding out,
    so the figures are those of the loader's batches up to float rounding, at less cost. The
    trained model's states are taken from the evaluation pass itself when it runs over the
    same rows (:meth:`taken_from_evaluation`), else by a probe pass of their own.

    Args:
        batches: the regrouped probe batches (model inputs on the model's device, no labels).
        order: ``(n,)`` int64, the loader position of each row of ``batches``, concatenated.
        examples: each probe row's real tokens (``input_ids`` without padding), loader order.
    """

    def __init__(self, batches: list[dict[str, Any]], order=None, examples: list | None = None):
        import torch

        self.batches = batches
        n = sum(len(b["input_ids"]) for b in batches)
        self.order = torch.arange(n) if order is None else order
        self.examples = examples
        self.base = None
        self.trained = None  # the trained model's states from the evaluation pass, loader order
        self.error: str | None = None

    @classmethod
    def from_loader(cls, loader: Iterable[dict[str, Any]], wanted: int, device,
                    rows: int = PROBE_BATCH_ROWS) -> DriftProbe:
        """The first ``wanted`` examples of ``loader`` (fewer when it has fewer), labels
        dropped, regrouped by length and moved to ``device``; torch's random state is left as
        it was (:func:`rng_untouched`)."""
        import torch

        batches, order, examples, taken = [], [], [], 0
        with rng_untouched():
            for batch in loader:
                take = min(wanted - taken, len(batch["input_ids"]))
                cut = {k: v[:take] for k, v in batch.items() if k != "labels"}
                groups = length_groups(cut.get("attention_mask"), rows) or [torch.arange(take)]
                for index in groups:
                    order.append(index.cpu() + taken)
                batches += [{k: v.to(device) for k, v in part.items()} for part in regroup_by_length(cut, rows)]
                examples += [row.cpu() for row in _real_tokens(cut)]
                taken += take
                if taken == wanted:
                    break
        return cls(batches, torch.cat(order) if order else torch.zeros(0, dtype=torch.long), examples)

    def _in_loader_order(self, states: list) -> list:
        """Pooled states of :attr:`batches` (regrouped rows) put back in loader order."""
        import torch

        out = []
        for layer in states:
            ordered = torch.empty_like(layer)
            ordered[self.order] = layer
            out.append(ordered)
        return out

    def capture_base(self, model, base_view) -> None:
        """The base model's states: ``model`` inside the context ``base_view`` (the recipe's
        view of the pretrained model)."""
        from loraexp.analysis.cka import pooled_hidden_states

        try:
            with rng_untouched(), base_view:
                self.base = self._in_loader_order(pooled_hidden_states(model, self.batches))
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory with output_hidden_states
            self.error = f"base model: {type(exc).__name__}: {exc}"

    @contextlib.contextmanager
    def taken_from_evaluation(self, model, max_bytes: int | None = None):
        """Context around an evaluation of ``model`` (``Trainer.predict`` / ``evaluate``) that
        takes the trained model's probe states from that pass instead of a probe pass of its
        own (MiniLM on SST-2: 256 examples, ~1.3 s on 2 CPU cores).

        Hooks on ``model`` ask the first eval-mode forward calls for ``output_hidden_states``,
        pool the rows that are the probe examples and take the hidden states out of the output
        again, so the evaluation's predictions and metrics are what they were. Rows are taken
        only while each one's real tokens are the next probe example's; a batch whose hidden
        states would exceed ``max_bytes`` (float32, ``(rows, seq, hidden)`` per layer), a
        mismatch, positional or ``return_dict=False`` calls, or any error while taking them
        stop the taking (the evaluation itself goes on unchanged), and :meth:`measure` then
        runs its own pass. Hidden states the call or the model's config asked for stay in the
        output. The caller must evaluate in the precision of
        the weights (no autocast), as the base states were taken.

        Args:
            max_bytes: default :data:`EVALUATION_STATES_MAX_BYTES`.
        """
        from loraexp.analysis.cka import pool_hidden_states

        max_bytes = EVALUATION_STATES_MAX_BYTES if max_bytes is None else max_bytes
        from transformers.utils import ModelOutput

        config = getattr(model, "config", None)
        per_token = 4 * getattr(config, "hidden_size", 0) * (getattr(config, "num_hidden_layers", -1) + 1)
        dict_outputs = getattr(config, "use_return_dict", getattr(config, "return_dict", True))
        taken: list[list] = []
        state = {"next": 0, "stopped": self.examples is None or per_token <= 0, "pending": None}

        def setting(kwargs, name: str, default):
            """A forward argument as the model resolves it: the call's, else the config's."""
            value = kwargs.get(name)
            return value if value is not None else default

        def before(module, args, kwargs):
            state["pending"] = None
            if state["stopped"] or module.training or state["next"] >= len(self.examples):
                return None
            try:
                ids = kwargs.get("input_ids")
                if (args or ids is None or ids.dim() != 2 or not setting(kwargs, "return_dict", dict_outputs)
                        or ids.numel() * per_token > max_bytes):
                    state["stopped"] = True
                    return None
                rows = min(len(ids), len(self.examples) - state["next"])
                mask = kwargs.get("attention_mask")
                mask = None if mask is None else mask[:rows]
                real = _real_tokens({"input_ids": ids[:rows], "attention_mask": mask})
                if not all(_same_tokens(a, b) for a, b in zip(real, self.examples[state["next"]:])):
                    state["stopped"] = True
                    return None
            except Exception:  # a measurement never breaks the evaluation it rides on
                state["stopped"] = True
                return None
            asked = setting(kwargs, "output_hidden_states", getattr(config, "output_hidden_states", False))
            state["pending"] = (rows, mask, bool(asked))
            return args, {**kwargs, "output_hidden_states": True}

        def after(module, args, kwargs, output):
            pending, state["pending"] = state["pending"], None
            if pending is None:
                return None
            rows, mask, asked = pending
            if not isinstance(output, ModelOutput):  # a model that ignored return_dict: nothing to take out
                state["stopped"] = True
                return None
            try:
                taken.append(pool_hidden_states([h[:rows] for h in output.hidden_states], mask))
                state["next"] += rows
            except Exception:  # a measurement never breaks the evaluation it rides on
                state["stopped"] = True
            if asked:
                return None
            return type(output)(**{k: v for k, v in output.items() if not k.endswith("hidden_states")})

        handles = [model.register_forward_pre_hook(before, with_kwargs=True),
                   model.register_forward_hook(after, with_kwargs=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        if not state["stopped"] and self.examples and state["next"] == len(self.examples):
            import torch

            self.trained = [torch.cat(parts) for parts in zip(*taken)]

    def measure(self, model) -> dict[str, Any]:
        """``metric``, ``probe_examples``, ``pooling``, ``trained_pass`` (``evaluation``: the
        trained states came from the evaluation pass; ``probe``: from a pass of their own) and
        either ``layers`` and ``cka`` (one value per entry of ``hidden_states``) or the
        ``error`` that prevented it."""
        from loraexp.analysis.cka import layerwise_cka, pooled_hidden_states
        from loraexp.run.merge_check import stored_precision

        if self.base is None:
            return {"error": self.error or "base states not captured"}
        drift: dict[str, Any] = {"metric": METRIC, "probe_examples": int(self.base[0].shape[0]), "pooling": POOLING}
        if drift["probe_examples"] < 2:
            return {**drift, "error": "fewer than 2 probe examples in the eval split"}
        try:
            if self.trained is not None:
                drift["trained_pass"], trained = "evaluation", self.trained
            else:
                with rng_untouched(), stored_precision(model):  # as the base states: no autocast
                    drift["trained_pass"] = "probe"
                    trained = self._in_loader_order(pooled_hidden_states(model, self.batches))
            cka = layerwise_cka(self.base, trained)
        except (RuntimeError, ValueError) as exc:
            return {**drift, "error": f"{type(exc).__name__}: {exc}"}
        return {**drift, "layers": ["embeddings", *map(str, range(1, len(cka)))], "cka": cka}


def _same_tokens(row, expected) -> bool:
    """``row`` (on any device) holds exactly the token ids ``expected`` (on the CPU)."""
    import torch

    return row.shape == expected.shape and bool(torch.equal(row.cpu(), expected))
