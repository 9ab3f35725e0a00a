"""Exact sparse probability mappings over the last dimension, as compact autograd Functions.

This file depends on torch alone: it is copied verbatim into every saved model folder as part of the
remote code, so that ``trust_remote_code=True`` reproduces our attention without hf_sparse_attn or entmax.

Every mapping takes scores ``z`` of shape ``[..., d]`` and returns probabilities on the simplex along the last
dimension. Entries equal to ``-inf`` (masked keys) get exactly zero, provided the row has one finite entry;
callers deal with rows that have none (see ``sparse_attn_modeling.masked_mapping``).

- ``sparsemax(z)``           Martins & Astudillo 2016, exact threshold by sorting.
- ``entmax15(z)``            Peters et al. 2019, alpha = 1.5, exact threshold by sorting.
- ``entmax_bisect(z, a)``    alpha-entmax for any alpha in (1, 2] (a float or a tensor broadcastable to
                             ``z[..., :1]``), threshold by bisection; differentiable in alpha.
- ``sparsegen_lin(z, lam)``  Laha et al. 2018, sparsemax(z / (1 - lam)), lam < 1.
"""

from __future__ import annotations

import torch


def _support_ranks(z: torch.Tensor) -> torch.Tensor:
    """1, 2, ..., d shaped to broadcast against the last dimension of ``z``."""
    d = z.shape[-1]
    return torch.arange(1, d + 1, device=z.device, dtype=z.dtype).view([1] * (z.dim() - 1) + [d])


class SparsemaxFunction(torch.autograd.Function):
    """p = [z - tau]_+ with tau chosen so that p sums to one."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        z = z - z.amax(dim=-1, keepdim=True)  # the max entry is 0: -inf stays -inf, nothing overflows
        z_sorted, _ = torch.sort(z, dim=-1, descending=True)
        cumsum = z_sorted.cumsum(dim=-1) - 1
        ranks = _support_ranks(z)
        support_size = (ranks * z_sorted > cumsum).sum(dim=-1, keepdim=True)
        tau = cumsum.gather(-1, support_size - 1) / support_size.to(z.dtype)
        p = torch.clamp(z - tau, min=0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        support = p > 0
        grad_on_support = grad_p.masked_fill(~support, 0)
        mean_grad = grad_on_support.sum(-1, keepdim=True) / support.sum(-1, keepdim=True).to(p.dtype)
        return (grad_on_support - mean_grad).masked_fill(~support, 0)


class Entmax15Function(torch.autograd.Function):
    """p = [z / 2 - tau]_+^2 with the exact threshold of Peters, Niculae & Martins (2019)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        z = (z - z.amax(dim=-1, keepdim=True)) / 2
        z_sorted, _ = torch.sort(z, dim=-1, descending=True)
        ranks = _support_ranks(z)
        mean = z_sorted.cumsum(dim=-1) / ranks
        mean_sq = (z_sorted**2).cumsum(dim=-1) / ranks
        # Beyond the support -inf entries make these NaN; NaN compares False, so they never count as support.
        ss = ranks * (mean_sq - mean**2)
        delta = torch.clamp((1 - ss) / ranks, min=0)
        tau = mean - torch.sqrt(delta)
        support_size = (tau <= z_sorted).sum(dim=-1, keepdim=True)
        tau_star = tau.gather(-1, support_size - 1)
        p = torch.clamp(z - tau_star, min=0) ** 2
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        sqrt_p = p.sqrt()
        grad_z = grad_p * sqrt_p
        q = grad_z.sum(dim=-1, keepdim=True) / sqrt_p.sum(dim=-1, keepdim=True)
        return grad_z - q * sqrt_p


def _bisection_iterations(dtype: torch.dtype) -> int:
    # The bracket starts no wider than 1 and halves each step: 2^-30 is below float32 resolution of the threshold,
    # 2^-60 below float64's (gradcheck needs the latter).
    return 60 if dtype == torch.float64 else 30


