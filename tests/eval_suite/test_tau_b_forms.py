"""Every tau-b form from one set of ranks and pair signs per vector (eval_suite.metrics.tau_b_forms) and Knight's
O(L log L) counts (eval_suite.metrics.tau_b_knight): equal bit for bit to the per-form functions of
eval_suite.metrics, equal to scipy on each form's subset of positions, NaN exactly where those are undefined."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from eval_suite import metrics as M
from eval_suite.metrics import tau_b_forms as F
from eval_suite.metrics import tau_b_knight as K
from eval_suite.metrics.tau_b_forms import FORMS, kendall_tau_b_forms, kendall_tau_b_forms_by_view
from eval_suite.metrics.tau_b_knight import kendall_tau_b_knight

ALGORITHMS = ("matmul", "knight")


def _reference(x, y, mask):
    """Today's per-form functions, as eval_suite.measure combines them."""
    raw = M.kendall_tau_b_cross(x, y, mask)
    null = M.kendall_tau_b_null_cross(x, y, mask)
    return {"kendall_tau_b": raw, "kendall_tau_b_on_support": M.kendall_tau_b_cross(x, y, mask, on_support=True),
            "kendall_tau_b_on_union": M.kendall_tau_b_on_union_cross(x, y, mask), "kendall_tau_b_null": null,
            "kendall_tau_b_excess": raw - null}


def _sparse_with_ties(rng, shape, zeros=0.4, levels=4, low=0):
    """Values on a few levels (ties) with a share of exact zeros."""
    return np.where(rng.random(shape) < zeros, 0.0, rng.integers(low, levels, shape).astype(float))


def _hard_cases(rng, B=4, n=2, H=5, M_=4, L=13, negative=False):
    """Attention-like x [B, n, H, L] and importance y [B, n, M, L] with ties, shared zeros, an all-zero and a
    constant vector, NaNs, and a mask with padding."""
    x = torch.tensor(_sparse_with_ties(rng, (B, n, H, L), low=-2 if negative else 0))
    y = torch.tensor(np.where(rng.random((B, n, M_, L)) < 0.4, 0.0, rng.random((B, n, M_, L))))
    y[1] = torch.tensor(_sparse_with_ties(rng, (n, M_, L), levels=3))  # ties between equal non-zero values of y
    x[0, 0, 0] = 0.0  # all-zero attention: every form undefined
    x[0, 0, 1] = 0.25  # constant attention
    y[0, 1, 2] = 0.0  # all-zero importance
    x[0, 1, 2, min(3, L - 1)] = float("nan")  # NaN in a counted position
    y[2, 0, 1, min(5, L - 1)] = float("nan")
    x[3, 0] = y[3, 0, :1] * 2  # shared zeros by construction
    mask = torch.tensor(rng.random((B, 1, L)) < 0.85)
    if L > 6:
        mask[..., L - 3:] = False  # padding
    mask[3, 0, :] = False
    mask[3, 0, min(4, L - 1)] = True  # a single counted position: undefined
    return x, y, mask


