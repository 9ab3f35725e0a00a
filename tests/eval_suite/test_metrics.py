"""eval_suite.metrics: vectorised metrics agree with scipy on random vectors (with ties, masks, undefined cases),
and the evaluate modules load offline from their local path and return the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from scipy.stats import kendalltau

from eval_suite import metrics as M


def _random_vectors(rng, n_vectors, length, ties=True):
    if ties:  # few distinct values -> many ties in both vectors
        return rng.integers(0, 4, size=(n_vectors, length)).astype(float), rng.integers(0, 5, size=(n_vectors, length)).astype(float)
    return rng.random((n_vectors, length)), rng.random((n_vectors, length))


@pytest.mark.parametrize("ties", [True, False])
def test_kendall_tau_b_matches_scipy(ties):
    rng = np.random.default_rng(0)
    x, y = _random_vectors(rng, 200, 13, ties)
    ours = M.kendall_tau_b(x, y).numpy()
    expected = np.array([kendalltau(a, b).statistic for a, b in zip(x, y)])
    assert np.allclose(ours, expected, equal_nan=True, atol=1e-12)
    assert np.isfinite(ours).sum() > 150


def test_kendall_tau_b_with_mask_equals_scipy_on_the_subset_and_chunking_is_invisible():
    rng = np.random.default_rng(1)
    x, y = _random_vectors(rng, 64, 17)
    mask = rng.random((64, 17)) < 0.6
    ours = M.kendall_tau_b(x, y, mask).numpy()
    chunked = M.kendall_tau_b(x, y, mask, max_elements=17 * 17 * 3).numpy()
    expected = []
    for a, b, m in zip(x, y, mask):
        expected.append(kendalltau(a[m], b[m]).statistic if m.sum() >= 2 else np.nan)
    assert np.allclose(ours, np.array(expected), equal_nan=True, atol=1e-12)
    assert np.array_equal(ours, chunked, equal_nan=True)


def test_kendall_tau_b_cross_equals_pairwise_calls():
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.integers(0, 4, size=(3, 2, 5, 11)).astype(float))  # [B, layers, H, L], with zeros and ties
    y = torch.tensor(rng.random((3, 2, 4, 11)))  # [B, layers, M, L]
    x[0, 1, 2] = float("nan")  # an undefined attention vector
    mask = torch.tensor(rng.random((3, 1, 11)) < 0.8)
    cross = M.kendall_tau_b_cross(x, y, mask)
    direct = M.kendall_tau_b(x[..., :, None, :], y[..., None, :, :], mask[:, :, None, None, :])
    assert cross.shape == (3, 2, 5, 4)
    assert torch.allclose(cross, direct, equal_nan=True, atol=1e-12)
    support = M.kendall_tau_b_cross(x, y, mask, on_support=True)
    direct_support = M.kendall_tau_b(x[..., :, None, :], y[..., None, :, :], mask[:, :, None, None, :] & (x[..., :, None, :] != 0))
    assert torch.allclose(support, direct_support, equal_nan=True, atol=1e-12)
    assert torch.isnan(cross[0, 1, 2]).all() and torch.isfinite(cross).sum() > 80


def test_kendall_tau_b_is_nan_for_constant_vectors_and_broadcasts():
    x = torch.tensor([[0.2, 0.2, 0.2], [0.1, 0.5, 0.4]])
    y = torch.tensor([0.3, 0.1, 0.6])
    tau = M.kendall_tau_b(x, y)
    assert tau.shape == (2,)
    assert math.isnan(tau[0])
    assert tau[1] == pytest.approx(kendalltau([0.1, 0.5, 0.4], [0.3, 0.1, 0.6]).statistic)
    assert math.isnan(M.kendall_tau_b([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [True, False, False]))


def test_jensen_shannon_matches_scipy_squared_base2():
    rng = np.random.default_rng(2)
    p, q = rng.random((50, 9)), rng.random((50, 9))
    p[p < 0.3] = 0.0  # exact zeros as in sparse attention
    ours = M.jensen_shannon(p, q).numpy()
    expected = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    assert np.allclose(ours, expected, atol=1e-12)
    assert M.jensen_shannon([1.0, 0.0], [0.0, 1.0]).item() == pytest.approx(1.0)


def test_normalised_entropy_matches_scipy_and_handles_masks():
    rng = np.random.default_rng(3)
    p = rng.random((30, 11))
    mask = rng.random((30, 11)) < 0.7
    ours = M.normalised_entropy(p, mask).numpy()
    expected = [scipy_entropy(a[m]) / np.log(m.sum()) if m.sum() >= 2 else np.nan for a, m in zip(p, mask)]
    assert np.allclose(ours, np.array(expected), equal_nan=True, atol=1e-12)
    assert M.normalised_entropy([0.0, 1.0, 0.0]).item() == 0.0
    assert M.normalised_entropy([1.0, 1.0, 1.0, 1.0]).item() == pytest.approx(1.0)
    assert math.isnan(M.normalised_entropy([0.0, 0.0, 0.0]).item())


def test_sparsity_support_and_coverage():
    attention = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.8, 0.0]])
    importance = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.0], [0.5, 0.0, 0.3, 0.2, 0.0]])
    mask = torch.tensor([True, True, True, True, False])
    assert M.sparsity(attention, mask).tolist() == [0.5, 0.5]
    assert M.support_size(attention, mask).tolist() == [2.0, 2.0]
    cov = M.support_coverage(attention, importance, mask)
    # Example 0: the support is exactly the top-2 importance tokens; example 1: it holds 0.0 + 0.2 of the
    # best possible 0.5 + 0.3 (importance already sums to 1 over the mask).
    assert cov["support_mass"].tolist() == pytest.approx([0.7, 0.2])
    assert cov["topk_mass"].tolist() == pytest.approx([0.7, 0.8])
    assert cov["support_coverage"].tolist() == pytest.approx([1.0, 0.25])


def test_top_k_mask_breaks_ties_by_position_and_respects_mask():
    values = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.5])
    mask = torch.tensor([True, True, True, False, True])
    assert M.top_k_mask(values, 2, mask).tolist() == [False, True, True, False, False]
    assert M.top_k_mask(values[None].repeat(2, 1), torch.tensor([1, 3]), mask).sum(dim=1).tolist() == [1, 3]


def test_normalise_and_aopc():
    dist = M.normalise(torch.tensor([2.0, 1.0, 1.0]), torch.tensor([True, True, False]))
    assert dist.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert torch.isnan(M.normalise(torch.tensor([0.0, 0.0]))).all()
    assert M.aopc(torch.tensor([0.9, 0.6]), torch.tensor([[0.5, 0.3], [0.6, 0.2]])).tolist() == pytest.approx([0.5, 0.2])


def test_accuracy_and_macro_f1_follow_their_definitions():
    predictions = np.array([0, 0, 1, 1, 2, 2, 2])
    references = np.array([0, 1, 1, 1, 2, 0, 2])
    assert M.accuracy(predictions, references) == pytest.approx(5 / 7)
    per_class = []
    for c in (0, 1, 2):
        tp = np.sum((predictions == c) & (references == c))
        precision = tp / np.sum(predictions == c)
        recall = tp / np.sum(references == c)
        per_class.append(2 * precision * recall / (precision + recall))
    assert M.macro_f1(predictions, references) == pytest.approx(np.mean(per_class))
    with pytest.raises(ValueError):
        M.accuracy([0, 1], [0])


def test_evaluate_modules_load_from_local_path_offline(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    quality = evaluate.load(str(M.module_path("classification_quality")))
    result = quality.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    assert result == {"accuracy": M.accuracy([0, 1, 1, 0], [0, 1, 0, 0]), "macro_f1": M.macro_f1([0, 1, 1, 0], [0, 1, 0, 0])}

    agreement = evaluate.load(str(M.module_path("attention_agreement")))
    attention = [[0.7, 0.3, 0.0, 0.0], [0.1, 0.6, 0.3]]
    importance = [[0.5, 0.2, 0.3, 0.1], [0.2, 0.2, 0.6]]
    out = agreement.compute(attention=attention, importance=importance)
    taus = [kendalltau(a, b).statistic for a, b in zip(attention, importance)]
    assert out["n_examples"] == 2
    assert out["kendall_tau_b"] == pytest.approx(np.mean(taus))
    assert out["jensen_shannon"] == pytest.approx(np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in zip(attention, importance)]))
    assert out["sparsity"] == pytest.approx(np.mean([0.5, 0.0]))
    with pytest.raises(FileNotFoundError):
        M.module_path("no_such_metric")


# ----------------------------------------------------------------------------------------------- agreement vs ties


def _shared_zero_vectors(rng, n_vectors=300, length=20, support=5):
    """Attention and importance that are zero on the same positions by construction, independent elsewhere."""
    x, y = np.zeros((n_vectors, 1, length)), np.zeros((n_vectors, 1, length))
    for i in range(n_vectors):
        keep = rng.choice(length, support, replace=False)
        x[i, 0, keep], y[i, 0, keep] = rng.random(support), rng.random(support)
    return torch.tensor(x), torch.tensor(y)


def test_shared_zeros_raise_raw_tau_but_not_the_excess_over_the_null():
    x, y = _shared_zero_vectors(np.random.default_rng(5))
    raw = M.kendall_tau_b_cross(x, y)[:, 0, 0]
    null = M.kendall_tau_b_null_cross(x, y)[:, 0, 0]
    union = M.kendall_tau_b_on_union_cross(x, y)[:, 0, 0]
    assert raw.mean() > 0.5  # 15 shared zeros against 5 non-zeros: most pairs are concordant by construction
    excess = raw - null
    assert abs(float(excess.mean())) < 3 * float(excess.std()) / math.sqrt(len(excess))
    assert abs(float(union.mean())) < 3 * float(union.std()) / math.sqrt(len(union))


def test_null_is_the_mean_of_seeded_permutations_of_the_nonzero_importance():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, size=(3, 14)).astype(float)  # attention with zeros and ties
    y = np.where(rng.random((3, 14)) < 0.4, 0.0, rng.random((3, 14)))
    mask = rng.random(14) < 0.85
    exact = M.kendall_tau_b_null_cross(torch.tensor(x)[:, None], torch.tensor(y)[:, None], torch.tensor(mask))
    for i in range(3):
        nonzero = np.flatnonzero((y[i] != 0) & mask)
        draws = []
        for _ in range(3000):
            z = y[i].copy()
            z[nonzero] = rng.permutation(z[nonzero])
            draws.append(kendalltau(x[i][mask], z[mask]).statistic)
        draws = np.array(draws)
        assert float(exact[i, 0, 0]) == pytest.approx(draws.mean(), abs=4 * draws.std() / math.sqrt(len(draws)) + 1e-9)


def test_tau_on_the_union_of_supports_equals_scipy_on_that_subset():
    rng = np.random.default_rng(7)
    x = torch.tensor(np.where(rng.random((4, 3, 12)) < 0.5, 0.0, rng.random((4, 3, 12))))
    y = torch.tensor(np.where(rng.random((4, 2, 12)) < 0.5, 0.0, rng.random((4, 2, 12))))
    union = M.kendall_tau_b_on_union_cross(x, y)
    for b in range(4):
        for h in range(3):
            for m in range(2):
                keep = (x[b, h] != 0) | (y[b, m] != 0)
                expected = kendalltau(x[b, h][keep], y[b, m][keep]).statistic if keep.sum() >= 2 else np.nan
                assert float(union[b, h, m]) == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_tied_scores_are_broken_uniformly_by_the_key_not_by_position():
    length, draws = 6, 3000
    values = torch.zeros(draws, length)  # all tied: a sparse ranking past its support
    keys = torch.tensor(np.random.default_rng(8).random((draws, length)))
    chosen = M.top_k_mask(values, 1, tie_break=keys).float().argmax(dim=1)
    counts = np.bincount(chosen.numpy(), minlength=length)
    from scipy.stats import chisquare

    assert chisquare(counts).pvalue > 1e-3
    assert M.top_k_mask(values, 1)[:, 0].all()  # without a key: the leftmost, always
    ranked = torch.tensor([[0.1, 0.5, 0.0, 0.0, 0.3, 0.0]])
    picked = M.top_k_mask(ranked, 4, tie_break=torch.tensor([[0.0, 0.0, 0.9, 0.1, 0.0, 0.5]]))
    assert picked.tolist() == [[True, True, False, True, True, False]]  # values first, then the smaller key
