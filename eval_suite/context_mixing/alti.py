"""ALTI, Aggregation of Layer-wise Token-to-token Interactions (Ferrando et al. 2022, "Measuring the Mixing of
Contextual Information in the Transformer").

Per layer, the attention block's output splits exactly into one vector per source token plus a bias
(:mod:`.decomposition`): ``y_i = sum_j T_i(x_j) + b_i``. The contribution of ``j`` to ``i`` is how close
``T_i(x_j)`` lies to ``y_i`` in the L1 norm, clipped at zero and normalised per row::

    c_ij = max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1) / sum_k max(0, ||y_i||_1 - ||y_i - T_i(x_k)||_1)

(the authors' choice of the Manhattan distance and of ``y_i`` with every bias term). Post-LN the transformed
vectors are decomposed through the block's LayerNorm; pre-LN they are ``sum_h alpha f^h(LN(x_j)) + [i = j] x_j``
and ``y_i`` is the residual stream after the block. The feed-forward block is token-wise and mixes nothing; it
is left out, as in the paper. Aggregated through the layers by the rollout of ``c`` (no identity added: ``c``
already holds the residual). A token that sends nothing (``T_i(x_j) = 0``) scores exactly 0.
"""

from __future__ import annotations

import torch

from .base import ContextMixing, layer_map, normalise_rows


class ALTI(ContextMixing):
    """Token-to-token contributions of the attention block by L1 proximity (Ferrando et al. 2022)."""

    name = "alti"
    defines_inputs = True

    def __call__(self, ctx):
        def score(split, rows):
            transformed = split.transformed(rows, split.with_residual(rows))  # [r, n, d]
            y = split.y[rows]  # [r, d]
            proximity = (y.abs().sum(dim=-1, keepdim=True) - (y[:, None, :] - transformed).abs().sum(dim=-1)).clamp(min=0)
            proximity = torch.where((transformed == 0).all(dim=-1), torch.zeros_like(proximity), proximity)
            return normalise_rows(proximity)

        return layer_map(ctx, score, per_query=2)
