"""The fast (sort-free, Newton) mappings: exactness against the `entmax` package, every solver path, memory, dtypes.

The solver has three internal paths worth forcing: all rows in the working set, rows dropped from it as they
converge (compaction), and the bisection guard of the bracket. Tests force each with monkeypatch and check the
answer does not change.
"""

from __future__ import annotations

import json

import entmax
import pytest
import torch

import hf_sparse_attn.sparse_attn_mappings as mappings
from hf_sparse_attn import entmax15, entmax_newton, sparsegen_lin, sparsemax


def scores(*shape, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def mixed_rows(dtype=torch.float64, length=40, seed=0):
    """[2, 3, 6, length] scores whose rows need very different numbers of Newton steps: near-flat rows (support
    = nearly every key), peaky rows (support of 1-2), ties, and right padding (-inf) of different lengths."""
    z = scores(2, 3, 6, length, scale=1.0, seed=seed)
    z[:, :, 0] *= 0.01  # nearly flat: support is (almost) the whole row
    z[:, :, 1] *= 30.0  # peaky: one or two keys
    z[:, :, 2, :10] = 0.7  # a block of ties at the top
    z[:, :, 2, 10:] -= 5.0
    z[0, :, :, length - 7:] = float("-inf")
    z[1, :, 3:, length // 2:] = float("-inf")
    return z.to(dtype)


ALPHA_PER_HEAD = torch.tensor([1.05, 1.3, 1.8], dtype=torch.float64).view(1, 3, 1, 1)

# name -> (ours, the entmax package's), both taking (z, alpha per head)
PAIRS = {
    "sparsemax": (lambda z, a: sparsemax(z), lambda z, a: entmax.sparsemax(z, dim=-1)),
    "entmax15": (lambda z, a: entmax15(z), lambda z, a: entmax.entmax15(z, dim=-1)),
    "newton_1.3": (lambda z, a: entmax_newton(z, 1.3), lambda z, a: entmax.entmax_bisect(z, 1.3, dim=-1, n_iter=200)),
    "newton_1.01": (lambda z, a: entmax_newton(z, 1.01), lambda z, a: entmax.entmax_bisect(z, 1.01, dim=-1, n_iter=200)),
    "newton_per_head": (lambda z, a: entmax_newton(z, a), lambda z, a: entmax.entmax_bisect(z, a, dim=-1, n_iter=200)),
    "sparsegen_0.6": (lambda z, a: sparsegen_lin(z, 0.6), lambda z, a: entmax.sparsemax(z / 0.4, dim=-1)),
}


def forward_backward(fn, z, alpha, weight):
    z = z.detach().clone().requires_grad_()
    alpha = alpha.detach().clone().to(z.dtype).requires_grad_()
    p = fn(z, alpha)
    (p * weight).sum().backward()
    return p.detach(), z.grad, alpha.grad


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("compact_below", [0.0, 0.5, 1.0])  # never / default / as soon as one row converges
def test_matches_entmax_package_forward_and_backward(name, dtype, tol, compact_below, monkeypatch):
    monkeypatch.setattr(mappings, "_COMPACT_BELOW", compact_below)
    ours, package = PAIRS[name]
    z = mixed_rows(dtype)
    weight = scores(*z.shape, seed=1, dtype=dtype)
    p, gz, ga = forward_backward(ours, z, ALPHA_PER_HEAD, weight)
    # the package has no guard against -inf (its thresholds go NaN): give it the large finite negative instead
    p_ref, gz_ref, ga_ref = forward_backward(package, z.nan_to_num(neginf=-1e4), ALPHA_PER_HEAD, weight)
    torch.testing.assert_close(p, p_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gz, gz_ref, rtol=tol, atol=tol)
    if name == "newton_per_head":
        # d/dalpha carries 1 / (alpha - 1)^2 = 400 at alpha = 1.05: in float32 both implementations sit ~1e-5 from
        # the float64 value, so they agree to about twice that.
        torch.testing.assert_close(ga, ga_ref, rtol=tol if dtype == torch.float64 else 5e-5, atol=tol)
    if dtype == torch.float64:
        # exact zeros exactly where the exact mapping has them (all of them: padding and real keys)
        assert torch.equal(p == 0, p_ref == 0)
        assert (p[torch.isinf(z)] == 0).all()
        assert (p == 0).float().mean() > 0.2


@pytest.mark.parametrize("length", [1, 2, 3, 64, 257])
@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "newton_per_head"])
def test_lengths_including_long_rows_match_the_package(length, name):
    ours, package = PAIRS[name]
    z = scores(1, 3, 4, length, scale=2.0)
    torch.testing.assert_close(ours(z, ALPHA_PER_HEAD), package(z, ALPHA_PER_HEAD), rtol=1e-6, atol=1e-6)


