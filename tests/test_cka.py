"""Linear CKA (Kornblith et al. 2019): 1 for identical representations, invariant to orthogonal
transforms and isotropic scaling, low for unrelated ones; per-example pooling ignores padding."""

from __future__ import annotations

import contextlib

import pytest
import torch

from loraexp.analysis.cka import layerwise_cka, linear_cka, pooled_hidden_states
from tests.conftest import tiny_classifier


def _x(n=64, p=24, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n,p", [(64, 24), (16, 200)])  # n > p and n < p (the probe set is smaller than the width)
def test_identical_representations_give_one(n, p):
    x = _x(n, p)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("transform", ["orthogonal", "scale", "orthogonal_and_scale", "shift"])
def test_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts(transform):
    x = _x()
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    y = {"orthogonal": x @ q, "scale": 7.5 * x, "orthogonal_and_scale": 0.01 * x @ q, "shift": x + 3.0}[transform]
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-10)


def test_not_invariant_to_anisotropic_scaling():
    x = _x()
    y = x * torch.linspace(0.01, 10, 24, dtype=torch.float64)
    assert linear_cka(x, y) < 0.95


def test_unrelated_representations_are_far_from_one():
    assert linear_cka(_x(256, 16, 0), _x(256, 16, 1)) < 0.2


def test_widths_may_differ_and_result_is_symmetric():
    x, y = _x(32, 10, 2), _x(32, 30, 3)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


@pytest.mark.parametrize("x_shape,y_shape", [((8, 4), (9, 4)), ((8,), (8, 4)), ((1, 4), (1, 4))])
def test_bad_shapes_are_refused(x_shape, y_shape):
    with pytest.raises(ValueError, match="same n >= 2"):
        linear_cka(torch.randn(x_shape), torch.randn(y_shape))


def test_constant_representation_gives_nan():
    x = torch.ones(8, 3)
    assert linear_cka(x, _x(8, 3)) != linear_cka(x, _x(8, 3))  # NaN


def test_pooled_hidden_states_average_non_padding_tokens_only():
    from conftest import tiny_classifier

    model = tiny_classifier("bert")
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    states = pooled_hidden_states(model, [{"input_ids": ids, "attention_mask": mask}])
    assert len(states) == 3 and all(s.shape == (2, 16) for s in states)  # embeddings + 2 layers
    alone = pooled_hidden_states(model, [{"input_ids": ids[1:, :2], "attention_mask": mask[1:, :2]}])
    torch.testing.assert_close(states[-1][1:], alone[-1], atol=1e-5, rtol=1e-5)  # padding changed nothing
    assert not model.training
    assert layerwise_cka(states, states) == pytest.approx([1.0] * 3, abs=1e-9)


def test_layerwise_cka_needs_the_same_layers():
    with pytest.raises(ValueError, match="base layers"):
        layerwise_cka([torch.randn(4, 2)], [torch.randn(4, 2)] * 2)


@pytest.mark.parametrize("lengths,left_padded,groups", [
    ([3, 7, 2, 5, 7, 1], False, [[5, 2, 0], [3, 1, 4]]),   # sorted by length (ties in order), 3 rows a group
    ([4, 4, 4], False, [[0, 1, 2]]),
    ([3, 7, 2, 5], True, None),                            # left padding: positions matter, kept whole
])
def test_probe_rows_are_regrouped_by_length_without_changing_the_drift(lengths, left_padded, groups):
    from loraexp.run.representation_drift import regroup_by_length
    from tests.conftest import tiny_classifier

    width = max(lengths) + 2
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    if left_padded:
        mask = mask.flip(1)
    batch = {"input_ids": torch.randint(1, 100, mask.shape, generator=torch.Generator().manual_seed(0)) * mask,
             "attention_mask": mask}
    parts = regroup_by_length(batch, 3)
    if groups is None:
        assert parts == [batch]
        return
    order = [i for group in groups for i in group]
    assert [p["attention_mask"].sum(1).tolist() for p in parts] == [[lengths[i] for i in g] for g in groups]
    assert [p["input_ids"].shape[1] for p in parts] == [max(lengths[i] for i in g) for g in groups]
    model = tiny_classifier("bert")
    whole = pooled_hidden_states(model, [batch])
    regrouped = pooled_hidden_states(model, parts)
    assert all(torch.allclose(w[order], r, atol=1e-5) for w, r in zip(whole, regrouped))
    other = tiny_classifier("bert", seed=1)  # CKA of two models: the same with regrouped rows
    drift = layerwise_cka(whole, pooled_hidden_states(other, [batch]))
    assert min(drift) < 0.999 and drift == pytest.approx(
        layerwise_cka(regrouped, pooled_hidden_states(other, parts)), abs=1e-5)


