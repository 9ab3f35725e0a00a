"""Per layer and head statistics of attention probabilities (shared by training logs, the demo and eval_suite)."""

from __future__ import annotations

import torch


class AttentionSparsityMeter:
    """Accumulates, per layer and head, the share of exact zeros over non-padded keys and the mean support size.

    Feed it ``output_attentions`` of successive batches with their ``attention_mask``; only queries and keys that are
    real tokens count. ``sparsity[l, h]`` = zeros / real (query, key) pairs; ``support_size[l, h]`` = mean number of
    non-zero keys per real query.
    """

    def __init__(self):
        self.zeros = None
        self.pairs = None
        self.queries = None

    @torch.no_grad()
    def update(self, attentions, attention_mask: torch.Tensor) -> None:
        keep = attention_mask.bool()
        pair_mask = (keep[:, None, :, None] & keep[:, None, None, :]).to(torch.float64)  # [B, 1, Lq, Lk]
        n_queries = keep.sum().to(torch.float64)
        zeros = torch.stack([((a == 0).to(torch.float64) * pair_mask).sum(dim=(0, 2, 3)) for a in attentions])
        pairs = pair_mask.sum() * torch.ones_like(zeros)
        if self.zeros is None:
            self.zeros, self.pairs, self.queries = zeros, pairs, n_queries
        else:
            self.zeros += zeros
            self.pairs += pairs
            self.queries += n_queries

    @property
    def sparsity(self) -> torch.Tensor:
        """[n_layers, n_heads] share of exact zeros among real (query, key) pairs."""
        return (self.zeros / self.pairs).float()

    @property
    def support_size(self) -> torch.Tensor:
        """[n_layers, n_heads] mean number of keys with non-zero weight per real query."""
        return ((self.pairs - self.zeros) / self.queries).float()
