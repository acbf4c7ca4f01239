"""Representation drift: linear CKA between the base model's and the adapted model's hidden
states, per layer, on a fixed probe set (Kornblith et al. 2019, "Similarity of Neural Network
Representations Revisited", equation 5).

Each example is one row: its hidden state at a layer, averaged over its non-padding tokens
(docs/report.md, "Representation drift"). CKA compares the two ``(n, hidden)`` matrices of a
layer; 1 means the adapted model represents the probe examples as the base did, up to an
orthogonal transform and a scale, and lower values mean the adaptation moved that layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same ``n`` examples.

    CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F) on column-centred X and Y (Kornblith et
    al. 2019, eq. 5). It is 1 for identical representations and invariant to orthogonal
    transforms and isotropic scaling of either one; 0 when their centred columns are
    orthogonal. Computed in float64 through the ``(n, n)`` Gram matrices, so ``hidden`` may be
    much larger than ``n``.

    Args:
        x: ``(n, p1)`` float tensor, one row per example.
        y: ``(n, p2)`` float tensor, the same examples in the same order.

    Returns:
        CKA in [0, 1]; NaN when either representation is constant over the examples.

    Raises:
        ValueError: ``x`` and ``y`` are not 2-D or have different numbers of rows, or fewer
            than 2 rows.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"expected two (n, p) matrices with the same n >= 2, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    gram_x, gram_y = x @ x.T, y @ y.T  # (n, n); ‖YᵀX‖_F² = tr(K L) = <K, L>_F
    denominator = gram_x.norm() * gram_y.norm()
    if denominator == 0:
        return float("nan")
    return float((gram_x * gram_y).sum() / denominator)


@torch.no_grad()
def pool_hidden_states(hidden_states: Sequence[torch.Tensor],
                       attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Each layer's hidden states averaged over each example's non-padding tokens.

    Args:
        hidden_states: a model output's ``hidden_states``, one ``(batch, seq, hidden)`` tensor
            per entry (the embeddings first, then each layer).
        attention_mask: ``(batch, seq)``, 1 on real tokens; None: every position counts.

    Returns:
        One ``(batch, hidden)`` float32 CPU tensor per entry of ``hidden_states``.
    """
    first = hidden_states[0]
    if attention_mask is None:
        attention_mask = torch.ones(first.shape[:2], device=first.device)
    weights = attention_mask.to(torch.float32).unsqueeze(-1)  # (batch, seq, 1)
    counts = weights.sum(1).clamp_min(1.0)                    # (batch, 1)
    return [((hidden.float() * weights).sum(1) / counts).cpu() for hidden in hidden_states]


@torch.no_grad()
def pooled_hidden_states(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Hidden states of every layer, averaged over each example's non-padding tokens
    (:func:`pool_hidden_states`), the model in eval mode.

    Args:
        model: a transformers model (or PEFT model) accepting ``output_hidden_states=True``.
        batches: model inputs with ``input_ids`` ``(batch, seq)`` and ``attention_mask``
            ``(batch, seq)`` (all ones when absent); no ``labels``.

    Returns:
        One ``(n, hidden)`` float32 CPU tensor per entry of ``hidden_states`` (the embeddings
        first, then each layer), n the number of examples over all batches.
    """
    was_training = model.training
    model.eval()
    layers: list[list[torch.Tensor]] = []
    try:
        for batch in batches:
            pooled = pool_hidden_states(model(**batch, output_hidden_states=True).hidden_states,
                                        batch.get("attention_mask"))
            layers = layers or [[] for _ in pooled]
            for parts, layer in zip(layers, pooled):
                parts.append(layer)
    finally:
        model.train(was_training)
    return [torch.cat(parts) for parts in layers]


def layerwise_cka(base: list[torch.Tensor], adapted: list[torch.Tensor]) -> list[float]:
    """:func:`linear_cka` of each layer's base and adapted representations.

    Args:
        base, adapted: :func:`pooled_hidden_states` of the same probe batches.

    Raises:
        ValueError: different numbers of layers, or a layer's two matrices have different
            numbers of rows or fewer than 2 (widths may differ).
    """
    if len(base) != len(adapted):
        raise ValueError(f"{len(base)} base layers against {len(adapted)} adapted layers")
    return [linear_cka(b, a) for b, a in zip(base, adapted)]
