"""Metrics as pure functions over batches of vectors (torch tensors or numpy arrays).

Every function compares or summarises distributions along the **last** dimension and broadcasts over all
leading dimensions (examples, layers, heads, methods), so one call scores a whole batch. ``mask`` (bool,
broadcastable to the vectors) marks the positions that count; the suite passes the *content* tokens (not
special, not padding). Positions outside the mask are ignored, and distributions are renormalised over the
mask. Undefined values (fewer than two positions, a zero vector, a constant vector for tau) are NaN.

Why hand-written: ``scipy.stats.kendalltau`` and ``scipy.spatial.distance.jensenshannon`` compute the same
quantities (tests/test_eval_metrics.py checks equality on random vectors with ties), but scipy scores one pair
of vectors per call (~0.2 ms each) and the suite needs ~2,000 pairs per example; the vectorised versions here
score all of them in one tensor operation.

The ``metrics/<name>/<name>.py`` folders beside this file are ``evaluate`` modules wrapping these functions;
load them by path: ``evaluate.load(str(eval_suite.metrics.module_path("attention_agreement")))``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

# Task quality has one definition in the project, the training logs' own.
from hf_sparse_attn.training.metrics import accuracy, macro_f1

__all__ = [
    "accuracy",
    "aopc",
    "jensen_shannon",
    "kendall_tau_b",
    "kendall_tau_b_cross",
    "kendall_tau_b_null_cross",
    "kendall_tau_b_on_union_cross",
    "macro_f1",
    "module_path",
    "normalise",
    "normalised_entropy",
    "sampled_mean_standard_error",
    "sparsity",
    "support_coverage",
    "support_size",
    "top_k_mask",
]

_DTYPE = torch.float64


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach() if x.dtype == torch.bool else x.detach().to(_DTYPE)
    return torch.as_tensor(np.asarray(x), dtype=_DTYPE)


def _mask_like(values: torch.Tensor, mask) -> torch.Tensor:
    if mask is None:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    return mask.to(torch.bool).to(values.device).expand(values.shape)


def module_path(name: str) -> Path:
    """Folder of the ``evaluate`` module ``name`` shipped with the suite (for ``evaluate.load(path)``)."""
    path = Path(__file__).parent / name
    if not (path / f"{name}.py").is_file():
        known = sorted(p.name for p in Path(__file__).parent.iterdir() if (p / f"{p.name}.py").is_file())
        raise FileNotFoundError(f"no evaluate module {name!r} in eval_suite/metrics; choose one of {known}")
    return path


# ----------------------------------------------------------------------------------------------- distributions


def normalise(values, mask=None) -> torch.Tensor:
    """Restrict non-negative ``values`` to ``mask`` and divide by their sum; all-NaN where the sum is 0."""
    values = _as_tensor(values)
    mask = _mask_like(values, mask)
    kept = torch.where(mask, values, torch.zeros_like(values))
    total = kept.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, kept / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(kept, float("nan")))


def normalised_entropy(p, mask=None) -> torch.Tensor:
    """H(p) / log(n) over the ``n`` masked positions: 1 = uniform, 0 = all mass on one item (NaN if n < 2).

    ``p`` is renormalised over the mask first, so it may be any non-negative vector.
    """
    p = _as_tensor(p)
    mask = _mask_like(p, mask)
    q = normalise(p, mask)
    n = mask.sum(dim=-1).to(_DTYPE)
    plogp = torch.where(mask & (q > 0), q * torch.log(torch.where(q > 0, q, torch.ones_like(q))), torch.zeros_like(q))
    entropy = -plogp.sum(dim=-1)
    out = entropy / torch.log(torch.clamp(n, min=2.0))
    invalid = (n < 2) | torch.isnan(q).any(dim=-1)
    return torch.where(invalid, torch.full_like(out, float("nan")), out)


def jensen_shannon(p, q, mask=None) -> torch.Tensor:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between ``p`` and ``q`` renormalised over the mask.

    Equals ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2`` (scipy returns the distance, its root).
    """
    p, q = torch.broadcast_tensors(_as_tensor(p), _as_tensor(q))
    mask = _mask_like(p, mask)
    p, q = normalise(p, mask), normalise(q, mask)
    m = (p + q) / 2

    def kl(a, b):
        ratio = torch.where(a > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.ones_like(a))
        return torch.where(mask & (a > 0), a * torch.log2(ratio), torch.zeros_like(a)).sum(dim=-1)

    js = (kl(p, m) + kl(q, m)) / 2
    return torch.clamp(js, min=0.0)  # rounding can give -1e-17


