"""Kendall's tau-b counts in O(L log L) per vector pair (Knight 1966), vectorised over heads x methods.

Knight's algorithm: sort the positions by (x, y) lexicographically; the discordant pairs are then exactly the
inversions of the y-sequence (pairs i < j with y_i > y_j), which Knight counts by a merge sort. With
n0 = n (n - 1) / 2 pairs, T_x and T_y the pairs tied in x and in y and T_xy those tied in both,

    S = concordant - discordant = n0 - T_x - T_y + T_xy - 2 * inversions.

Vectorised form used here: x and y are replaced by their "min ranks" over the mask (the number of counted positions
with a strictly smaller value: equal values share a rank, order is kept; positions outside the mask get rank L), so
the lexicographic key of (h, m) is the integer rank_x * (L + 1) + rank_y and one ``torch.sort`` of all H x M keys
replaces the per-vector lexsort. Inversions are counted for all (h, m) at once, chunk by chunk against a running
histogram of the y-ranks already seen (:func:`_inversions`: O(L^1.5), faster here than a vectorised merge sort up to
tens of thousands of positions). Positions outside the mask sort last with the largest rank and add no inversion.
Each vector's min ranks come from one sort per vector (:func:`ranks`), shared by every view. T_x comes from the
ranks (sum over counted i of #{j: x_j = x_i} - 1, halved), T_xy from runs of equal keys.

The same counts restricted to x's support (on-support tau-b), when asked for, take a second sort with the positions
off x's support moved last (for x >= 0, :mod:`eval_suite.metrics.tau_b_forms` gets them from S in closed form).

:func:`pair_products_knight` gives S and S^s for :mod:`eval_suite.metrics.tau_b_forms`, which adds the closed forms of
the other tau-b forms; :func:`kendall_tau_b_knight` is the plain tau-b of broadcast vectors (what
``scipy.stats.kendalltau`` gives for one pair). Values are finite or NaN (a NaN makes its results NaN upstream).

Why hand-written: scipy's ``kendalltau`` runs the same algorithm for one pair per call (a Python-level lexsort and a
compiled merge count, ~0.1 ms per call at L = 64); it cannot batch the H x M pairs of an example, share each vector's
ranks across them, or give the on-support counts without a new call per subset.
"""

from __future__ import annotations

import math

import torch

__all__ = ["kendall_tau_b_knight", "masked_rank_counts", "pair_products_knight", "rank_histogram", "ranks"]

_DTYPE = torch.float64
# (example, head, method, position) entries held at once.
KEY_ELEMENTS = 1 << 21


