"""Norm-based context mixing: the size of what attention carries, not only its weight.

* ``attention_norm`` (Kobayashi et al. 2020, "Attention is Not Only a Weight"): per layer and head
  ``N^h_ij = ||alpha^h_ij f^h(x_j)||_2 = alpha^h_ij ||f^h(x_j)||_2`` with ``f^h`` head h's value-and-output
  transformation (b_V included, b_O not attributed); the whole layer: ``N_ij = ||sum_h alpha^h_ij f^h(x_j)||_2``.
  Attention only (no residual): a per-layer map, not aggregated through the layers.
* ``attention_norm_res_ln`` (Kobayashi et al. 2021, "Incorporating Residual and Normalization Layers into
  Analysis of Masked Language Models"): the whole attention block, ``N_ij = ||T_i(x_j)||_2`` with the transformed
  vectors of :mod:`.decomposition` (attention + residual, decomposed through the block's LayerNorm post-LN;
  attention + residual pre-LN, where the LayerNorm sits before the values and belongs to ``f``). Aggregated
  through the layers by the rollout of its row-normalised maps (as GlobEnc, Modarressi et al. 2022, does, but
  without GlobEnc's second LayerNorm).

Exact zeros: a pair whose attention is 0 in every head sends nothing (``g_ij = 0``) and scores exactly 0.
"""

from __future__ import annotations

import torch

from .base import ContextMixing, head_map, layer_map


class AttentionNorm(ContextMixing):
    """||alpha^h_ij f^h(x_j)|| per head and ||sum_h alpha^h_ij f^h(x_j)|| per layer (Kobayashi et al. 2020)."""

    name = "attention_norm"
    defines_heads = True

    def __call__(self, ctx):
        return layer_map(ctx, lambda split, rows: split.sent(rows).norm(dim=-1))

    def heads(self, ctx, queries=None):
        return head_map(ctx, lambda split, rows: split.alpha[:, rows] * split.f.norm(dim=-1)[:, None, :], queries)


class AttentionNormResidualLN(ContextMixing):
    """||T_i(x_j)||: attention, residual and the block's LayerNorm together (Kobayashi et al. 2021)."""

    name = "attention_norm_res_ln"
    defines_inputs = True

    def __call__(self, ctx):
        return layer_map(ctx, lambda split, rows: split.transformed(rows, split.with_residual(rows)).norm(dim=-1))