def sparsity(attention, mask=None) -> torch.Tensor:
    """Share of the masked positions whose weight is exactly zero."""
    attention = _as_tensor(attention)
    mask = _mask_like(attention, mask)
    n = mask.sum(dim=-1).to(_DTYPE)
    zeros = (mask & (attention == 0)).sum(dim=-1).to(_DTYPE)
    return torch.where(n > 0, zeros / torch.clamp(n, min=1.0), torch.full_like(n, float("nan")))


def support_size(attention, mask=None) -> torch.Tensor:
    """Number of masked positions with non-zero weight."""
    attention = _as_tensor(attention)
    mask = _mask_like(attention, mask)
    return (mask & (attention != 0)).sum(dim=-1).to(_DTYPE)


def sampled_mean_standard_error(values, weights, population) -> torch.Tensor:
    """Standard error of the mean of ``values`` over the positions where ``weights`` is 1, as an estimate of their
    mean over a population of ``population`` positions the sample was drawn from uniformly without replacement:
    sqrt((1 - n / N) s^2 / n), s^2 the sample variance (ddof 1), with the finite-population correction (0 when the
    sample is the whole population; NaN when fewer than two positions were sampled from a larger one)."""
    values, weights, population = _as_tensor(values), _as_tensor(weights), _as_tensor(population)
    n = weights.sum(dim=-1)
    mean = (values * weights).sum(dim=-1) / torch.clamp(n, min=1.0)
    variance = (weights * (values - mean[..., None]) ** 2).sum(dim=-1) / torch.clamp(n - 1, min=1.0)
    population = population.expand_as(n)
    se = torch.sqrt(torch.clamp(1 - n / torch.clamp(population, min=1.0), min=0.0) * variance / torch.clamp(n, min=1.0))
    se = torch.where(n >= population, torch.zeros_like(se), se)
    return torch.where((n < 2) & (n < population), torch.full_like(se, float("nan")), se)


# ----------------------------------------------------------------------------------------------- rank agreement


def _pair_signs(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2)).to(torch.int8)


