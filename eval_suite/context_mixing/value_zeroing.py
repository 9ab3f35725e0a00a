"""Value zeroing (Mohebbi et al. 2023, "Quantifying Context Mixing in Transformers").

Per layer: zero the value vector of token ``j`` (in every head), recompute the layer, and measure how far each
token's layer output moved: ``C_ij = cosdist(h~^(l+1)_i(not j), h^(l+1)_i)``, normalised per row over the real
tokens ``j``. Per head: zero only head h's value of token ``j``. Aggregated through the layers by the rollout of
the row-normalised maps (Mohebbi et al.'s own aggregation; no identity is added: the layer output already holds
the residual).

Why not rerun the layer L times: zeroing ``v_j`` changes nothing before the value product, and attention stays
as it was (queries and keys are untouched), so the only change is ``s_i -> s_i - g_ij`` (``- alpha^h_ij f^h(x_j)``
per head) in the residual sum of :mod:`.decomposition`; everything after it is token-wise. One application of
the layer's own LayerNorm and feed-forward modules to all (i, j) pairs therefore gives exactly what L reruns give
(tests/eval_suite/context_mixing checks it against real reruns with the value zeroed by a hook), without
recomputing queries, keys and attention. A pair whose value reaches ``i`` with weight 0 leaves ``h_i`` bitwise
unchanged and scores exactly 0.
"""

from __future__ import annotations

import torch

from .base import ContextMixing, head_map, layer_map, normalise_rows


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) over the last dimension, clamped at 0 (rounding)."""
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).clamp(min=0)


class ValueZeroing(ContextMixing):
    """Cosine distance of every layer output when one token's value is zeroed, per layer or per head."""

    name = "value_zeroing"
    defines_heads = True
    defines_inputs = True

    def __call__(self, ctx):
        def score(split, rows):
            sent = split.sent(rows)  # [r, n, d]
            return self._distances(split, rows, sent)

        return layer_map(ctx, score, per_query=4)  # the feed-forward's intermediate is about 4 d wide

    def heads(self, ctx, queries=None):
        def score(split, rows):
            sent = split.alpha[:, rows, :, None] * split.f[:, None]  # [H, r, n, d]
            return self._distances(split, rows, sent)

        return head_map(ctx, score, queries, per_query=4)

    @staticmethod
    def _distances(split, rows, sent):
        parts = split.parts
        zeroed = parts.layer_output(parts.block_output(split.s[rows, None, :] - sent))  # [..., r, n, d]
        original = parts.layer_output(split.y[rows])  # [r, d]
        distance = cosine_distance(zeroed, original[:, None, :])
        distance = torch.where((sent == 0).all(dim=-1), torch.zeros_like(distance), distance)
        return normalise_rows(distance)