def _probe_loader(lengths, rows_per_batch=4, seed=0):
    """Right-padded eval batches with labels, as the Trainer's eval loader gives them."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(lengths), rows_per_batch):
        part = lengths[start:start + rows_per_batch]
        mask = torch.tensor([[1] * n + [0] * (max(part) - n) for n in part])
        batches.append({"input_ids": torch.randint(1, 100, mask.shape, generator=gen) * mask,
                        "attention_mask": mask, "labels": torch.zeros(len(part), dtype=torch.long)})
    return batches


def _evaluate(model, loader):
    """What the Trainer's prediction loop does with each batch: ``model(**inputs)``."""
    with torch.no_grad():
        return [model(**batch) for batch in loader]


LENGTHS = [3, 7, 2, 5, 7, 1, 4, 6, 2, 5]


@pytest.mark.parametrize("wanted", [10, 6, 3])
def test_trained_probe_states_taken_from_the_evaluation_pass_are_the_probe_pass_states(wanted):
    from loraexp.run.representation_drift import DriftProbe

    loader = _probe_loader(LENGTHS)
    probe = DriftProbe.from_loader(loader, wanted, "cpu", rows=3)
    assert sum(len(b["input_ids"]) for b in probe.batches) == wanted
    probe.capture_base(tiny_classifier("bert"), contextlib.nullcontext())
    trained = tiny_classifier("bert", seed=1)
    plain = _evaluate(trained, loader)
    with probe.taken_from_evaluation(trained):
        evaluated = _evaluate(trained, loader)
    assert probe.trained is not None and probe.trained[0].shape[0] == wanted
    for before, after in zip(plain, evaluated):  # the evaluation's outputs are what they were
        assert after.hidden_states is None and torch.equal(before.logits, after.logits)
    from_evaluation = probe.measure(trained)
    probe.trained = None
    from_probe = probe.measure(trained)
    assert (from_evaluation["trained_pass"], from_probe["trained_pass"]) == ("evaluation", "probe")
    assert min(from_probe["cka"]) < 0.999
    assert from_evaluation["cka"] == pytest.approx(from_probe["cka"], abs=1e-6)


@pytest.mark.parametrize("case", ["other rows", "batch too large", "positional call", "tuple outputs",
                                  "config without return_dict", "pooling fails", "training forward only",
                                  "too few rows"])
def test_probe_states_not_taken_from_an_evaluation_that_is_not_the_probe_rows(case, monkeypatch):
    """Any doubt that the evaluation pass saw exactly the probe rows, as the probe pass would,
    or any error while taking them, leaves the trained states to the probe pass (``trained``
    stays None) and the evaluation's outputs as they were."""
    from loraexp.run.representation_drift import DriftProbe

    loader = _probe_loader(LENGTHS)
    probe = DriftProbe.from_loader(loader, 8, "cpu")
    model = tiny_classifier("bert", seed=1)
    kwargs = {"max_bytes": 0} if case == "batch too large" else {}
    if case == "config without return_dict":
        model.config.return_dict = False
    if case == "pooling fails":
        def fail(*args):
            raise RuntimeError("out of memory")
        monkeypatch.setattr("loraexp.analysis.cka.pool_hidden_states", fail)
    plain = _evaluate(model, loader)
    with probe.taken_from_evaluation(model, **kwargs), torch.no_grad():
        if case in ("config without return_dict", "pooling fails"):
            outputs = _evaluate(model, loader)
            assert all(len(a) == len(b) and torch.equal(a[1] if isinstance(a, tuple) else a.logits,
                                                        b[1] if isinstance(b, tuple) else b.logits)
                       for a, b in zip(plain, outputs))  # (loss, logits): no hidden states added
        elif case == "other rows":
            _evaluate(model, _probe_loader(LENGTHS, seed=1))
        elif case == "positional call":
            for batch in loader:
                model(batch["input_ids"], batch["attention_mask"])
        elif case == "tuple outputs":
            outputs = [model(**batch, return_dict=False) for batch in loader]
            assert all(len(out) == 2 for out in outputs)  # (loss, logits): no hidden states added
        elif case == "training forward only":
            model.train()
            _evaluate(model, loader)
        else:
            _evaluate(model, loader[:1])
    assert probe.trained is None


@pytest.mark.parametrize("asked_by", ["call", "config"])
def test_probe_states_keep_hidden_states_the_caller_asked_for(asked_by):
    from loraexp.run.representation_drift import DriftProbe

    loader = _probe_loader(LENGTHS)
    probe = DriftProbe.from_loader(loader, 4, "cpu")
    model = tiny_classifier("bert")
    if asked_by == "config":
        model.config.output_hidden_states = True
    with probe.taken_from_evaluation(model), torch.no_grad():
        out = model(**loader[0], **({"output_hidden_states": True} if asked_by == "call" else {}))
    assert probe.trained is not None and len(out.hidden_states) == 3