class EntmaxBisectFunction(torch.autograd.Function):
    """alpha-entmax: p = [(alpha - 1) z - tau]_+^(1 / (alpha - 1)), tau found by bisection.

    ``alpha`` is a tensor broadcastable to ``z[..., :1]``; its gradient is returned with alpha's own shape.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha_shape = alpha.shape
        alpha = alpha.to(z.dtype).expand(*z.shape[:-1], 1)
        d = z.shape[-1]
        am1 = alpha - 1
        x = (z - z.amax(dim=-1, keepdim=True)) * am1  # max entry 0
        # p(tau) = sum_i [x_i - tau]_+^(1/am1) is decreasing in tau; p(-1) >= 1 (max term alone is 1) and
        # p(-(1/d)^am1) <= 1 (every term at most 1/d): the threshold lies in between.
        tau_lo = torch.full_like(alpha, -1.0)
        tau_hi = -((1.0 / d) ** am1)
        inv_am1 = 1 / am1
        width = tau_hi - tau_lo
        for _ in range(_bisection_iterations(z.dtype)):
            width = width / 2
            tau_mid = tau_lo + width
            mass = torch.clamp(x - tau_mid, min=0).pow(inv_am1).sum(dim=-1, keepdim=True)
            tau_lo = torch.where(mass >= 1, tau_mid, tau_lo)
        p = torch.clamp(x - tau_lo, min=0).pow(inv_am1)
        p = p / p.sum(dim=-1, keepdim=True)
        ctx.save_for_backward(p, alpha)
        ctx.alpha_shape = alpha_shape
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        p, alpha = ctx.saved_tensors
        support = p > 0
        # ds/dz for entmax: diag(s) - s s^T / sum(s) with s = p^(2 - alpha) on the support.
        s = torch.where(support, p.pow(2 - alpha), torch.zeros_like(p))
        s_sum = s.sum(dim=-1, keepdim=True)
        grad_z = grad_p * s
        grad_z = grad_z - s * (grad_z.sum(dim=-1, keepdim=True) / s_sum)

        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # Blondel et al. (2020), Peters et al. (2019): dp/dalpha in closed form.
            am1 = alpha - 1
            p_log_p = torch.where(support, p * torch.log(torch.where(support, p, torch.ones_like(p))), torch.zeros_like(p))
            entropy_term = p_log_p.sum(dim=-1, keepdim=True)
            p_skewed = s / s_sum
            dp_dalpha = (p - p_skewed) / am1**2 - (p_log_p - p_skewed * entropy_term) / am1
            grad_alpha = (grad_p * dp_dalpha).sum(dim=-1, keepdim=True)
            grad_alpha = _sum_to_shape(grad_alpha, ctx.alpha_shape)
        return grad_z, grad_alpha


def _sum_to_shape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to the shape of the tensor that was broadcast."""
    while t.dim() > len(shape):
        t = t.sum(dim=0)
    for i, n in enumerate(shape):
        if n == 1 and t.shape[i] != 1:
            t = t.sum(dim=i, keepdim=True)
    return t


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    return SparsemaxFunction.apply(z)


def entmax15(z: torch.Tensor) -> torch.Tensor:
    return Entmax15Function.apply(z)


def entmax_bisect(z: torch.Tensor, alpha) -> torch.Tensor:
    """alpha-entmax for alpha in (1, 2]; alpha a float or a tensor broadcastable to ``z[..., :1]``."""
    if not torch.is_tensor(alpha):
        alpha = torch.tensor(float(alpha), dtype=z.dtype, device=z.device)
    return EntmaxBisectFunction.apply(z, alpha)


def sparsegen_lin(z: torch.Tensor, lam: float) -> torch.Tensor:
    """sparsemax(z / (1 - lam)); larger lam (< 1) gives sparser outputs."""
    return SparsemaxFunction.apply(z / (1.0 - lam))


def softmax(z: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z, dim=-1)