def kendall_tau_b(x, y, mask=None, *, max_elements: int = 1 << 25) -> torch.Tensor:
    """Kendall's tau-b between ``x`` and ``y`` over the masked positions (scipy's ``variant='b'``).

    tau_b = (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)) over the n0 pairs of masked
    positions; NaN when either vector is constant on the mask or fewer than two positions are masked.
    """
    x, y = torch.broadcast_tensors(_as_tensor(x), _as_tensor(y))
    mask = _mask_like(x, mask)
    n = x.shape[-1]
    lead = x.shape[:-1]
    x2, y2, m2 = x.reshape(-1, n), y.reshape(-1, n), mask.reshape(-1, n)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
    out = torch.empty(x2.shape[0], dtype=_DTYPE, device=x.device)
    rows = max(1, max_elements // max(1, n * n))
    for start in range(0, x2.shape[0], rows):
        sl = slice(start, start + rows)
        pairs = m2[sl].unsqueeze(-1) & m2[sl].unsqueeze(-2) & upper
        sx, sy = _pair_signs(x2[sl]), _pair_signs(y2[sl])
        n0 = pairs.sum(dim=(-1, -2)).to(_DTYPE)
        s = torch.where(pairs, (sx * sy).to(torch.int32), 0).sum(dim=(-1, -2)).to(_DTYPE)
        ties_x = (pairs & (sx == 0)).sum(dim=(-1, -2)).to(_DTYPE)
        ties_y = (pairs & (sy == 0)).sum(dim=(-1, -2)).to(_DTYPE)
        denominator = torch.sqrt((n0 - ties_x) * (n0 - ties_y))
        tau = torch.where(denominator > 0, s / torch.where(denominator > 0, denominator, torch.ones_like(denominator)),
                          torch.full_like(s, float("nan")))
        nan_input = (torch.isnan(x2[sl]) | torch.isnan(y2[sl])).logical_and(m2[sl]).any(dim=-1)
        out[sl] = torch.where(nan_input, torch.full_like(tau, float("nan")), tau)
    return out.reshape(lead)


def _cross_pairs(x, y, mask):
    """``x`` [..., H, L] and ``y`` [..., M, L] broadcast over their leading dims, the mask [..., L], and the pairs
    ``i < j`` of counted positions [..., 1, L, L] that every cross tau-b compares."""
    x, y = _as_tensor(x), _as_tensor(y)
    n = x.shape[-1]
    lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x = x.expand(*lead, *x.shape[-2:])
    y = y.expand(*lead, *y.shape[-2:])
    mask = _mask_like(x[..., 0, :], mask)  # [..., L]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
    return x, y, mask, (mask.unsqueeze(-1) & mask.unsqueeze(-2) & upper).unsqueeze(-3)


def kendall_tau_b_cross(x, y, mask=None, *, on_support: bool = False) -> torch.Tensor:
    """tau-b of every vector of ``x`` [..., H, L] against every vector of ``y`` [..., M, L]: [..., H, M].

    Same values as ``kendall_tau_b(x[..., :, None, :], y[..., None, :, :], mask)``, computed as one batched
    matrix product over position pairs. ``mask`` [..., L] marks the positions that count; with
    ``on_support=True`` each x-vector additionally counts only the positions where it is non-zero.
    """
    x, y, mask, pairs = _cross_pairs(x, y, mask)
    n = x.shape[-1]
    if on_support:
        support = x != 0
        pairs = pairs & support.unsqueeze(-1) & support.unsqueeze(-2)  # [..., H, L, L]
    pairs = pairs.expand(*x.shape[:-1], n, n)
    exact = torch.float64 if n > 2048 else torch.float32  # integer sums stay exact below 2^24
    sx = torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2))
    sy = torch.sign(y.unsqueeze(-1) - y.unsqueeze(-2))
    pair_f = pairs.to(exact).flatten(-2)  # [..., H, L*L]
    sx_masked = (torch.nan_to_num(sx, nan=0.0).to(exact).flatten(-2)) * pair_f
    sy_flat = torch.nan_to_num(sy, nan=0.0).to(exact).flatten(-2)  # [..., M, L*L]
    s = (sx_masked @ sy_flat.transpose(-1, -2)).to(_DTYPE)  # [..., H, M]
    n0 = pair_f.sum(dim=-1).to(_DTYPE)  # [..., H]
    ties_x = (pair_f * (sx == 0).to(exact).flatten(-2)).sum(dim=-1).to(_DTYPE)
    ties_y = (pair_f @ (sy == 0).to(exact).flatten(-2).transpose(-1, -2)).to(_DTYPE)  # [..., H, M]
    denominator = torch.sqrt((n0 - ties_x).unsqueeze(-1) * (n0.unsqueeze(-1) - ties_y))
    tau = torch.where(denominator > 0, s / torch.where(denominator > 0, denominator, torch.ones_like(denominator)),
                      torch.full_like(s, float("nan")))
    nan_x = (torch.isnan(x) & mask.unsqueeze(-2)).any(dim=-1)  # [..., H]
    nan_y = (torch.isnan(y) & mask.unsqueeze(-2)).any(dim=-1)  # [..., M]
    undefined = nan_x.unsqueeze(-1) | nan_y.unsqueeze(-2)
    return torch.where(undefined, torch.full_like(tau, float("nan")), tau)


