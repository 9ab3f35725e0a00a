"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The layers form a graph: node ``(l, i)`` is token ``i``'s representation ``h^(l)``; an edge from ``(l+1, i)`` to
``(l, j)`` has capacity ``A_l[i, j]``, the head-mean attention with the residual, ``A_l = 0.5 mean_h alpha^h_l +
0.5 I`` renormalised over the real tokens (the same matrices as the suite's rollout, ``eval_suite.attribution.
AttentionRollout``). The flow of input ``j`` into the classification token after layer ``l`` is the maximum flow
from ``(l+1, 0)`` to ``(0, j)``, normalised over ``j`` (as the authors normalise it).

Max-flow by ``scipy.sparse.csgraph.maximum_flow`` (Dinic's algorithm, compiled). It takes integer capacities, so
capacities (all in [0, 1]) are scaled by 2**30 and rounded: every flow is then within (number of edges of the
minimum cut) x 2**-31 of the exact one, below 1e-7 for a few hundred tokens. networkx gives the same flows in
float arithmetic 80-2,900 times slower (measured in bench/context_mixing.py); the tests use it as the reference.

Cost: one max-flow per (example, layer, input token) on a graph of (layers + 1) x n nodes and up to layers x n^2
edges; see docs/eval_suite.md for where it is affordable.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import ContextMixing

SCALE = 2 ** 30  # capacities <= 1 and a node's outgoing capacities sum to 1: every flow fits in int32


def residual_attention(attentions, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, n, L, L]: 0.5 * head-mean attention + 0.5 * I, each real row renormalised over real keys (padding 0)."""
    real = attention_mask.bool()
    stacked = torch.stack([a.mean(dim=1) for a in attentions], dim=1)  # [B, n, L, L]
    eye = torch.diag_embed(real.to(stacked.dtype))[:, None]
    mixed = (0.5 * stacked + 0.5 * eye) * real[:, None, None, :] * real[:, None, :, None]
    total = mixed.sum(dim=-1, keepdim=True)
    return mixed / torch.where(total > 0, total, torch.ones_like(total))


def flows_to_query(capacities: np.ndarray, query: int = 0) -> np.ndarray:
    """Max-flow from ``(l+1, query)`` to every ``(0, j)``, normalised over ``j``, for one example.

    ``capacities`` [n_layers, n, n] (real tokens only, row i receives from column j); returns [n_layers, n].
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_flow

    n_layers, n, _ = capacities.shape
    scaled = np.rint(np.asarray(capacities, dtype=np.float64) * SCALE).astype(np.int64)
    layer, i, j = np.nonzero(scaled)
    graph = csr_array((scaled[layer, i, j].astype(np.int32), ((layer + 1) * n + i, layer * n + j)),
                      shape=((n_layers + 1) * n, (n_layers + 1) * n))
    out = np.zeros((n_layers, n))
    for top in range(n_layers):
        source = (top + 1) * n + query
        for sink in range(n):
            out[top, sink] = maximum_flow(graph, source, sink).flow_value
    total = out.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, out / total, np.nan)


class AttentionFlow(ContextMixing):
    """Max-flow through the layer graph of residual-augmented attention (Abnar & Zuidema 2020)."""

    name = "attention_flow"
    defines_layer = False
    defines_inputs = True
    uses_split = False

    def __call__(self, ctx):
        """The capacities: residual-augmented head-mean attention per layer, [B, n, L, L]."""
        return residual_attention(ctx.base.attentions, ctx.batch.attention_mask)

    def to_inputs(self, ctx, mixing=None):
        capacities = self(ctx) if mixing is None else mixing
        mask = ctx.batch.attention_mask.bool()
        B, n_layers, L, _ = capacities.shape
        out = torch.zeros(B, n_layers, L, dtype=torch.float64, device=capacities.device)
        for b in range(B):
            pos = torch.nonzero(mask[b]).squeeze(-1)
            sub = capacities[b][:, pos][:, :, pos].detach().cpu().double().numpy()
            out[b][:, pos] = torch.from_numpy(flows_to_query(sub)).to(out.device)
        return out