def _assert_identical(ours, reference):
    for form in FORMS:
        a, b = ours[form], reference[form]
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float64, form
        assert torch.equal(torch.isnan(a), torch.isnan(b)), form
        assert torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0)), form


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("negative", [False, True])
def test_every_form_equals_the_per_form_functions_bit_for_bit(algorithm, negative):
    rng = np.random.default_rng(11)
    for L in (2, 3, 13, 40):
        x, y, mask = _hard_cases(rng, L=L, negative=negative)
        _assert_identical(kendall_tau_b_forms(x, y, mask, algorithm=algorithm), _reference(x, y, mask))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_blocks_and_example_chunks_are_invisible(algorithm, monkeypatch):
    """The bounded-memory walk over the pair triangle (and Knight's example chunks) gives the same bits."""
    rng = np.random.default_rng(12)
    x, y, mask = _hard_cases(rng, L=37)
    whole = kendall_tau_b_forms(x, y, mask, algorithm=algorithm)
    monkeypatch.setattr(F, "PAIR_BLOCK_ELEMENTS", 300)  # a few rows of one example per block
    monkeypatch.setattr(F, "HISTOGRAM_ELEMENTS", 50)
    monkeypatch.setattr(K, "KEY_ELEMENTS", 40)
    _assert_identical(kendall_tau_b_forms(x, y, mask, algorithm=algorithm), whole)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_form_equals_scipy_on_its_positions(algorithm):
    rng = np.random.default_rng(13)
    x = _sparse_with_ties(rng, (6, 3, 24))  # [B, H, L]: zeros and ties
    y = np.where(rng.random((6, 2, 24)) < 0.5, 0.0, rng.integers(1, 6, (6, 2, 24)).astype(float))
    mask = rng.random((6, 24)) < 0.8
    forms = kendall_tau_b_forms(x, y, mask, algorithm=algorithm)

    def scipy_tau(a, b, keep):
        return kendalltau(a[keep], b[keep]).statistic if keep.sum() >= 2 else np.nan

    for b in range(6):
        for h in range(3):
            for m in range(2):
                xs, ys, keep = x[b, h], y[b, m], mask[b]
                expected = {"kendall_tau_b": scipy_tau(xs, ys, keep),
                            "kendall_tau_b_on_support": scipy_tau(xs, ys, keep & (xs != 0)),
                            "kendall_tau_b_on_union": scipy_tau(xs, ys, keep & ((xs != 0) | (ys != 0)))}
                # the null by its definition: sum over pairs of sign(x_i - x_j) (nz_i - nz_j) over tau-b's denominator
                i, j = np.triu_indices(24, 1)
                pairs = keep[i] & keep[j]
                nz = (ys != 0).astype(float)
                numerator = (np.sign(xs[i] - xs[j]) * (nz[i] - nz[j]))[pairs].sum()
                n0 = pairs.sum()
                ties_x, ties_y = (pairs & (xs[i] == xs[j])).sum(), (pairs & (ys[i] == ys[j])).sum()
                denominator = np.sqrt((n0 - ties_x) * (n0 - ties_y))
                expected["kendall_tau_b_null"] = numerator / denominator if denominator > 0 else np.nan
                for form, value in expected.items():
                    assert float(forms[form][b, h, m]) == pytest.approx(value, abs=1e-12, nan_ok=True), form


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_views_share_one_pass_and_equal_separate_calls(algorithm):
    """The measure's two position sets (content tokens, all real tokens) from one call equal two calls."""
    rng = np.random.default_rng(14)
    x, y, content = _hard_cases(rng, L=19)
    real = content.clone()
    real[..., 0] = True
    real[..., 15] = True
    views = kendall_tau_b_forms_by_view(x, y, {"attention": content, "all_positions": real}, algorithm=algorithm)
    _assert_identical(views["attention"], _reference(x, y, content))
    _assert_identical(views["all_positions"], _reference(x, y, real))


