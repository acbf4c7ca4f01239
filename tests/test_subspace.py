"""LoRA paper §7.2 subspace similarity φ(A1, A2, i, j): 1 for the same subspace, max(i, j)/d
in expectation for random ones, and its guards."""

from __future__ import annotations

import pytest
import torch

from loraexp.analysis.subspace import random_expectation, subspace_similarity


@pytest.mark.parametrize("r,d", [(1, 8), (4, 32), (8, 64)])
def test_identical_factor_gives_one_for_every_i_equal_j(r, d):
    a = torch.randn(r, d, generator=torch.Generator().manual_seed(r))
    phi = subspace_similarity(a, a)
    assert phi.shape == (r, r)
    torch.testing.assert_close(phi.diagonal(), torch.ones(r, dtype=torch.float64))


@pytest.mark.parametrize("r_small,r_large,d", [(2, 8, 32), (4, 16, 64)])
def test_subspace_contained_in_a_larger_one_gives_one_when_all_of_it_is_used(r_small, r_large, d):
    g = torch.Generator().manual_seed(0)
    large = torch.randn(r_large, d, generator=g, dtype=torch.float64)
    small = torch.randn(r_small, r_large, generator=g, dtype=torch.float64) @ large  # rows inside large's row space
    phi = subspace_similarity(small, large)
    assert phi.shape == (r_small, r_large)
    torch.testing.assert_close(phi[:, -1], torch.ones(r_small, dtype=torch.float64))  # j = r_large: the whole span
    assert (phi <= 1 + 1e-9).all() and (phi >= 0).all()


def test_same_row_space_after_mixing_rows_gives_one_at_full_rank():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 40, generator=g, dtype=torch.float64)
    mix = torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert float(subspace_similarity(a, mix @ a)[-1, -1]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("i,j,d", [(1, 1, 64), (2, 8, 64), (4, 16, 128), (8, 8, 32)])
def test_random_subspaces_average_the_expectation_max_i_j_over_d(i, j, d):
    g = torch.Generator().manual_seed(i * 100 + j)
    draws = [float(subspace_similarity(torch.randn(i, d, generator=g), torch.randn(j, d, generator=g))[i - 1, j - 1])
             for _ in range(400)]
    mean = sum(draws) / len(draws)
    expected = random_expectation(i, j, d)
    assert expected == max(i, j) / d
    assert mean == pytest.approx(expected, rel=0.15)


def test_directions_are_taken_in_order_of_singular_value():
    eye = torch.eye(6, dtype=torch.float64)
    a1 = torch.stack([10 * eye[0], eye[1]])  # top direction e1, then e2
    a2 = torch.stack([eye[2], 5 * eye[0]])   # top direction e1 (second row), then e3
    phi = subspace_similarity(a1, a2)
    assert float(phi[0, 0]) == pytest.approx(1.0)  # the top directions coincide
    assert float(phi[1, 1]) == pytest.approx(0.5)  # {e1, e2} vs {e1, e3}: one of two shared
    assert float(phi[1, 0]) == pytest.approx(1.0) and float(phi[0, 1]) == pytest.approx(1.0)


def test_orthogonal_subspaces_give_zero():
    eye = torch.eye(8, dtype=torch.float64)
    assert float(subspace_similarity(eye[:3], eye[3:6]).max()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 8), (2, 9)), ((8,), (2, 8)), ((2, 8, 1), (2, 8))])
def test_factors_of_different_modules_are_refused(a_shape, b_shape):
    with pytest.raises(ValueError, match="lora_A factors"):
        subspace_similarity(torch.randn(a_shape), torch.randn(b_shape))


@pytest.mark.parametrize("i,j,d", [(0, 1, 4), (1, 5, 4)])
def test_random_expectation_range(i, j, d):
    with pytest.raises(ValueError, match="1 <= i, j <= d"):
        random_expectation(i, j, d)
