"""Faithfulness of a token ranking: comprehensiveness and sufficiency as AOPC over removal fractions.

For a ranking r of the content tokens of x and a fraction f, let k = max(1, ceil(f * n_content)) and R_k the
k top-ranked tokens (ties broken by position). Then (DeYoung et al. 2020, ERASER):

* comprehensiveness_f = p(y_hat | x) - p(y_hat | x without R_k)    (high: the ranking found what the model needs)
* sufficiency_f       = p(y_hat | x) - p(y_hat | only R_k)          (low: those tokens suffice)

and each is averaged over the fractions (AOPC). Special tokens are always kept; removed tokens are deleted from
the sequence (see :mod:`eval_suite.batching`). Identical reduced inputs of one example are run once.
"""

from __future__ import annotations

import torch

from .attribution import ForwardContext
from .metrics import top_k_mask

DEFAULT_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)


def removal_counts(fraction: float, n_content: torch.Tensor) -> torch.Tensor:
    """max(1, ceil(fraction * n)), at most n, per example."""
    k = torch.ceil(fraction * n_content.double() - 1e-9).long()
    return torch.minimum(torch.clamp(k, min=1), torch.clamp(n_content, min=1))


def faithfulness_curves(ctx: ForwardContext, rankings: dict[str, torch.Tensor], fractions=DEFAULT_FRACTIONS):
    """Per-fraction comprehensiveness and sufficiency for every ranking: two tensors [B, n_rankings, n_fractions].

    ``rankings`` maps a name to scores [B, L] (higher = more important; only content positions are ranked).
    """
    batch = ctx.batch
    content = batch.content_mask
    real = batch.attention_mask.bool()
    special = real & ~content
    n_content = content.sum(dim=1)
    names = list(rankings)
    B, R, F = batch.size, len(names), len(fractions)

    keeps, slots = [], []  # one entry per (example, ranking, fraction, kind) before deduplication
    for r, name in enumerate(names):
        scores = torch.nan_to_num(rankings[name].to(torch.float64), nan=0.0)
        for f, fraction in enumerate(fractions):
            top = top_k_mask(scores, removal_counts(fraction, n_content), content)
            keeps.append(real & ~top)  # comprehensiveness: x without R_k
            keeps.append(special | top)  # sufficiency: only R_k
            for kind in (0, 1):
                slots.append((r, f, kind))
    keep_all = torch.stack(keeps, dim=1)  # [B, 2*R*F, L]

    # Deduplicate per example: identical keep-masks give identical probabilities.
    variant_rows, variant_keeps, slot_of = [], [], torch.empty(B, keep_all.shape[1], dtype=torch.long)
    for b in range(B):
        unique, inverse = torch.unique(keep_all[b], dim=0, return_inverse=True)
        slot_of[b] = inverse + len(variant_rows)
        variant_rows.extend([b] * unique.shape[0])
        variant_keeps.append(unique)
    rows = torch.tensor(variant_rows, dtype=torch.long, device=batch.input_ids.device)
    probs = ctx.target_probability(batch.keep_tokens(rows, torch.cat(variant_keeps, dim=0)), rows)
    full = ctx.base.target.detach()

    drop = full[:, None] - probs[slot_of.to(probs.device)]  # [B, 2*R*F]
    comprehensiveness = torch.empty(B, R, F, dtype=torch.float32, device=drop.device)
    sufficiency = torch.empty_like(comprehensiveness)
    for column, (r, f, kind) in enumerate(slots):
        (comprehensiveness if kind == 0 else sufficiency)[:, r, f] = drop[:, column]
    return comprehensiveness, sufficiency