def kendall_tau_b_on_union_cross(x, y, mask=None) -> torch.Tensor:
    """tau-b of every ``x`` [..., H, L] against every ``y`` [..., M, L] over the union of their supports: [..., H, M].

    Each pair (h, m) counts only the masked positions where ``x[h]`` or ``y[m]`` is non-zero: positions that are zero
    in both vectors (a shared zero, e.g. a key that gets no attention and therefore has no influence either) are
    left out, so they cannot add concordant pairs by construction.
    """
    x, y = _as_tensor(x), _as_tensor(y)
    lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x = x.expand(*lead, *x.shape[-2:])
    y = y.expand(*lead, *y.shape[-2:])
    mask = _mask_like(x[..., 0, :], mask)  # [..., L]
    xx, yy = x.unsqueeze(-2), y.unsqueeze(-3)  # [..., H, 1, L], [..., 1, M, L]
    union = mask.unsqueeze(-2).unsqueeze(-2) & ((xx != 0) | (yy != 0))  # [..., H, M, L]
    return kendall_tau_b(xx, yy, union)


def kendall_tau_b_null_cross(x, y, mask=None) -> torch.Tensor:
    """Expected tau-b of every ``x`` [..., H, L] against ``y`` [..., M, L] with y's non-zero values shuffled: [..., H, M].

    The structure-preserving null: the zero pattern of both vectors is kept and the non-zero values of the
    (non-negative) importance ``y`` are permuted uniformly among y's own non-zero positions. Every such permutation
    keeps the tie counts of ``y`` and hence tau-b's denominator, so the expectation is exact in closed form: a pair
    of positions that are both non-zero in ``y`` has expected sign 0, a pair with one non-zero position ``i`` and one
    zero position ``j`` keeps its sign (+1 for ``i``), and a pair of zeros is a tie. Hence

        E[tau_b] = sum_{i < j} sign(x_i - x_j) (nz_i - nz_j) / sqrt((n0 - ties_x) (n0 - ties_y)),  nz = [y != 0].

    This is the mean of the seeded permutation null without its Monte Carlo error (the tests compare it with
    thousands of draws). ``tau_b - null`` is the agreement beyond what the shared zeros give by themselves. NaN
    where tau-b itself is undefined.
    """
    x, y, mask, pairs = _cross_pairs(x, y, mask)
    n = x.shape[-1]
    exact = torch.float64 if n > 2048 else torch.float32  # integer sums stay exact below 2^24
    pair_f = pairs.to(exact).flatten(-2)  # [..., 1, L*L]
    sign_x = torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2))  # [..., H, L, L]
    sx = torch.nan_to_num(sign_x, nan=0.0).to(exact).flatten(-2) * pair_f
    nz = ((y != 0) & mask.unsqueeze(-2)).to(exact)  # [..., M, L]
    expected_sy = (nz.unsqueeze(-1) - nz.unsqueeze(-2)).flatten(-2)  # [..., M, L*L]
    numerator = (sx @ expected_sy.transpose(-1, -2)).to(_DTYPE)  # [..., H, M]
    sy = torch.sign(y.unsqueeze(-1) - y.unsqueeze(-2))
    n0 = pair_f.sum(dim=-1).to(_DTYPE)  # [..., 1]
    ties_x = (pair_f * (sign_x == 0).to(exact).flatten(-2)).sum(dim=-1)
    ties_y = (pair_f * (sy == 0).to(exact).flatten(-2)).sum(dim=-1)  # [..., M]
    denominator = torch.sqrt((n0 - ties_x.to(_DTYPE)).unsqueeze(-1) * (n0 - ties_y.to(_DTYPE)).unsqueeze(-2))
    null = torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator)),
                       torch.full_like(numerator, float("nan")))
    nan_x = (torch.isnan(x) & mask.unsqueeze(-2)).any(dim=-1)
    nan_y = (torch.isnan(y) & mask.unsqueeze(-2)).any(dim=-1)
    return torch.where(nan_x.unsqueeze(-1) | nan_y.unsqueeze(-2), torch.full_like(null, float("nan")), null)