def test_undefined_is_nan_exactly_where_the_reference_is_nan():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3], [0.0, 0.5, 0.0, 0.2], [0.1, 0.0, 0.0, 0.0]])
    y = torch.tensor([[0.2, 0.1, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    for algorithm in ALGORITHMS:
        forms = kendall_tau_b_forms(x, y, algorithm=algorithm)
        reference = _reference(x, y, None)
        _assert_identical(forms, reference)
        assert torch.isnan(forms["kendall_tau_b"][0]).all() and torch.isnan(forms["kendall_tau_b"][:, 1:]).all()
        # attention with one non-zero position: its support has no pair
        assert torch.isnan(forms["kendall_tau_b_on_support"][3]).all()
        assert torch.isfinite(forms["kendall_tau_b"][2, 0]) and torch.isfinite(forms["kendall_tau_b_on_union"][2, 0])
        short_x, short_y = torch.rand(2, 3, 1), torch.rand(2, 4, 1)  # one position: no pair
        _assert_identical(kendall_tau_b_forms(short_x, short_y, algorithm=algorithm),
                          _reference(short_x, short_y, None))
        empty = kendall_tau_b_forms(torch.rand(2, 3, 0), torch.rand(2, 4, 0), algorithm=algorithm)
        assert all(value.shape == (2, 3, 4) and torch.isnan(value).all() for value in empty.values())


@pytest.mark.parametrize("ties", [True, False])
def test_knight_tau_b_matches_scipy_at_long_lengths_and_with_masks(ties):
    rng = np.random.default_rng(15)
    L = 300
    if ties:
        x, y = rng.integers(0, 5, (20, L)).astype(float), rng.integers(0, 7, (20, L)).astype(float)
    else:
        x, y = rng.random((20, L)), rng.random((20, L))
    mask = rng.random((20, L)) < 0.7
    ours = kendall_tau_b_knight(x, y, mask).numpy()
    expected = np.array([kendalltau(a[m], b[m]).statistic for a, b, m in zip(x, y, mask)])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert np.array_equal(ours, M.kendall_tau_b(x, y, mask).numpy())  # the O(L^2) definition, bit for bit


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="algorithm must be"):
        kendall_tau_b_forms(torch.zeros(2, 3), torch.zeros(1, 3), algorithm="fast")
    with pytest.raises(ValueError, match="same last dimension"):
        kendall_tau_b_forms(torch.zeros(2, 3), torch.zeros(1, 4))


def test_agreement_pass_gives_every_comparison_the_per_form_values(monkeypatch):
    """The batch's one pass (attention over two position sets, a map against a subset of the methods, a signed
    per-layer view) equals each comparison computed alone by the per-form functions, bit for bit, and computes the
    pair signs once for all of them."""
    from eval_suite.agreement import AgreementPass

    rng = np.random.default_rng(7)
    attention, methods, mask = _hard_cases(rng, B=4, n=2, H=5, M_=4, L=13)
    real = mask[:, 0].clone()
    content = real.clone()
    content[:, 0] = False
    rollout = torch.tensor(_sparse_with_ties(rng, (4, 2, 3, 13)))
    mixing_layer = torch.tensor(_sparse_with_ties(rng, (4, 2, 13), low=-2))  # one signed vector per layer
    calls = []
    original = F.kendall_tau_b_forms_by_view
    monkeypatch.setattr(F, "kendall_tau_b_forms_by_view", lambda *a, **k: calls.append(1) or original(*a, **k))
    agreement = AgreementPass(methods, {"content": content, "all_positions": real})
    agreement.add("attention", attention, "content")
    agreement.add("all_positions", attention, "all_positions", [0, 2])
    agreement.add("rollout", rollout, "content", range(2))
    agreement.add("mixing", mixing_layer, "content")
    rows = agreement.rows()
    assert len(calls) == 1
    expected = {"attention": _reference(attention, methods, content[:, None]),
                "all_positions": _reference(attention, methods[:, :, [0, 2]], real[:, None]),
                "rollout": _reference(rollout, methods[:, :, :2], content[:, None]),
                "mixing": {k: v[:, :, 0] for k, v in _reference(mixing_layer[:, :, None], methods,
                                                                 content[:, None]).items()}}
    for prefix, reference in expected.items():
        _assert_identical({form: rows[f"{prefix}.{form}"] for form in FORMS}, reference)
        excess = rows[f"{prefix}.kendall_tau_b_excess"]  # the declarations' own metric, raw - null
        assert torch.equal(torch.isnan(excess), torch.isnan(reference["kendall_tau_b_excess"]))
        assert torch.equal(torch.nan_to_num(excess), torch.nan_to_num(reference["kendall_tau_b_excess"]))
    js = M.jensen_shannon(attention[:, :, :, None], methods[:, :, None], content[:, None, None, None])
    assert torch.equal(torch.isnan(js), torch.isnan(rows["attention.jensen_shannon"]))
    assert torch.equal(torch.nan_to_num(js), torch.nan_to_num(rows["attention.jensen_shannon"]))
