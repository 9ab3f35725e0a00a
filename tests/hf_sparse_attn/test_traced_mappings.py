"""The traced solver (chosen inside torch.compile / torch.export) against the eager one, and the mappings alone
under torch.export and torch.compile(fullgraph=True). Whole models are checked in test_export.py."""

from __future__ import annotations

import pytest
import torch

import hf_sparse_attn.sparse_attn_mappings as mappings
from hf_sparse_attn import entmax15, entmax_newton, softmax, sparsegen_lin, sparsemax

from tests.hf_sparse_attn.test_newton_solver import ALPHA_PER_HEAD, mixed_rows, scores

MAPPINGS = {
    "sparsemax": lambda z: sparsemax(z),
    "entmax15": lambda z: entmax15(z),
    "entmax_1.3": lambda z: entmax_newton(z, 1.3),
    "entmax_1.01": lambda z: entmax_newton(z, 1.01),
    "entmax_per_head": lambda z: entmax_newton(z, ALPHA_PER_HEAD.to(z.dtype)),
    "sparsegen_0.6": lambda z: sparsegen_lin(z, 0.6),
    "softmax": lambda z: softmax(z),
}


def run(fn, z, weight, alpha=None):
    z = z.detach().clone().requires_grad_()
    p = fn(z)
    (p * weight).sum().backward()
    return p.detach(), z.grad


@pytest.mark.parametrize("name", MAPPINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_traced_solver_equals_eager_forward_and_backward(name, dtype, tol, monkeypatch):
    z = mixed_rows(dtype)
    weight = scores(*z.shape, seed=1, dtype=dtype)
    p, grad = run(MAPPINGS[name], z, weight)
    monkeypatch.setattr(mappings, "_tracing", lambda: True)
    p_traced, grad_traced = run(MAPPINGS[name], z, weight)
    torch.testing.assert_close(p_traced, p, rtol=0, atol=tol)
    torch.testing.assert_close(grad_traced, grad, rtol=0, atol=tol * 10)
    assert torch.equal(p_traced == 0, p == 0), "the traced solver must put its zeros where the eager one does"


class Mappings(torch.nn.Module):
    def forward(self, z):
        return tuple(fn(z) for fn in MAPPINGS.values())


def test_mappings_export_and_equal_eager():
    z = mixed_rows(torch.float32)
    exported = torch.export.export(Mappings(), (z,)).module()
    for name, got, expected in zip(MAPPINGS, exported(z), Mappings()(z)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_mappings_compile_fullgraph_and_equal_eager():
    torch._dynamo.reset()
    z = mixed_rows(torch.float32)
    compiled = torch.compile(Mappings(), fullgraph=True, backend="aot_eager")
    for name, got, expected in zip(MAPPINGS, compiled(z), Mappings()(z)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