def top_k_mask(values, k, mask=None, *, tie_break=None) -> torch.Tensor:
    """Bool mask of the ``k`` largest masked values per vector.

    Ties are broken by ``tie_break`` (same shape as ``values``; among equal values the smaller key wins), or by
    position (earliest first) without it. ``k`` is an int or a tensor broadcastable to the leading dimensions.
    """
    values = _as_tensor(values)
    mask = _mask_like(values, mask)
    n = values.shape[-1]
    # Stable descending sort with masked-out positions last; a first stable sort by the tie-break key decides the
    # order among equal values.
    keyed = torch.where(mask, values, torch.full_like(values, -math.inf))
    if tie_break is None:
        order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices
    else:
        by_key = torch.sort(_as_tensor(tie_break).expand(values.shape), dim=-1, stable=True).indices
        within = torch.sort(keyed.gather(-1, by_key), dim=-1, descending=True, stable=True).indices
        order = by_key.gather(-1, within)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n, device=values.device).expand(order.shape).contiguous())
    k = torch.as_tensor(k, device=values.device).to(torch.long)
    return (ranks < k.unsqueeze(-1)) & mask


def support_coverage(attention, importance, mask=None) -> dict[str, torch.Tensor]:
    """How much importance mass attention's support holds, against the best possible set of that size.

    Returns ``support_mass`` (importance mass on the positions with non-zero attention), ``topk_mass`` (mass on
    the same number of top-importance positions) and ``support_coverage`` = support_mass / topk_mass in [0, 1].
    """
    attention, importance = torch.broadcast_tensors(_as_tensor(attention), _as_tensor(importance))
    mask = _mask_like(attention, mask)
    imp = normalise(importance, mask)
    support = mask & (attention != 0) & ~torch.isnan(attention)
    k = support.sum(dim=-1)
    support_mass = torch.where(support, imp, torch.zeros_like(imp)).sum(dim=-1)
    topk = top_k_mask(importance, k, mask)
    topk_mass = torch.where(topk, imp, torch.zeros_like(imp)).sum(dim=-1)
    undefined = torch.isnan(imp).any(dim=-1) | torch.isnan(attention).logical_and(mask).any(dim=-1) | (k == 0)
    nan = torch.full_like(support_mass, float("nan"))
    coverage = torch.where(topk_mass > 0, support_mass / torch.where(topk_mass > 0, topk_mass, torch.ones_like(topk_mass)), nan)
    return {
        "support_mass": torch.where(undefined, nan, support_mass),
        "topk_mass": torch.where(undefined, nan, topk_mass),
        "support_coverage": torch.where(undefined, nan, coverage),
    }


# ----------------------------------------------------------------------------------------------- faithfulness


def aopc(full_probability, reduced_probabilities) -> torch.Tensor:
    """Area over the perturbation curve: mean over removal fractions of p(y_hat | x) - p(y_hat | x').

    ``full_probability`` has the leading shape, ``reduced_probabilities`` one more trailing dimension (one
    entry per fraction). With x' = x minus the top-ranked tokens this is comprehensiveness (higher = the
    ranking found tokens the prediction needs); with x' = only those tokens it is sufficiency (lower = they
    suffice). DeYoung et al. (2020), ERASER.
    """
    full = _as_tensor(full_probability)
    reduced = _as_tensor(reduced_probabilities)
    return (full.unsqueeze(-1) - reduced).mean(dim=-1)
