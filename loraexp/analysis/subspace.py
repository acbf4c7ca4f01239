"""Subspace similarity between two LoRA adapters of the same module (LoRA paper, Hu et al.
2021, §7.2 and Figure 3).

For ``lora_A`` factors A₁ ``(r₁, d)`` and A₂ ``(r₂, d)`` of the same module (d its
``in_features``), let U₁ ``(d, r₁)`` and U₂ ``(d, r₂)`` be their right-singular vectors,
ordered by singular value. The normalised similarity of their top-i and top-j directions is

    φ(A₁, A₂, i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖_F² / min(i, j)  ∈ [0, 1],

1 when one span contains the other, 0 when they are orthogonal. For random subspaces of
dimension i and j in ℝᵈ its expectation is i·j/d / min(i, j) = max(i, j)/d
(:func:`random_expectation`), the baseline a trained pair is compared with.
"""

from __future__ import annotations

import torch


def right_singular_vectors(lora_A: torch.Tensor) -> torch.Tensor:
    """Right-singular vectors of ``lora_A`` ``(r, d)`` as columns ``(d, min(r, d))``, float64,
    in descending order of singular value. Directions beyond the rank of ``lora_A`` (zero
    singular values) are an arbitrary orthonormal completion."""
    _, _, vh = torch.linalg.svd(lora_A.detach().to(torch.float64), full_matrices=False)
    return vh.T


def subspace_similarity(lora_A_1: torch.Tensor, lora_A_2: torch.Tensor) -> torch.Tensor:
    """φ(A₁, A₂, i, j) for every 1 ≤ i ≤ r₁ and 1 ≤ j ≤ r₂ (LoRA paper §7.2, eq. 4).

    Args:
        lora_A_1: ``(r1, d)``, any float dtype.
        lora_A_2: ``(r2, d)``, the same module's ``in_features`` d.

    Returns:
        ``(min(r1, d), min(r2, d))`` float64 tensor (``(r1, r2)`` for LoRA, r ≤ d); entry
        ``[i-1, j-1]`` is φ for the top-i directions of A₁ and the top-j directions of A₂.

    Raises:
        ValueError: the factors are not 2-D or their widths differ.
    """
    if lora_A_1.ndim != 2 or lora_A_2.ndim != 2 or lora_A_1.shape[1] != lora_A_2.shape[1]:
        raise ValueError(f"expected lora_A factors (r1, d) and (r2, d) of one module, got "
                         f"{tuple(lora_A_1.shape)} and {tuple(lora_A_2.shape)}")
    u1, u2 = right_singular_vectors(lora_A_1), right_singular_vectors(lora_A_2)
    overlap = (u1.T @ u2) ** 2                           # (r1, r2): squared cosines of direction pairs
    cumulative = overlap.cumsum(0).cumsum(1)             # [i-1, j-1] = ‖U1[:, :i]ᵀ U2[:, :j]‖_F²
    i = torch.arange(1, overlap.shape[0] + 1, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(1, overlap.shape[1] + 1, dtype=torch.float64).unsqueeze(0)
    return cumulative / torch.minimum(i, j)


def random_expectation(i: int, j: int, d: int) -> float:
    """E[φ] for uniformly random i- and j-dimensional subspaces of ℝᵈ: max(i, j)/d.

    (E‖PᵢQⱼ‖_F² = i·j/d for independent random projections, divided by min(i, j).)

    Raises:
        ValueError: ``i`` or ``j`` is not in 1..d.
    """
    if not (1 <= i <= d and 1 <= j <= d):
        raise ValueError(f"expected 1 <= i, j <= d, got i={i}, j={j}, d={d}")
    return max(i, j) / d
