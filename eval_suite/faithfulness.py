"""Faithfulness of a token ranking: comprehensiveness and sufficiency as AOPC over removal fractions.

For a ranking r of the content tokens of x and a fraction f, let k = max(1, ceil(f * n_content)) and R_k the
k top-ranked tokens. Then (DeYoung et al. 2020, ERASER):

* comprehensiveness_f = p(y_hat | x) - p(y_hat | x without R_k)    (high: the ranking found what the model needs)
* sufficiency_f       = p(y_hat | x) - p(y_hat | only R_k)          (low: those tokens suffice)

and each is averaged over the fractions (AOPC). Special tokens are always kept; removed tokens are deleted from
the sequence (see :mod:`eval_suite.batching`). Identical reduced inputs of one example are run once, and so are
those leave-one-out already ran (removing the single top token is a leave-one-out variant).

Ties: a sparse ranking gives many tokens the same score (exact zeros). They are ordered by a seeded random key per
example (:func:`tie_break_keys`), the same for every ranking of that example, so that past a ranking's support the
removed tokens are a random pick rather than the leftmost ones (a position bias fully ordered softmax rankings do
not have).

Bounds (Edin et al. 2022, normalised AOPC): AOPC's range depends on the model and the example, so comparing raw
AOPC across models compares their ranges too. :func:`greedy_comprehensiveness_bounds` removes, one token at a time,
the token whose removal lowers (upper bound) or raises (lower bound) p(y_hat) most, and records the curve at the
same fractions; normalised AOPC = (AOPC - lower) / (upper - lower). Greedy search is beam search of width 1: it can
miss the best ordering, so a normalised value can leave [0, 1] (it is not clipped). It costs about
n_content * k_max / 2 forward passes per example and bound, so it is an option.
"""

from __future__ import annotations

import numpy as np
import torch

from .forward_context import ForwardContext
from .metrics import top_k_mask


def removal_counts(fraction: float, n_content: torch.Tensor) -> torch.Tensor:
    """max(1, ceil(fraction * n)), at most n, per example."""
    k = torch.ceil(fraction * n_content.double() - 1e-9).long()
    return torch.minimum(torch.clamp(k, min=1), torch.clamp(n_content, min=1))


def tie_break_keys(indices: list[int], lengths: list[int], padded_length: int, seed: int) -> torch.Tensor:
    """[B, padded_length] random keys, example b's from (seed, its dataset index, its own length) alone, so that the
    order among tied tokens does not depend on how examples were batched or padded."""
    keys = np.ones((len(indices), padded_length))  # padding sorts last among equals; it is never ranked anyway
    for row, (index, length) in enumerate(zip(indices, lengths)):
        keys[row, :length] = np.random.default_rng([seed, index, 1]).random(length)
    return torch.tensor(keys)


def faithfulness_curves(ctx: ForwardContext, rankings: dict[str, torch.Tensor], fractions,
                        tie_break: torch.Tensor | None = None):
    """Per-fraction comprehensiveness and sufficiency for every ranking: two tensors [B, n_rankings, n_fractions].

    ``rankings`` maps a name to scores [B, L] (higher = more important; only content positions are ranked);
    ``tie_break`` [B, L] orders equal scores (see the module docstring; None: by position).
    """
    batch = ctx.batch
    content = batch.content_mask
    real = batch.attention_mask.bool()
    special = real & ~content
    n_content = content.sum(dim=1)
    names = list(rankings)
    B, R, F = batch.size, len(names), len(fractions)
    keys = None if tie_break is None else tie_break.to(content.device)

    keeps, slots = [], []  # one entry per (example, ranking, fraction, kind) before deduplication
    for r, name in enumerate(names):
        scores = torch.nan_to_num(rankings[name].to(torch.float64), nan=0.0)
        for f, fraction in enumerate(fractions):
            top = top_k_mask(scores, removal_counts(fraction, n_content), content, tie_break=keys)
            keeps.append(real & ~top)  # comprehensiveness: x without R_k
            keeps.append(special | top)  # sufficiency: only R_k
            for kind in (0, 1):
                slots.append((r, f, kind))
    drop = _drops(ctx, torch.stack(keeps, dim=1))  # [B, 2*R*F]
    comprehensiveness = torch.empty(B, R, F, dtype=torch.float32, device=drop.device)
    sufficiency = torch.empty_like(comprehensiveness)
    for column, (r, f, kind) in enumerate(slots):
        (comprehensiveness if kind == 0 else sufficiency)[:, r, f] = drop[:, column]
    return comprehensiveness, sufficiency


def _drops(ctx: ForwardContext, keep_all: torch.Tensor) -> torch.Tensor:
    """p(y_hat | x) - p(y_hat | x keeping keep_all[b, v]) for every example b and variant v: [B, V].

    Identical keep-masks of one example give identical probabilities, so each distinct one runs once.
    """
    batch = ctx.batch
    B = batch.size
    variant_rows, variant_keeps, slot_of = [], [], torch.empty(B, keep_all.shape[1], dtype=torch.long)
    for b in range(B):
        unique, inverse = torch.unique(keep_all[b], dim=0, return_inverse=True)
        slot_of[b] = inverse + len(variant_rows)
        variant_rows.extend([b] * unique.shape[0])
        variant_keeps.append(unique)
    rows = torch.tensor(variant_rows, dtype=torch.long, device=batch.input_ids.device)
    probs = ctx.kept_probability(rows, torch.cat(variant_keeps, dim=0))
    full = ctx.base.target.detach()
    return full[:, None] - probs[slot_of.to(probs.device)]


def greedy_comprehensiveness_bounds(ctx: ForwardContext, fractions) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper, lower) comprehensiveness curves [B, n_fractions] of the greedy best and worst removal orders."""
    batch = ctx.batch
    content = batch.content_mask
    real = batch.attention_mask.bool()
    n_content = content.sum(dim=1)
    counts = torch.stack([removal_counts(f, n_content) for f in fractions], dim=1)  # [B, F]
    k_max = int(counts.max())
    full = ctx.base.target.detach()
    curves = []
    for sign in (1.0, -1.0):  # +1: remove what lowers p(y_hat) most (upper bound); -1: what lowers it least
        removed = torch.zeros_like(content)
        drop_at = torch.zeros(batch.size, k_max + 1, dtype=torch.float32, device=full.device)
        for step in range(1, k_max + 1):
            candidates = content & ~removed
            rows, positions = torch.nonzero(candidates, as_tuple=True)
            if rows.numel() == 0:
                drop_at[:, step] = drop_at[:, step - 1]
                continue
            keep = (real & ~removed)[rows].clone()
            keep[torch.arange(rows.numel()), positions] = False
            drops = full[rows] - ctx.kept_probability(rows, keep)
            score = torch.full((batch.size, batch.length), -torch.inf, dtype=torch.float32, device=full.device)
            score[rows, positions] = sign * drops
            best = score.argmax(dim=1)
            has = candidates.any(dim=1)
            removed[torch.arange(batch.size)[has], best[has]] = True
            chosen = score.gather(1, best[:, None]).squeeze(1) * sign
            drop_at[:, step] = torch.where(has, chosen, drop_at[:, step - 1])
        curves.append(drop_at.gather(1, counts.to(drop_at.device)))
    return curves[0], curves[1]