def test_wide_support_rows_are_exact():
    """Rows whose support is (almost) every one of 512 keys: no cut-off of candidates anywhere."""
    z = scores(2, 2, 3, 512, scale=1e-4)
    for name in ("sparsemax", "entmax15", "newton_1.3"):
        ours, package = PAIRS[name]
        p = ours(z, None)
        assert (p > 0).sum(-1).min() > 450
        torch.testing.assert_close(p, package(z, None), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "newton_1.3", "newton_per_head", "sparsegen_0.6"])
@pytest.mark.parametrize("compact_below", [0.0, 1.0])
def test_gradcheck_float64_on_every_solver_path(name, compact_below, monkeypatch):
    monkeypatch.setattr(mappings, "_COMPACT_BELOW", compact_below)
    ours, _ = PAIRS[name]
    z = mixed_rows(length=7)[:1, :, :4].clone()  # padded on the right
    z[:, :, 0] = scores(1, 3, 7, scale=0.05, seed=3)  # full support (every key), a kink-free row
    z = z.nan_to_num(neginf=-50.0).requires_grad_()  # gradcheck perturbs every input: keep them finite
    alpha = ALPHA_PER_HEAD.clone().requires_grad_(name == "newton_per_head")
    assert torch.autograd.gradcheck(lambda z, a: ours(z, a), (z, alpha), atol=1e-6)


def test_gradcheck_alpha_alone_near_one_and_near_two():
    z = scores(2, 2, 3, 6, scale=1.0)
    alpha = torch.tensor([1.02, 1.97], dtype=torch.float64).view(1, 2, 1, 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: entmax_newton(z, a), (alpha,))


def test_alpha_two_per_head_is_sparsemax_with_exact_zeros():
    """alpha = 2 exactly (a saturated learned alpha) makes the exponent n - 1 = 0: 0 ** 0 must not count."""
    z = mixed_rows().nan_to_num(neginf=-1e4)
    alpha = torch.tensor([2.0, 1.5, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    p = entmax_newton(z, alpha)
    torch.testing.assert_close(p[:, 0], sparsemax(z[:, 0]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p[:, 1], entmax15(z[:, 1]), rtol=1e-9, atol=1e-12)
    zr = z.clone().requires_grad_()
    g = torch.autograd.grad((entmax_newton(zr, alpha) * z).sum(), zr)[0]
    zs = z[:, 0].clone().requires_grad_()
    g_sparsemax = torch.autograd.grad((sparsemax(zs) * z[:, 0]).sum(), zs)[0]
    torch.testing.assert_close(g[:, 0], g_sparsemax, rtol=1e-9, atol=1e-12)


def test_answer_stays_a_distribution_when_newton_is_cut_short(monkeypatch):
    """With the step budget cut to 1, the result is still a distribution with exact zeros on -inf keys."""
    monkeypatch.setattr(mappings, "_MAX_NEWTON_STEPS", 1)
    z = mixed_rows()
    for name in ("sparsemax", "entmax15", "newton_per_head"):
        p = PAIRS[name][0](z, ALPHA_PER_HEAD)
        assert torch.isfinite(p).all() and (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1], dtype=p.dtype))
        assert (p[torch.isinf(z)] == 0).all()


def test_rows_without_finite_entry_do_not_disturb_the_others():
    """All -inf rows come back NaN (the attention function zeroes them); every other row stays exact."""
    z = mixed_rows()
    z[0, 1, 2] = float("-inf")
    z[1, 0, 5] = float("-inf")
    finite_rows = torch.isfinite(z).any(-1)
    for name in ("sparsemax", "entmax15", "newton_per_head"):
        ours, package = PAIRS[name]
        p = ours(z, ALPHA_PER_HEAD)
        torch.testing.assert_close(p[finite_rows], package(z.nan_to_num(neginf=-1e4), ALPHA_PER_HEAD)[finite_rows],
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "newton_per_head"])
def test_half_precision_in_and_out(dtype, name):
    ours, _ = PAIRS[name]
    z32 = mixed_rows(torch.float32)
    z = z32.to(dtype).requires_grad_()
    p = ours(z, ALPHA_PER_HEAD.to(dtype))
    assert p.dtype == dtype and torch.isfinite(p.float()).all()
    assert (p[torch.isinf(z.detach())] == 0).all()
    torch.testing.assert_close(p.float(), ours(z.detach().float(), ALPHA_PER_HEAD.float()), atol=1e-2, rtol=1e-2)
    p.float().pow(2).sum().backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()


