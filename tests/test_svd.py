"""Factor-space SVD of ΔW against the dense reference, and the rank metrics."""

from __future__ import annotations

import math

import pytest
import torch

from loraexp.analysis.svd import factor_singular_values, lora_scaling, rank_metrics


@pytest.mark.parametrize("m,n,r", [(64, 48, 8), (48, 64, 8), (128, 128, 16), (32, 512, 4), (20, 20, 1), (40, 30, 30)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factor_svd_matches_dense_svdvals(m, n, r, dtype):
    torch.manual_seed(m * n + r)
    a = torch.randn(r, n).to(dtype)
    b = torch.randn(m, r).to(dtype)
    s = lora_scaling(2 * r, r)
    dense = torch.linalg.svdvals(s * b.double() @ a.double())[:r]
    factor = factor_singular_values(a, b, s)
    assert factor.shape == (r,) and factor.dtype == torch.float64
    torch.testing.assert_close(factor, dense, rtol=1e-9, atol=1e-9 * float(dense[0]))


def test_zero_b_gives_zero_spectrum_and_zero_metrics():
    sigma = factor_singular_values(torch.randn(4, 10), torch.zeros(12, 4), 2.0)
    assert torch.count_nonzero(sigma) == 0
    metrics = rank_metrics(sigma, r=4)
    assert metrics == {"frobenius_norm": 0.0, "spectral_norm": 0.0, "stable_rank": 0.0, "effective_rank": 0.0,
                       "k90": 0, "k99": 0, "utilization": 0.0}


@pytest.mark.parametrize("sigma,expected", [
    ([1.0, 1.0, 1.0, 1.0], {"stable_rank": 4.0, "effective_rank": 4.0, "k90": 4, "k99": 4, "utilization": 1.0}),
    ([3.0, 0.0, 0.0, 0.0], {"stable_rank": 1.0, "effective_rank": 1.0, "k90": 1, "k99": 1, "utilization": 0.25}),
    # energy 9, 1: k90 needs 9/10 -> 1 value; k99 needs both
    ([3.0, 1.0], {"stable_rank": 10 / 9, "effective_rank": math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
                  "k90": 1, "k99": 2, "utilization": 0.5 * math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))}),
])
def test_rank_metrics_on_known_spectra(sigma, expected):
    metrics = rank_metrics(torch.tensor(sigma), r=len(sigma))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12), key


def test_scaling_formulas():
    assert lora_scaling(16, 8) == 2.0  # LoRA paper §4.1: alpha / r
    assert lora_scaling(16, 4, use_rslora=True) == 8.0  # rsLoRA: alpha / sqrt(r)


def test_factor_svd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="lora_B"):
        factor_singular_values(torch.randn(4, 10), torch.randn(12, 5))
