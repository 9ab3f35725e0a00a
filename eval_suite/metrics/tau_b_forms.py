"""Every tau-b form of every (source vector, importance vector) pair from one set of pair signs per vector.

For ``x`` [..., H, L] (attention heads, or any source) and ``y`` [..., M, L] (importance methods) over the positions a
``mask`` [..., L] keeps, :func:`kendall_tau_b_forms` returns [..., H, M] tensors equal (in float64, integer counts
and the same final operations) to the functions in :mod:`eval_suite.metrics`:

    kendall_tau_b             kendall_tau_b_cross(x, y, mask)
    kendall_tau_b_on_support  kendall_tau_b_cross(x, y, mask, on_support=True)
    kendall_tau_b_on_union    kendall_tau_b_on_union_cross(x, y, mask)
    kendall_tau_b_null        kendall_tau_b_null_cross(x, y, mask)

(the excess over the null, raw - null, is the agreement declarations' own metric: eval_suite/agreement.py).

Notation (per leading index): positions i < j of the mask form the n0 = n (n - 1) / 2 pairs; sx_ij = sign(x_i - x_j),
sy_ij likewise; ties T_x = #{pairs: sx = 0}, T_y likewise; z^x_i = [x_i = 0], z^y_i = [y_i = 0], s_i = 1 - z^x_i
(attention's support); Zx = sum_i z^x_i, Zy, and Z = sum_i z^x_i z^y_i (positions zero in both); C(k) = k (k - 1) / 2.

* raw: tau = S / sqrt((n0 - T_x)(n0 - T_y)) with S = sum_pairs sx sy. S for all (h, m) is ONE matrix product of
  the [H, pairs] and [M, pairs] sign matrices: (H + M) sign vectors per pair block instead of H x M.
* on support: pairs inside s. n0^s = C(n - Zx), T_x^s = T_x - C(Zx) (a zero and a non-zero never tie), T_y^s =
  sum_r C(c_r) with c_r the positions of s whose y has rank r (a histogram of y's ranks per (h, m), O(H M L)).
  S^s = sum_pairs s_i s_j sx sy. When x >= 0 (attention), a pair of a zero i and a support position j of x has
  sx sy = sign(y_j - y_i) oriented from j, and a pair of zeros has sx = 0, so
      S^s = S - sum_{j in s} ( #{i: x_i = 0, y_i < y_j} - #{i: x_i = 0, y_i > y_j} ),
  again from a rank histogram of y over x's zeros (cumulative sums and a gather): no second pair product. For any
  other x, S^s is a second product with the left operand s_i s_j sx stacked under sx.
* on the union of the supports: positions zero in both vectors leave. A pair with one such position i and a kept
  position j contributes sx sy = sign(x_j) sign(y_j), whichever comes first, and a pair of two such positions is a
  tie in both, so
      S^u = S - Z * sum_i sign(x_i) sign(y_i),   n^u = n - Z,
      T_x^u = T_x - (C(Zx) - C(Zx - Z)),         T_y^u = T_y - (C(Zy) - C(Zy - Z)),
  all from position-level [H, L] x [L, M] products: no [H, M, L, L] broadcast.
* the structure-preserving null: E[tau] = sum_{i<j} sx_ij (nz_i - nz_j) / sqrt((n0 - T_x)(n0 - T_y)) with
  nz = [y != 0] (eval_suite.metrics.kendall_tau_b_null_cross). Rearranged by position,
      sum_{i<j} sx_ij (nz_i - nz_j) = sum_i D_i nz_i,   D_i = sum_{j in mask} sign(x_i - x_j),
  a [H, L] x [L, M] product of a rank statistic of x with the zero pattern of y.

Every count is an integer, summed exactly (float32 below 2^24 inside a block, float64 across blocks), and the final
divisions are the same float64 operations as the reference functions, so the values are equal bit for bit.

Everything except S (and S^s for x with negative values) comes from each vector alone in O(L log L): its min ranks
(the number of counted positions with a smaller value), whose runs give T_x and whose below/above counts give D.
Two engines give S; :func:`kendall_tau_b_forms` picks by length (:func:`knight_from_length`):

* ``"matmul"`` (shared pair signs): the signs of the ranks (small integers, exact in float32) of each vector once
  per pair block, shared by every view and every (h, m), and one batched [H, pairs] x [pairs, M] product at BLAS
  speed; O((H + M) L^2) sign work, in blocks of rows of the pair triangle so memory stays bounded at any length.
* ``"knight"`` (:mod:`eval_suite.metrics.tau_b_knight`): Knight's O(L log L) algorithm per (h, m), vectorised.

Why hand-written: ``scipy.stats.kendalltau`` computes one (x, y) pair per call (Knight's algorithm, ~0.1 ms at
L = 64) and has neither the on-support, union and null forms nor a way to share one vector's work across the H x M
comparisons it takes part in; the suite needs H x M x 5 figures per example and layer. The tests check every form
against scipy (on the subsets) and against the reference functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .tau_b_knight import masked_rank_counts, pair_products_knight, rank_histogram, ranks

__all__ = ["FORMS", "kendall_tau_b_forms", "kendall_tau_b_forms_by_view", "knight_from_length"]

FORMS = ("kendall_tau_b", "kendall_tau_b_on_support", "kendall_tau_b_on_union", "kendall_tau_b_null")
# Elements of the pair blocks held at once by the matmul engine (4 bytes each).
PAIR_BLOCK_ELEMENTS = 1 << 22
# (example, head, method, rank) entries of the rank histograms held at once (8 bytes each).
HISTOGRAM_ELEMENTS = 1 << 21
# c of knight_from_length: Knight from 504 positions for 12 heads x 3 methods, 928 for 12 x 7 (one position set).
KNIGHT_CROSSOVER = 210
_DTYPE = torch.float64


def kendall_tau_b_forms(x, y, mask=None, *, algorithm: str = "auto") -> dict[str, torch.Tensor]:
    """Every tau-b form (:data:`FORMS`) of ``x`` [..., H, L] against ``y`` [..., M, L]: [..., H, M] each.

    ``mask`` (bool, broadcastable to [..., L]) marks the positions that count. ``algorithm``: ``"matmul"``,
    ``"knight"`` or ``"auto"`` (Knight from :func:`knight_from_length` positions on). NaN wherever the reference
    functions give NaN: fewer than two positions, a constant vector on the counted positions, a NaN in a vector.
    """
    return kendall_tau_b_forms_by_view(x, y, {"": mask}, algorithm=algorithm)[""]


def kendall_tau_b_forms_by_view(x, y, masks: Mapping, *, algorithm: str = "auto") -> dict[str, dict[str, torch.Tensor]]:
    """:func:`kendall_tau_b_forms` for several position sets at once: ``masks`` maps a view name to its mask (None:
    every position); the ranks and pair signs of ``x`` and ``y`` are computed once and serve every view. Returns
    ``{view: {form: [..., H, M]}}``, e.g. for ``{"attention": content, "all_positions": real}``."""
    if algorithm not in ("auto", "matmul", "knight"):
        raise ValueError(f"algorithm must be 'auto', 'matmul' or 'knight', got {algorithm!r}")
    x, y = _as_float64(x), _as_float64(y)
    H, M, L = x.shape[-2], y.shape[-2], x.shape[-1]
    if y.shape[-1] != L:
        raise ValueError(f"x and y must have the same last dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    names = list(masks)
    mask_list = [_mask_tensor(masks[name], x) for name in names]
    lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2], *(m.shape[:-1] for m in mask_list))
    N = math.prod(lead)
    x = x.expand(*lead, H, L).reshape(N, H, L)
    y = y.expand(*lead, M, L).reshape(N, M, L)
    mask_list = [m.expand(*lead, L).reshape(N, L) for m in mask_list]
    nan_x, nan_y = torch.isnan(x), torch.isnan(y)
    # A vector with a NaN on the mask has NaN results; its values never meet another vector's, so they may be zeroed.
    x, y = torch.where(nan_x, 0.0, x), torch.where(nan_y, 0.0, y)
    zeros_lead = bool((x >= 0).all())  # x = 0 is every vector's minimum: S^s by the closed form
    rank_x, rank_y = ranks(x), ranks(y)
    vectors = [_vector_counts(x, y, rank_x, rank_y, m, zeros_lead) for m in mask_list]
    if algorithm == "knight" or (algorithm == "auto" and L >= knight_from_length(H, M, len(mask_list))):
        products = [pair_products_knight(x, y, m, v["rank_x"], v["rank_y"], v["ties_x"], v["ties_y"],
                                         v["ties_y_support"], with_support=not zeros_lead)
                    for m, v in zip(mask_list, vectors)]
    else:
        products = _pair_products_shared_signs(x, rank_x, rank_y, mask_list, with_support=not zeros_lead)
    out = {}
    for name, m, v, (s, s_support) in zip(names, mask_list, vectors, products):
        if s_support is None:
            s_support = s - v["support_gap"]
        forms = _forms_from_counts(x, y, m, {**v, "s": s, "s_support": s_support})
        undefined = (nan_x & m[:, None, :]).any(dim=-1)[:, :, None] | (nan_y & m[:, None, :]).any(dim=-1)[:, None, :]
        out[name] = {form: torch.where(undefined, float("nan"), value).reshape(*lead, H, M)
                     for form, value in forms.items()}
    return out


def knight_from_length(n_sources: int, n_methods: int, n_views: int = 1) -> int:
    """Length from which Knight's algorithm is faster than the shared-sign product for ``n_sources`` x ``n_methods``
    comparisons over ``n_views`` position sets.

    The product's cost is dominated by the pair signs of the H + M vectors, shared by the views; Knight's grows with
    V x H x M. Measured (bench/agreement.py, docs/performance.md), the product's time over Knight's grows about in
    proportion to L, so they meet at L* = c V H M / (H + M), c fitted to the measured crossovers (12 heads x 3
    methods: about 512 positions; 12 x 7: about 1,000).
    """
    return int(KNIGHT_CROSSOVER * n_views * n_sources * n_methods / max(1, n_sources + n_methods))


def _as_float64(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(_DTYPE)
    return torch.as_tensor(values, dtype=_DTYPE)


def _mask_tensor(mask, x: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
    return torch.as_tensor(mask).to(device=x.device, dtype=torch.bool)


def _choose2(k: torch.Tensor) -> torch.Tensor:
    return k * (k - 1) / 2


def _tau(numerator, first, second) -> torch.Tensor:
    """numerator / sqrt(first * second), NaN where the product is 0 (the reference functions' exact operations)."""
    denominator = torch.sqrt(first * second)
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), float("nan"))


