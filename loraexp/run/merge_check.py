"""Merge-equivalence check: does the merged model compute what the adapter model computes?

Every comparison runs the models in the dtype of their weights (:func:`stored_precision`): a
model trained with mixed precision (``training.bf16``) has its ``forward`` wrapped in
``torch.autocast`` by accelerate, and comparing that with the unwrapped merged model would
measure bf16 rounding, not the merge (docs/verification.md, "Mixed precision").
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from loraexp.results.record import MergeCheck, ReloadCheck

SPACES = ("logits", "probs")


def trim_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` without the trailing columns that are padding in every row
    (``attention_mask`` 0): rows cut from a batch padded to a longer row keep only what they
    need, so a check's forward passes cost less; no real position's output changes (its
    attention never reaches those columns). Left-padded batches and batches without an
    ``attention_mask`` are returned as they are.

    Args:
        batch: ``(rows, seq)`` tensors (and any others, left alone).
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or not mask.shape[1] or bool(mask[:, -1].any()):
        return batch
    real = mask.any(0).nonzero()
    length = int(real.max()) + 1 if len(real) else 1
    seq = mask.shape[1]
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == seq else v for k, v in batch.items()}


def output_logits(output) -> torch.Tensor:
    """A model output's logits: ``logits``, or for extractive QA (``start_logits`` and
    ``end_logits``, each ``(batch, seq)``) both stacked to ``(batch, seq, 2)``."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else torch.stack([output.start_logits, output.end_logits], -1)


@contextlib.contextmanager
def stored_precision(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the context, ``model`` computes in the dtype of its weights: the mixed-precision
    wrapper accelerate puts around ``forward`` when it prepares a model
    (``Accelerator.prepare_model``: ``forward = convert_outputs_to_fp32(autocast(forward))``,
    the original kept as ``_original_forward``; accelerate 1.15) is set aside, and any
    ``torch.autocast`` around the call is disabled. Afterwards the wrapper is put back, so the
    Trainer's later evaluations still run as configured. (accelerate's own
    ``extract_model_from_parallel(model, keep_fp32_wrapper=False)`` removes it for good.)

    A model without the wrapper (an fp32 run, a merged copy's base, a fresh reload) is only
    run with autocast disabled.
    """
    wrapped = model.__dict__.get("forward")
    original = model.__dict__.get("_original_forward")
    if wrapped is not None and original is not None:
        model.forward = original
    device = next((p.device.type for p in model.parameters()), "cpu")
    try:
        with torch.autocast(device_type=device, enabled=False):
            yield model
    finally:
        if wrapped is not None and original is not None:
            model.forward = wrapped


@torch.no_grad()
def _logits(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    with stored_precision(model):
        return torch.cat([output_logits(model(**b)).float().flatten(0, -2) for b in batches])


def model_logits(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``model``'s logits on ``batches`` (:func:`output_logits`), computed in the dtype of its
    weights (:func:`stored_precision`, whatever mixed precision it trained with), returned as
    float32, flattened to ``(positions, classes | vocabulary | 2)`` and concatenated: what the
    checks compare."""
    return _logits(model, batches)


def _in_space(logits: torch.Tensor, space: str) -> torch.Tensor:
    return logits.softmax(-1) if space == "probs" else logits


@torch.no_grad()
def _seconds_per_batch(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], repeats: int) -> float:
    """Seconds per forward pass over ``batches``, in the dtype of the weights (as the outputs
    are compared), after one warm-up pass."""
    with stored_precision(model):
        model(**batches[0])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            for b in batches:
                model(**b)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * len(batches))


def _max_diff(a: torch.Tensor, b: torch.Tensor, space: str) -> float:
    return float((_in_space(a, space) - _in_space(b, space)).abs().max())


def _is_float32(model: torch.nn.Module) -> bool:
    return all(p.dtype == torch.float32 for p in model.parameters())


@torch.no_grad()
def _merge_in_float64(peft_model, batches, space: str) -> tuple[float, float, float]:
    """``(max |Δ| in space, max |Δlogit|, float32 rounding)`` of merged vs adapter outputs, both
    computed in float64 on a copy of ``peft_model`` (not changed); the third figure is max
    |Δlogit| between the float32 and float64 adapter outputs, the float32 rounding the model
    shows on these batches without any merge."""
    exact = copy.deepcopy(peft_model).double().eval()
    adapter32 = _logits(peft_model, batches).double()
    adapter64 = _logits(exact, batches)
    merged64 = _logits(exact.merge_and_unload().eval(), batches)
    rounding = float((adapter32 - adapter64).abs().max())
    return _max_diff(adapter64, merged64, space), float((adapter64 - merged64).abs().max()), rounding