def kendall_tau_b_knight(x, y, mask=None) -> torch.Tensor:
    """Kendall's tau-b of ``x`` and ``y`` (broadcast; last dimension = positions) over ``mask``, by Knight's
    algorithm: NaN where either vector is constant on the mask, has fewer than two positions or holds a NaN."""
    x, y = torch.as_tensor(x, dtype=_DTYPE), torch.as_tensor(y, dtype=_DTYPE)
    mask = torch.ones((), dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    x, y, mask = torch.broadcast_tensors(x, y, mask.to(x.device))
    lead, L = x.shape[:-1], x.shape[-1]
    x, y, mask = x.reshape(-1, 1, L), y.reshape(-1, 1, L), mask.reshape(-1, L)
    undefined = ((torch.isnan(x[:, 0]) | torch.isnan(y[:, 0])) & mask).any(dim=-1)
    x, y = torch.nan_to_num(x, nan=0.0), torch.nan_to_num(y, nan=0.0)
    rank_x, ties_x, _ = masked_rank_counts(ranks(x), mask)
    rank_y, ties_y, _ = masked_rank_counts(ranks(y), mask)
    n0 = _choose2(mask.sum(dim=-1).to(_DTYPE))
    key = rank_x * (L + 1) + rank_y
    discordant, joint = _discordant_and_joint_ties(key, L)
    s = n0 - ties_x[:, 0] - ties_y[:, 0] + joint[:, 0] - 2 * discordant[:, 0]
    denominator = torch.sqrt((n0 - ties_x[:, 0]) * (n0 - ties_y[:, 0]))
    tau = torch.where(denominator > 0, s / torch.where(denominator > 0, denominator, 1.0), float("nan"))
    return torch.where(undefined, float("nan"), tau).reshape(lead)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Min ranks over the last dimension (how many values are strictly smaller: equal values share a rank) [..., L]
    int64, from one stable sort."""
    L = values.shape[-1]
    ordered, order = torch.sort(values, dim=-1, stable=True)
    index = torch.arange(L, device=values.device).expand_as(ordered)
    new_run = torch.ones_like(ordered, dtype=torch.bool)
    new_run[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    run_start = torch.cummax(torch.where(new_run, index, 0), dim=-1).values
    return torch.empty_like(order).scatter_(-1, order, run_start)


def masked_rank_counts(rank: torch.Tensor, mask: torch.Tensor):
    """For min ranks ``rank`` [N, K, L] (:func:`ranks`) and the positions ``mask`` [N, L] that count: the ranks with
    every position outside the mask moved to L [N, K, L], the tied pairs among counted positions [N, K] float64 and the
    rank statistic D_i = sum_{counted j} sign(v_i - v_j) = #below - #above [N, K, L] float64 (0 outside the mask)."""
    L = rank.shape[-1]
    counted = mask[:, None, :].expand_as(rank)
    histogram = torch.zeros_like(rank).scatter_add_(-1, rank, counted.to(rank.dtype))  # counted values per rank
    at_most = torch.cumsum(histogram, dim=-1).gather(-1, rank)
    equal = histogram.gather(-1, rank)
    n = counted.sum(dim=-1, keepdim=True)
    ties = (histogram * (histogram - 1) // 2).sum(dim=-1).to(_DTYPE)
    d = ((at_most - equal - (n - at_most)) * counted).to(_DTYPE)
    return torch.where(counted, rank, L), ties, d


def rank_histogram(rank_y: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[N, H, M, L + 1]: how many positions with ``where`` [N, H, L] have each y-rank, per (h, m)
    (``rank_y`` [N, M, L])."""
    N, H, L = where.shape
    M = rank_y.shape[1]
    counts = torch.zeros(N, H, M, L + 1, dtype=torch.int64, device=where.device)
    return counts.scatter_add_(-1, rank_y[:, None].expand(N, H, M, L),
                               where[:, :, None, :].expand(N, H, M, L).to(torch.int64))


def pair_products_knight(x, y, mask, rank_x, rank_y, ties_x, ties_y, ties_y_support, *, with_support: bool):
    """S [N, H, M] (concordant minus discordant pairs over ``mask`` [N, L]) of ``x`` [N, H, L] against ``y`` [N, M, L],
    and with ``with_support`` S^s, the same over each head's support (else None), from the masked min ranks and tie
    counts (:func:`masked_rank_counts`) and the y-ties on each head's support [N, H, M]."""
    N, H, L = x.shape
    M = y.shape[1]
    n0 = _choose2(mask.sum(dim=-1).to(_DTYPE))[:, None, None]
    support = (x != 0) & mask[:, None, :]
    zero_count = (mask[:, None, :] & ~support).sum(dim=-1).to(_DTYPE)
    n0_support = _choose2(mask.sum(dim=-1).to(_DTYPE)[:, None] - zero_count)[:, :, None]
    ties_x_support = (ties_x - _choose2(zero_count))[:, :, None]
    s = torch.zeros(N, H, M, dtype=_DTYPE, device=x.device)
    s_support = torch.zeros_like(s) if with_support else None
    if L < 2:  # no pair
        return s, s_support
    step = max(1, KEY_ELEMENTS // max(1, H * M * L))
    for start in range(0, N, step):
        ex = slice(start, min(N, start + step))
        key = rank_x[ex, :, None, :] * (L + 1) + rank_y[ex, None, :, :]  # [n, H, M, L]
        discordant, joint = _discordant_and_joint_ties(key, L)
        s[ex] = n0[ex] - ties_x[ex][:, :, None] - ties_y[ex][:, None, :] + joint - 2 * discordant
        if with_support:
            outside = (L + 1) ** 2  # above every key: positions off x's support sort last and are not counted
            discordant, joint = _discordant_and_joint_ties(torch.where(support[ex, :, None, :], key, outside), L)
            s_support[ex] = n0_support[ex] - ties_x_support[ex] - ties_y_support[ex] + joint - 2 * discordant
    return s, s_support


def _choose2(k: torch.Tensor) -> torch.Tensor:
    return k * (k - 1) / 2


def _discordant_and_joint_ties(key: torch.Tensor, L: int):
    """Inversions of the y-ranks in (x, y)-key order and pairs tied in both, for keys [..., L] (counted keys are
    below L (L + 1); larger ones are not counted and sort last)."""
    lead = key.shape[:-1]
    small = torch.int32 if (L + 1) ** 2 < 2 ** 31 else torch.int64  # sorts and searches run faster on int32
    ordered = torch.sort(key.reshape(-1, L).to(small), dim=-1).values
    counted = ordered < L * (L + 1)  # rank_x = L marks a position outside the mask
    y_sequence = torch.where(counted, ordered % (L + 1), L)
    discordant = _inversions(y_sequence, L).to(_DTYPE)
    new_run = torch.ones_like(counted)
    new_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    index = torch.arange(L, device=key.device, dtype=small).expand_as(ordered)
    run_start = torch.cummax(torch.where(new_run, index, 0), dim=-1).values
    joint = ((index - run_start) * counted).sum(dim=-1).to(_DTYPE)
    return discordant.reshape(lead), joint.reshape(lead)


def _inversions(sequence: torch.Tensor, largest: int) -> torch.Tensor:
    """Pairs i < j with sequence[i] > sequence[j] per row of [R, L] integers in [0, ``largest``].

    The sequence is read in chunks of about sqrt(L): an element's inversions with earlier chunks come from a running
    histogram of the values seen (their count minus the cumulative count up to its value), those inside its chunk
    from direct comparison. O(L^1.5) per row in a few dozen batched operations, about twice as fast here as a
    bottom-up merge sort with ``torch.searchsorted`` (O(L log^2 L), but one sort and one search per level).
    """
    R, L = sequence.shape
    chunk = max(4, math.isqrt(L))
    sequence = sequence.to(torch.int64)
    seen = torch.zeros(R, largest + 1, dtype=torch.int32, device=sequence.device)
    total = torch.zeros(R, dtype=torch.int64, device=sequence.device)
    later = torch.triu(torch.ones(chunk, chunk, dtype=torch.bool, device=sequence.device), diagonal=1)
    for start in range(0, L, chunk):
        values = sequence[:, start:start + chunk]
        k = values.shape[1]
        if start:
            at_most = torch.cumsum(seen, dim=-1, dtype=torch.int32).gather(-1, values)
            total += (start - at_most).sum(dim=-1)
        total += ((values[:, :, None] > values[:, None, :]) & later[:k, :k]).sum(dim=(-1, -2))
        seen.scatter_add_(-1, values, torch.ones_like(values, dtype=torch.int32))
    return total