def _vector_counts(x, y, rank_x, rank_y, m, zeros_lead: bool) -> dict:
    """What each vector gives alone, in O(L log L): masked min ranks, ties T_x [N, H] and T_y [N, M], the null's
    rank statistic D [N, H, L], and from rank histograms the y-ties on each head's support T_y^s [N, H, M] and (when
    x >= 0) the support gap S - S^s [N, H, M]."""
    N, H, L = x.shape
    M = y.shape[1]
    rank_x, ties_x, d = masked_rank_counts(rank_x, m)
    rank_y, ties_y, _ = masked_rank_counts(rank_y, m)
    support = (x != 0) & m[:, None, :]
    zeros_x = m[:, None, :] & ~support
    ties_y_support = torch.empty(N, H, M, dtype=_DTYPE, device=x.device)
    gap = torch.empty(N, H, M, dtype=_DTYPE, device=x.device) if zeros_lead else None
    step = max(1, HISTOGRAM_ELEMENTS // max(1, H * M * (L + 1)))
    for start in range(0, N, step):
        ex = slice(start, min(N, start + step))
        on_support = rank_histogram(rank_y[ex], support[ex])  # [n, H, M, L + 1]
        ties_y_support[ex] = (on_support * (on_support - 1) // 2).sum(dim=-1).to(_DTYPE)
        if gap is not None:
            on_zeros = torch.cumsum(rank_histogram(rank_y[ex], zeros_x[ex]), dim=-1)  # zeros of x with y-rank <= r
            at = rank_y[ex, None].expand(-1, H, M, L)
            # zeros below y_j minus zeros above y_j, for each support position j
            below = torch.where(at > 0, on_zeros.gather(-1, (at - 1).clamp_min(0)), 0)
            above = on_zeros[..., -1:] - on_zeros.gather(-1, at)
            gap[ex] = ((below - above) * support[ex, :, None, :]).sum(dim=-1).to(_DTYPE)
    return {"rank_x": rank_x, "rank_y": rank_y, "ties_x": ties_x, "ties_y": ties_y, "d": d,
            "ties_y_support": ties_y_support, "support_gap": gap}


def _forms_from_counts(x, y, m, counts: dict) -> dict[str, torch.Tensor]:
    """The five forms from S, S^s, the vectors' counts and the position-level closed forms (module docstring)."""
    mf = m.to(_DTYPE)[:, None, :]  # [N, 1, L]
    zx, zy = (x == 0).to(_DTYPE) * mf, (y == 0).to(_DTYPE) * mf  # [N, H, L], [N, M, L]
    n = mf.sum(dim=-1)  # [N, 1]
    zero_x, zero_y = zx.sum(dim=-1), zy.sum(dim=-1)  # [N, H], [N, M]
    both = zx @ zy.transpose(-1, -2)  # Z [N, H, M]
    sign_products = (torch.sign(x) * mf) @ torch.sign(y).transpose(-1, -2)  # sum_i sign(x_i) sign(y_i)
    nonzero_y = (y != 0).to(_DTYPE) * mf
    n0 = _choose2(n)[:, :, None]  # [N, 1, 1]
    tx, ty = counts["ties_x"][:, :, None], counts["ties_y"][:, None, :]
    raw = _tau(counts["s"], n0 - tx, n0 - ty)
    null = _tau(counts["d"] @ nonzero_y.transpose(-1, -2), n0 - tx, n0 - ty)
    n0_support = _choose2(n - zero_x)[:, :, None]
    tx_support = tx - _choose2(zero_x)[:, :, None]
    support = _tau(counts["s_support"], n0_support - tx_support, n0_support - counts["ties_y_support"])
    n0_union = _choose2(n[:, :, None] - both)
    tx_union = tx - (_choose2(zero_x[:, :, None]) - _choose2(zero_x[:, :, None] - both))
    ty_union = ty - (_choose2(zero_y[:, None, :]) - _choose2(zero_y[:, None, :] - both))
    union = _tau(counts["s"] - both * sign_products, n0_union - tx_union, n0_union - ty_union)
    return {"kendall_tau_b": raw, "kendall_tau_b_on_support": support, "kendall_tau_b_on_union": union,
            "kendall_tau_b_null": null}


def _pair_products_shared_signs(x: torch.Tensor, rank_x: torch.Tensor, rank_y: torch.Tensor, masks: list[torch.Tensor],
                                *, with_support: bool) -> list[tuple]:
    """S (and with ``with_support`` S^s) [N, H, M] of every view from shared pair signs and one batched matrix
    product per pair block.

    x [N, H, L] (no NaN), the min ranks of x and y over all positions [N, H or M, L], masks V x [N, L]. Signs come
    from the ranks (integers: exact in float32, and one set serves every view; a view's mask enters as pair weights on
    the y side, the smaller one in the suite). The pair triangle is walked in blocks of rows [a, b) x columns
    [a + 1, L), a few examples at a time, so at most about :data:`PAIR_BLOCK_ELEMENTS` pair entries are alive.
    """
    N, H, L = x.shape
    M = rank_y.shape[1]
    rank_x, rank_y = rank_x.to(torch.float32), rank_y.to(torch.float32)
    support = (x != 0).to(torch.float32) if with_support else None
    products = [(torch.zeros(N, H, M, dtype=_DTYPE, device=x.device),
                 torch.zeros(N, H, M, dtype=_DTYPE, device=x.device) if with_support else None) for _ in masks]
    if L < 2 or N == 0:
        return products
    width = (2 if with_support else 1) * H + 2 * M
    # rows of the pair triangle per block: about L / 8 (the square [a, b) x [a + 1, L) wastes rows^2 / 2 of it)
    rows = max(1, min(L - 1, max(32, L // 8), PAIR_BLOCK_ELEMENTS // max(1, width * L)))
    step = max(1, PAIR_BLOCK_ELEMENTS // max(1, width * rows * L))  # examples per block
    positions = torch.arange(L, device=x.device)
    for e0 in range(0, N, step):
        ex = slice(e0, min(N, e0 + step))
        for a in range(0, L - 1, rows):
            b = min(L - 1, a + rows)
            above = (positions[a:b, None] < positions[None, a + 1:]).to(torch.float32)  # j > i  [bi, Lc]
            left = _sign_block(rank_x[ex], a, b, None if support is None else support[ex])  # [n, H or 2H, P]
            sy = _sign_block(rank_y[ex], a, b)  # [n, M, P]
            for m, (s, s_support) in zip(masks, products):
                mf = m[ex].to(torch.float32)
                w = (mf[:, a:b, None] * mf[:, None, a + 1:] * above).flatten(-2)  # pair weights [n, P]
                block = (left @ (sy * w[:, None, :]).transpose(-1, -2)).to(_DTYPE)  # [n, H or 2H, M]
                s[ex] += block[:, :H]
                if s_support is not None:
                    s_support[ex] += block[:, H:]
    return products


def _sign_block(ranks: torch.Tensor, a: int, b: int, support: torch.Tensor | None = None) -> torch.Tensor:
    """sign(r_i - r_j) for i in [a, b), j in [a + 1, L) as [n, K, P] float32; with ``support`` also s_i s_j times it,
    stacked below ([n, 2K, P])."""
    n, K, L = ranks.shape
    shape = (n, K if support is None else 2 * K, b - a, L - a - 1)
    out = torch.empty(shape, dtype=torch.float32, device=ranks.device)
    torch.sub(ranks[:, :, a:b, None], ranks[:, :, None, a + 1:], out=out[:, :K]).sign_()
    if support is not None:
        torch.mul(out[:, :K], support[:, :, a:b, None], out=out[:, K:]).mul_(support[:, :, None, a + 1:])
    return out.flatten(-2)