@torch.no_grad()
def check_merge_equivalence(peft_model, batches: Sequence[dict[str, torch.Tensor]], atol: float = 1e-4,
                            latency_repeats: int = 3, space: str = "logits", effect_atol: float = 1e-4,
                            adapter_logits: torch.Tensor | None = None):
    """Compare the adapter model with ``merge_and_unload()`` of a copy of it on ``batches``.

    The check cannot pass vacuously: it first requires that the adapter changes the output
    (max |Δlogit| adapter vs base > ``effect_atol``, base = adapters disabled), as PEFT's
    ``_test_merge_layers`` does. Outputs are compared over every position: ``(batch, labels)``
    logits of a classifier, ``(batch, seq, vocab)`` of a causal LM. Both models compute in the
    dtype of their weights (:func:`stored_precision`), which ``precision`` records: a run
    trained under bf16 autocast (``training.bf16``) is checked in float32, as its weights are
    (with autocast, max |Δlogit| of MiniLM after 100 SST-2 steps was 0.0095, bf16 rounding of
    the adapter side alone; docs/verification.md, "Mixed precision").

    When a float32 model's merged and adapter outputs differ by more than ``atol``, the
    comparison is repeated in float64 on copies of both, and that figure decides
    (``precision`` float64; the float32 figure is kept in ``float32_max_abs_diff``). A merge is
    an algebraic identity, W + s·B·A; float32 rounding alone can exceed 1e-4 where a trained
    model carries activations of 10^4 (SmolLM2-135M: merged vs adapter max |Δlogit| 0.025 in
    float32, the adapter model itself 0.0097 from its float64 value; docs/verification.md),
    while a wrong merge (scaling, a missed module, dropout left on) differs in float64 too.

    Args:
        peft_model: a ``PeftModel``; it is not changed (the merge runs on a deep copy), but
            it is left in eval mode.
        batches: model inputs (dicts of ``(batch, seq)`` tensors on the model's device)
            without labels.
        atol: tolerance on max |Δ| in ``space``; 1e-4 is PEFT's fp32 merge tolerance on
            logits, 1e-2 its tolerance on probabilities for quantized models.
        latency_repeats: timed passes over ``batches`` for each model; 0: latency not measured
            (``adapter_latency_s`` and ``merged_latency_s`` stay None).
        space: ``logits`` or ``probs`` (softmax over the last dimension).
        effect_atol: the adapter must change some logit by more than this.
        adapter_logits: :func:`model_logits` of ``peft_model`` on ``batches`` as it is now,
            when the caller has them (the recipe passes the reload check's reference once that
            check found the model still gives them bit for bit); None: computed here.

    Returns:
        ``(merged_model, result)``; ``result`` is a :class:`~loraexp.results.record.MergeCheck`:
        ``passed``, ``max_abs_diff`` (in ``space``), ``max_abs_logit_diff``,
        ``adapter_vs_base_max_abs_diff``, ``atol``, ``precision``, ``adapter_latency_s`` and
        ``merged_latency_s`` (seconds per batch), and ``reason`` when it failed.

    Raises:
        ValueError: ``space`` is not one of :data:`SPACES`.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    peft_model.eval()
    with peft_model.disable_adapter():
        base_logits = _logits(peft_model, batches)
    if adapter_logits is None:
        adapter_logits = _logits(peft_model, batches)
    adapter_latency = _seconds_per_batch(peft_model, batches, latency_repeats) if latency_repeats else None
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    merged_logits = _logits(merged, batches)
    merged_latency = _seconds_per_batch(merged, batches, latency_repeats) if latency_repeats else None

    effect = float((adapter_logits - base_logits).abs().max())
    logit_diff = float((adapter_logits - merged_logits).abs().max())
    diff = _max_diff(adapter_logits, merged_logits, space)
    result = MergeCheck(space=space, max_abs_diff=diff, max_abs_logit_diff=logit_diff,
                        adapter_vs_base_max_abs_diff=effect, atol=atol, precision=str(adapter_logits.dtype)[6:],
                        adapter_latency_s=adapter_latency, merged_latency_s=merged_latency)
    if diff > atol and effect > effect_atol and _is_float32(peft_model):
        result.float32_max_abs_diff = diff
        diff, result.max_abs_logit_diff, result.float32_rounding_max_abs_diff = _merge_in_float64(
            peft_model, batches, space)
        result.max_abs_diff, result.precision = diff, "float64"
    result.passed = bool(effect > effect_atol and diff <= atol)
    if effect <= effect_atol:
        result.reason = (f"adapter does not change the output (max |adapter - base| = {effect:.3g} "
                         f"<= {effect_atol:g})")
    elif diff > atol:
        result.reason = f"merged {space} differ from adapter {space} by {diff:.3g} > atol {atol:g} ({result.precision})"
    return merged, result


@torch.no_grad()
def check_adapter_reload(trained_model, original_base, adapter_dir, batches: Sequence[dict[str, torch.Tensor]],
                         atol: float = 1e-4, space: str = "logits", effect_atol: float = 1e-4,
                         converted: bool = False, reference_logits: torch.Tensor | None = None) -> ReloadCheck:
    """Load the adapter saved in ``adapter_dir`` onto ``original_base`` (a fresh load of the
    pretrained model, consumed) and compare its outputs with ``trained_model``'s (the
    in-process model that was evaluated) on ``batches``.

    For an initialisation that rewrote the base (PiSSA, OLoRA), ``trained_model`` runs on the
    residual base and the saved adapter (converted by PEFT, rank 2r) on the original one:
    the same function computed differently. As in :func:`check_merge_equivalence`, both
    compute in the dtype of their weights (:func:`stored_precision`), and a
    float32 difference above ``atol`` is recomputed in float64 on copies. The check cannot
    pass vacuously: the trained model must differ from the original base alone by more
    than ``effect_atol`` (max |Δlogit|).

    ``reference_logits`` (:func:`model_logits` of the model as evaluated, taken before the
    adapter was saved) are what the saved adapter is compared with; the model in memory must
    still give exactly those (saving must not change it), else the check fails.

    Returns:
        a :class:`~loraexp.results.record.ReloadCheck`.
    """
    from loraexp.model.adapters import load_adapter

    trained_model.eval()
    trained = _logits(trained_model, batches)
    if reference_logits is not None and not torch.equal(trained, reference_logits):
        changed = float((trained - reference_logits).abs().max())
        return ReloadCheck(passed=False, space=space, atol=atol, converted=converted,
                           reason=f"the model's outputs changed while its adapter was saved "
                                  f"(max |Δlogit| {changed:.3g})")
    reloaded_model = load_adapter(original_base, adapter_dir).eval()
    reloaded = _logits(reloaded_model, batches)
    with reloaded_model.disable_adapter():
        effect = float((trained - _logits(reloaded_model, batches)).abs().max())
    diff = _max_diff(trained, reloaded, space)
    result = ReloadCheck(space=space, max_abs_diff=diff, base_max_abs_diff=effect, atol=atol,
                         precision=str(trained.dtype)[6:], converted=converted)
    if diff > atol and effect > effect_atol and _is_float32(trained_model) and _is_float32(reloaded_model):
        result.float32_max_abs_diff = diff
        a = _logits(copy.deepcopy(trained_model).double().eval(), batches)
        b = _logits(reloaded_model.double(), batches)
        diff = result.max_abs_diff = _max_diff(a, b, space)
        result.precision = "float64"
    result.passed = bool(effect > effect_atol and diff <= atol)
    if effect <= effect_atol:
        result.reason = (f"the trained model does not differ from the original base (max |Δlogit| = {effect:.3g} "
                         f"<= {effect_atol:g}), so the reload check cannot tell anything")
    elif diff > atol:
        result.reason = (f"the saved adapter on the original base differs from the trained model by {diff:.3g} "
                         f"> atol {atol:g} in {space} ({result.precision})")
    return result


@torch.no_grad()
def check_quantized_merge(quantized_peft_model, full_precision_base, adapter_dir,
                          batches: Sequence[dict[str, torch.Tensor]], atol: float = 1e-2, latency_repeats: int = 1):
    """Merge a QLoRA adapter into a full-precision reload of its base and check it.

    Merging into 4-bit weights re-quantizes ΔW and loses precision (a known PEFT
    limitation), so the adapter saved in ``adapter_dir`` is loaded on ``full_precision_base``
    (:func:`loraexp.model.adapters.load_adapter`, safetensors only) and merged there. Two figures, both max |Δ| of the
    next-token probabilities over every position of ``batches``:

    * ``max_abs_diff``: merged model vs full-precision adapter model, passed when
      <= ``atol`` (1e-2: PEFT's tolerance for quantized merges) -- see
      :func:`check_merge_equivalence`, whose other fields are returned too;
    * ``quantization_gap_max_abs_diff``: the quantized adapter model (as trained) vs the
      full-precision adapter model; reported, not pass/fail.

    Args:
        quantized_peft_model: the trained ``PeftModel`` on the 4-bit/8-bit base (not changed).
        full_precision_base: the same base model loaded unquantized (the adapter is loaded
            onto it).
        adapter_dir: directory written by ``save_pretrained``.

    Returns:
        ``(merged_model, result)``.
    """
    from loraexp.model.adapters import load_adapter

    quantized_peft_model.eval()
    quantized = _logits(quantized_peft_model, batches).softmax(-1)
    full = load_adapter(full_precision_base, adapter_dir).eval()
    gap = float((_logits(full, batches).softmax(-1) - quantized).abs().max())
    merged, result = check_merge_equivalence(full, batches, atol=atol, latency_repeats=latency_repeats,
                                             space="probs")
    result.quantization_gap_max_abs_diff = gap
    result.merged_into = "full-precision reload of the base"
    return merged, result
