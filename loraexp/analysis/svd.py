"""Singular values of ΔW = s·B·A computed from the factors, never forming ΔW.

With B ``(m, r)`` and A ``(r, n)``, thin QR gives B = Q_B R_B and Aᵀ = Q_A R_A, so
ΔW = s · Q_B (R_B R_Aᵀ) Q_Aᵀ and, Q_B and Q_A having orthonormal columns, the singular
values of ΔW are s times those of the r×r core R_B R_Aᵀ (docs/design.md, "Factor-space SVD").
Cost O((m + n) r²) instead of O(m n min(m, n)). Computed in float64.
"""

from __future__ import annotations

import math

import torch


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """s = α/r (LoRA paper §4.1), or α/√r for rsLoRA (Kalajdzievski, 2023)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def factor_singular_values(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """Singular values of ΔW = scaling · B · A, descending.

    Args:
        lora_A: ``(r, in_features)``, any float dtype.
        lora_B: ``(out_features, r)``, any float dtype.
        scaling: s, e.g. α/r.

    Returns:
        ``(r,)`` float64 tensor on the factors' device, descending, non-negative.

    Raises:
        ValueError: the inner dimensions of B and A differ.
    """
    if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_B.shape[1] != lora_A.shape[0]:
        raise ValueError(f"expected lora_B (m, r) and lora_A (r, n), got {tuple(lora_B.shape)} and "
                         f"{tuple(lora_A.shape)}")
    a = lora_A.detach().to(torch.float64)
    b = lora_B.detach().to(torch.float64)
    _, r_b = torch.linalg.qr(b, mode="reduced")      # (r, r) when m >= r
    _, r_a = torch.linalg.qr(a.T, mode="reduced")    # (r, r) when n >= r
    core = r_b @ r_a.T
    return torch.linalg.svdvals(core) * abs(scaling)


def rank_metrics(singular_values: torch.Tensor, r: int | None = None) -> dict[str, float]:
    """Rank statistics of a matrix from its singular values σ (descending).

    * ``stable_rank`` = ‖ΔW‖_F² / ‖ΔW‖_2² = Σσ² / σ₁².
    * ``effective_rank`` = exp(H(p)), p_i = σ_i / Σσ (Roy & Vetterli, 2007).
    * ``k90`` / ``k99``: smallest k with Σ_{i≤k} σ_i² ≥ 0.90 / 0.99 · Σσ² (energy rank).
    * ``utilization`` = effective_rank / r (only when ``r`` is given).
    * ``frobenius_norm`` = ‖ΔW‖_F = √Σσ², ``spectral_norm`` = σ₁.

    An all-zero ΔW (B at its zero init) gives zeros throughout.
    """
    s = singular_values.detach().to(torch.float64).flatten()
    energy = (s ** 2).sum()
    out = {"frobenius_norm": float(energy.sqrt()), "spectral_norm": float(s.max()) if s.numel() else 0.0}
    if s.numel() == 0 or energy <= 0:
        out.update(stable_rank=0.0, effective_rank=0.0, k90=0, k99=0)
    else:
        p = s / s.sum()
        p = p[p > 0]
        out["stable_rank"] = float(energy / s.max() ** 2)
        out["effective_rank"] = float(torch.exp(-(p * p.log()).sum()))
        cumulative = torch.cumsum(s ** 2, 0) / energy
        # small slack so that exactly 0.9 of the energy counts despite float64 rounding
        out["k90"] = int((cumulative < 0.90 - 1e-12).sum()) + 1
        out["k99"] = int((cumulative < 0.99 - 1e-12).sum()) + 1
    if r is not None:
        out["utilization"] = out["effective_rank"] / r
    return out
