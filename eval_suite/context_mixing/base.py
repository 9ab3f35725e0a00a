"""The common call of the context-mixing methods and the one aggregation through the layers they share.

A context-mixing method says how much token ``j`` contributes to token ``i``'s representation in each layer:

* ``method(ctx)`` -> ``[B, n_layers, L, L]``: the whole-layer mixing ``M^(l)[i, j]`` (row ``i`` receives, column
  ``j`` sends; rows and columns of padding are 0). Row ``i`` is over the positions of ``h^(l)``, the
  representations layer ``l`` attends over, like attention.
* ``method.heads(ctx, queries=None)`` -> ``[B, n_layers, H, Q, L]`` where the method defines one score per head
  (``defines_heads``); ``queries`` picks rows (``[0]``: the classification token only), all rows by default.
* ``method.to_inputs(ctx, mixing=None)`` -> ``[B, n_layers, L]`` where the method defines an aggregation through
  the layers (``defines_inputs``): row 0 (the classification token) of the contributions of the inputs to
  ``h^(l+1)``, so entry ``l`` covers layers ``0..l`` and ``[:, -1]`` the whole network.

Values are non-negative; comparisons restrict them to content tokens (see :mod:`eval_suite.batching`).
"""

from __future__ import annotations

import torch

from ..attribution import Attribution
from .decomposition import decomposition


class ContextMixing(Attribution):
    """Common call: ``method(ctx) -> [B, n_layers, L, L]``; see the module docstring for ``heads`` and ``to_inputs``."""

    per_layer = True
    defines_layer = True  # False: the whole-layer matrices are the method's input, not its result (flow)
    defines_heads = False
    defines_inputs = False
    uses_split = True  # reads the recorded split of every block (decomposition); False: attention alone (flow)

    def heads(self, ctx, queries=None) -> torch.Tensor:
        raise ValueError(f"{self.name} defines no per-head mixing")

    def to_inputs(self, ctx, mixing: torch.Tensor | None = None) -> torch.Tensor:
        """Rollout (Abnar & Zuidema 2020) of the row-normalised ``mixing`` without an added identity (the methods
        that aggregate already count the residual): ``R^(0) = I``, ``R^(l+1) = C^(l) R^(l)``; returns row 0 of
        every ``R^(l+1)``: [B, n_layers, L]."""
        if not self.defines_inputs:
            raise ValueError(f"{self.name} defines no aggregation through the layers")
        if mixing is None:
            mixing = self(ctx)
        return rollout_rows(row_normalise(mixing, ctx.batch.attention_mask), ctx.batch.attention_mask)


def row_normalise(mixing: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each real row of ``mixing`` [B, n, L, L] divided by its sum over real columns (NaN where that sum is 0)."""
    real = attention_mask.bool()
    kept = mixing * real[:, None, None, :]
    total = kept.sum(dim=-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = torch.where(total > 0, kept / safe, torch.full_like(kept, float("nan")))
    return torch.where(real[:, None, :, None], out, torch.zeros_like(out))


def rollout_rows(normalised: torch.Tensor, attention_mask: torch.Tensor, query: int = 0) -> torch.Tensor:
    """Row ``query`` of ``C^(l) ... C^(0)`` for every l: [B, n, L] (NaN rows propagate: undefined stays undefined)."""
    B, n_layers, L, _ = normalised.shape
    real = attention_mask.bool().to(normalised.dtype)
    rolled = torch.diag_embed(real)  # identity over real positions
    out = []
    for layer in range(n_layers):
        rolled = normalised[:, layer] @ rolled
        out.append(rolled[:, query, :])
    return torch.stack(out, dim=1)


def scatter_square(target: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, rows=None) -> None:
    """Write ``values`` [..., r, n] into ``target`` [..., L, L] at (positions[rows], positions)."""
    row_pos = positions if rows is None else positions[rows]
    target[..., row_pos[:, None], positions[None, :]] = values


def query_rows(positions: torch.Tensor, queries) -> torch.Tensor:
    """Indices into an example's real ``positions`` of the absolute query positions ``queries``."""
    if queries is None:
        return torch.arange(positions.numel(), device=positions.device)
    wanted = torch.as_tensor(queries, device=positions.device)
    rows = torch.searchsorted(positions, wanted)
    if (rows >= positions.numel()).any() or (positions[rows.clamp(max=positions.numel() - 1)] != wanted).any():
        raise ValueError(f"query positions {wanted.tolist()} are not all real tokens of every example")
    return rows


def layer_map(ctx, score, per_query: int = 1) -> torch.Tensor:
    """[B, n, L, L] from ``score(split, rows) -> [r, n]`` evaluated in query chunks of every example and layer
    (``per_query``: how many [n, d] tensors one query needs at once, for the chunk size)."""
    dec = decomposition(ctx)
    B, L = ctx.batch.size, ctx.batch.length
    out = torch.zeros(B, dec.n_layers, L, L, dtype=dec.dtype, device=ctx.batch.input_ids.device)
    for layer in range(dec.n_layers):
        for b, pos in enumerate(dec.positions):
            split = dec.block(b, layer)
            for rows in dec.query_chunks(pos.numel(), per_query * pos.numel()):
                with torch.no_grad():
                    scatter_square(out[b, layer], pos, score(split, rows), rows)
    return out


def normalise_rows(values: torch.Tensor) -> torch.Tensor:
    """``values`` [..., n] divided by their sum over the last dimension (NaN where it is 0)."""
    total = values.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, values / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(values, float("nan")))


def head_map(ctx, score, queries=None, per_query: int = 1) -> torch.Tensor:
    """[B, n, H, Q, L] from ``score(split, rows) -> [H, r, n]`` for the query positions ``queries`` (all: None),
    evaluated in chunks of queries of every example and layer."""
    dec = decomposition(ctx)
    B, L = ctx.batch.size, ctx.batch.length
    n_queries = L if queries is None else len(queries)
    out = torch.zeros(B, dec.n_layers, dec.n_heads, n_queries, L, dtype=dec.dtype, device=ctx.batch.input_ids.device)
    for layer in range(dec.n_layers):
        for b, pos in enumerate(dec.positions):
            split = dec.block(b, layer)
            rows = query_rows(pos, queries)
            targets = pos[rows] if queries is None else torch.arange(n_queries, device=pos.device)
            for chunk in dec.query_chunks(rows.numel(), per_query * dec.n_heads * pos.numel()):
                with torch.no_grad():
                    out[b, layer][:, targets[chunk][:, None], pos[None, :]] = score(split, rows[chunk])
    return out
