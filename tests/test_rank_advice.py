"""Rank advice on synthetic adapters whose ΔW spectra are known: it proposes the known ranks,
keeps each module's scaling, and counts the parameters it saves."""

from __future__ import annotations

import pytest
import torch

from loraexp.analysis.rank_advice import ModuleSpectra, advise_ranks, alpha_for, energy_rank
from loraexp.analysis.svd import factor_singular_values


def _factors_of_rank(k: int, r: int, m: int = 48, n: int = 40, seed: int = 0):
    """lora_A (r, n) and lora_B (m, r) whose product has rank exactly k (r - k rows of A zero)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, n, generator=g, dtype=torch.float64)
    a[k:] = 0
    return a, torch.randn(m, r, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sigma,energy,expected", [
    ([3.0, 0.0, 0.0], 0.9, 1),
    ([1.0, 1.0, 1.0, 1.0], 0.9, 4),          # flat: 3/4 < 0.9
    ([1.0] * 16, 0.9, 15),                  # 15/16 >= 0.9
    ([3.0, 1.0, 0.1], 0.9, 2),              # 9 / 10.01 = 0.899 < 0.9
    ([0.0, 0.0], 0.9, 1),                   # all-zero update: PEFT's smallest r
    ([2.0, 1.0], 1.0, 2),
])
def test_energy_rank(sigma, energy, expected):
    assert energy_rank(sigma, energy) == expected


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.5])
def test_energy_outside_unit_interval_is_refused(energy):
    with pytest.raises(ValueError, match="energy must be in"):
        energy_rank([1.0], energy)


def test_advice_proposes_the_known_ranks_of_synthetic_adapters():
    r, scaling = 16, 2.0
    known = {"layer.0.attn.query": 2, "layer.0.attn.value": 5, "layer.1.attn.query": 5, "layer.1.attn.value": 9,
             "layer.2.attn.query": 1}
    modules = {}
    for index, (name, k) in enumerate(known.items()):
        spectra = []
        for seed in range(3):
            a, b = _factors_of_rank(k, r, seed=10 * index + seed)
            spectra.append(factor_singular_values(a, b, scaling).tolist())
        modules[name] = ModuleSpectra(r=r, in_features=40, out_features=48, singular_values=spectra)
    advice = advise_ranks(modules, energy=0.999999, scaling=scaling)  # all but rounding: the exact rank
    assert advice.module_ranks == known
    assert advice.r == 5  # the median of 1, 2, 5, 5, 9
    assert advice.rank_pattern == {"layer.0.attn.query": 2, "layer.1.attn.value": 9, "layer.2.attn.query": 1}
    assert advice.lora_alpha == 10.0  # scaling 2 kept: alpha = s * r
    assert advice.alpha_pattern == {"layer.0.attn.query": 4.0, "layer.1.attn.value": 18.0, "layer.2.attn.query": 2.0}
    assert advice.source_lora_params == 5 * 16 * (40 + 48)
    assert advice.proposed_lora_params == sum(known.values()) * (40 + 48)
    assert advice.saving == pytest.approx(1 - 22 / 80)
    overrides = advice.lora_overrides()
    assert overrides["lora.r"] == 5 and overrides["lora.rank_pattern"] == advice.rank_pattern


def test_the_largest_rank_over_seeds_is_kept():
    spectra = [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]
    advice = advise_ranks({"m": ModuleSpectra(4, 8, 8, spectra)}, energy=0.99)
    assert advice.module_ranks == {"m": 3} and advice.r == 3 and advice.rank_pattern == {}


def test_rslora_keeps_alpha_over_sqrt_r():
    assert alpha_for(4, 8.0, use_rslora=True) == 16.0
    assert alpha_for(4, 8.0, use_rslora=False) == 32.0


def test_the_advice_configures_peft_with_those_ranks():
    from conftest import tiny_classifier
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    modules = {f"bert.encoder.layer.{i}.attention.self.{kind}": ModuleSpectra(4, 16, 16, [[1.0] * k + [0.0] * (4 - k)])
               for i, (kind, k) in enumerate([("query", 1), ("query", 3)])}
    advice = advise_ranks(modules, energy=0.99, scaling=2.0)
    config = LoraConfig(r=advice.r, lora_alpha=advice.lora_alpha, rank_pattern=advice.rank_pattern,
                        alpha_pattern=advice.alpha_pattern, target_modules=["query"])
    model = get_peft_model(tiny_classifier("bert"), config)
    layers = {name.removeprefix("base_model.model."): m for name, m in model.named_modules()
              if isinstance(m, LoraLayer)}
    assert {name: m.r["default"] for name, m in layers.items()} == advice.module_ranks
    assert {m.scaling["default"] for m in layers.values()} == {2.0}


def test_no_modules_is_an_error():
    with pytest.raises(ValueError, match="no LoRA modules"):
        advise_ranks({})