def test_non_contiguous_input():
    z = scores(3, 4, 9, 9)
    for name in ("sparsemax", "entmax15", "newton_1.3"):
        ours, _ = PAIRS[name]
        torch.testing.assert_close(ours(z.transpose(-1, -2), None), ours(z.transpose(-1, -2).contiguous(), None))


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "newton_1.3", "newton_per_head", "sparsegen_0.6"])
def test_backward_keeps_only_the_output(name):
    """What the mapping saves for backward is its output (softmax keeps the same), plus alpha."""
    ours, _ = PAIRS[name]
    z = scores(2, 3, 16, 16, dtype=torch.float32).requires_grad_()
    alpha = ALPHA_PER_HEAD.float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        p = ours(z, alpha)
    big = [t for t in saved if t.numel() > alpha.numel()]
    assert big, "the output must be saved"
    assert all(t.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for t in big)
    assert sum(t.numel() for t in saved if t.numel() <= alpha.numel()) <= alpha.numel()


def test_learned_alpha_trains_through_the_fast_path():
    z = scores(2, 3, 5, 12)
    logit = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target = entmax_newton(z, ALPHA_PER_HEAD)
    optimizer = torch.optim.Adam([logit], lr=0.2)
    losses = []
    for _ in range(60):
        alpha = (1 + torch.sigmoid(logit)).view(1, 3, 1, 1)
        loss = (entmax_newton(z, alpha) - target).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    torch.testing.assert_close(1 + torch.sigmoid(logit.detach()), ALPHA_PER_HEAD.view(3), atol=0.05, rtol=0)


def test_benchmark_cli_mapping_and_memory_sections(tmp_path):
    """bench/attention.py on a tiny problem: our outputs equal the package's and keep no more memory than softmax."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--what", "mapping", "memory", "--lengths", "8", "16", "--repeats", "1", "--heads", "2",
                "--mapping-elements", "512", "--json", str(out)])
    results = json.loads(out.read_text())
    assert {f"{m}@{L}" for m in ("sparsemax", "entmax15", "entmax_newton(1.3)") for L in (8, 16)} <= set(results["mapping"])
    for row in results["mapping"].values():
        assert row["ours_ms"] > 0 and row["entmax_ms"] > 0
        assert row["max_abs_diff"] < 1e-5 and row["zero_pattern_diff"] == 0
    memory = results["memory"]
    for name, row in memory.items():
        if name != "softmax_bytes":
            assert row["ours_bytes"] <= memory["softmax_bytes"] * 1.01, name
    with pytest.raises(SystemExit):
        bench.main(["--lengths", "1"])
