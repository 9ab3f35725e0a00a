"""Mathematical properties of each mapping, checked against the `entmax` package and by gradcheck."""

from __future__ import annotations

import entmax
import pytest
import torch

from hf_sparse_attn import entmax15, entmax_newton, sparsegen_lin, sparsemax

torch.manual_seed(0)


def scores(*shape, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


OURS_VS_PACKAGE = {
    "sparsemax": (sparsemax, lambda z: entmax.sparsemax(z, dim=-1)),
    "entmax15": (entmax15, lambda z: entmax.entmax15(z, dim=-1)),
    "entmax_bisect_1.3": (lambda z: entmax_newton(z, 1.3), lambda z: entmax.entmax_bisect(z, 1.3, dim=-1, n_iter=100)),
    "entmax_bisect_1.05": (lambda z: entmax_newton(z, 1.05), lambda z: entmax.entmax_bisect(z, 1.05, dim=-1, n_iter=100)),
    "sparsegen_lin_0.5": (lambda z: sparsegen_lin(z, 0.5), lambda z: entmax.sparsemax(z / 0.5, dim=-1)),
    "sparsegen_lin_-2": (lambda z: sparsegen_lin(z, -2.0), lambda z: entmax.sparsemax(z / 3.0, dim=-1)),
}


@pytest.mark.parametrize("name", OURS_VS_PACKAGE)
@pytest.mark.parametrize("d", [1, 2, 7, 64])
def test_forward_matches_entmax_package_float64(name, d):
    ours, reference = OURS_VS_PACKAGE[name]
    z = scores(4, 3, d)
    torch.testing.assert_close(ours(z), reference(z), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", OURS_VS_PACKAGE)
def test_on_simplex_with_exact_zeros(name):
    ours, _ = OURS_VS_PACKAGE[name]
    p = ours(scores(8, 50, scale=4.0))
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(8, dtype=p.dtype))
    assert (p == 0).any(), "a sparse mapping of spread-out scores must put exact zeros"


@pytest.mark.parametrize("name", OURS_VS_PACKAGE)
def test_gradcheck_float64(name):
    ours, _ = OURS_VS_PACKAGE[name]
    z = scores(3, 6, scale=1.0).requires_grad_()
    assert torch.autograd.gradcheck(ours, (z,))


def test_gradcheck_alpha_per_head():
    z = scores(2, 3, 5, 6, scale=1.0).requires_grad_()
    alpha = torch.tensor([1.2, 1.5, 1.8], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_()
    assert torch.autograd.gradcheck(entmax_newton, (z, alpha))


def test_alpha_gradient_matches_entmax_package():
    z = scores(4, 10)
    a1 = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    a2 = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    weight = scores(4, 10, seed=1)
    (entmax_newton(z, a1) * weight).sum().backward()
    (entmax.entmax_bisect(z, a2, dim=-1, n_iter=100) * weight).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-6, atol=1e-8)


def test_special_alphas_reduce_to_closed_forms():
    z = scores(5, 12)
    torch.testing.assert_close(entmax_newton(z, 2.0), sparsemax(z), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(entmax_newton(z, 1.5), entmax15(z), rtol=1e-9, atol=1e-9)


def test_minus_inf_entries_get_exact_zero():
    z = scores(6, 9)
    z[:, ::3] = float("-inf")
    for fn in (sparsemax, entmax15, lambda x: entmax_newton(x, 1.2), lambda x: sparsegen_lin(x, -5.0)):
        p = fn(z)
        assert torch.isfinite(p).all()
        assert (p[:, ::3] == 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(6, dtype=p.dtype))


def test_shift_invariance_and_sparsity_grows_with_alpha():
    z = scores(20, 30)
    for fn in (sparsemax, entmax15, lambda x: entmax_newton(x, 1.3)):
        torch.testing.assert_close(fn(z + 7.5), fn(z))
    support = [(entmax_newton(z, a) > 0).sum().item() for a in (1.1, 1.3, 1.5, 1.8, 2.0)]
    assert support == sorted(support, reverse=True) and support[0] > support[-1]


def test_sparsegen_lambda_makes_outputs_sparser():
    z = scores(20, 30, scale=1.0)
    support = [(sparsegen_lin(z, lam) > 0).sum().item() for lam in (-3.0, -1.0, 0.0, 0.5, 0.9)]
    assert support == sorted(support, reverse=True) and support[0] > support[-1]


@pytest.mark.parametrize("name", OURS_VS_PACKAGE)
def test_non_contiguous_input_gives_the_contiguous_answer(name):
    ours, _ = OURS_VS_PACKAGE[name]
    z = scores(5, 7).t()  # [7, 5] with transposed strides
    assert not z.is_contiguous()
    torch.testing.assert_close(ours(z), ours(z.contiguous()), rtol=0, atol=0)
    zg = z.detach().clone().requires_grad_()
    ours(zg).pow(2).sum().backward()
    assert torch.isfinite(zg.grad).all()


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.5, float("nan"), -1.0])
def test_entmax_newton_refuses_alpha_outside_one_to_two(alpha):
    with pytest.raises(ValueError, match=r"\(1, 2\]") as err:
        entmax_newton(scores(2, 4), alpha)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"\(1, 2\]"):
        entmax_newton(scores(2, 3, 4), torch.tensor([1.5, alpha], dtype=torch.float64).view(1, 2, 1))
