"""One batch -> per-example context-mixing vectors and their summaries, for the agreement metrics.

For each method ``m`` and each view it defines (``n`` layers, ``H`` heads, ``L`` positions):

* ``m.layer``  [B, n, L]: the classification token's row of the whole-layer mixing ``M^(l)[0, :]``, over the
  positions of ``h^(l)``: the counterpart of attention's [CLS] row, compared with the representation methods.
* ``m.head``   [B, n, H, L]: the same per head, where the method defines heads.
* ``m.inputs`` [B, n, L]: the contributions of the inputs to the classification token after layer ``l``
  (aggregated through layers 0..l; ``[:, -1]`` is the whole network), compared with the input methods.

Every vector is restricted to the content tokens and renormalised (the suite's one rule; NaN where no content
position has mass: undefined, never 0). Beside each, ``<key>.entropy`` (normalised entropy), ``<key>.sparsity``
(share of content positions with exactly zero mixing) and ``<key>.special_mass`` (share of the mass the
restriction removed: the classification token's own residual and [SEP] carry much of it), with the vector's
dimensions less the last. Float64 tensors.
"""

from __future__ import annotations

import torch

from .. import metrics as M
from .base import ContextMixing


def _resolve(methods) -> list[ContextMixing]:
    from . import context_mixing_method

    return [context_mixing_method(m) if isinstance(m, str) else m for m in methods]


def _summarise(key: str, vector: torch.Tensor, content: torch.Tensor, out: dict) -> None:
    vector = vector.double()
    mask = content.reshape(content.shape[0], *([1] * (vector.dim() - 2)), content.shape[-1])
    out[key] = M.normalise(vector, mask)
    out[f"{key}.entropy"] = M.normalised_entropy(vector, mask)
    out[f"{key}.sparsity"] = M.sparsity(vector, mask)
    total = vector.sum(dim=-1)
    kept = (vector * mask).sum(dim=-1)
    out[f"{key}.special_mass"] = torch.where(total > 0, 1 - kept / torch.where(total > 0, total, torch.ones_like(total)),
                                             torch.full_like(total, float("nan")))


def context_mixing_rows(ctx, methods, content_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-example rows of every method in ``methods`` (names or instances) on ``ctx``'s batch; see the module
    docstring for the keys. ``content_mask`` [B, L] defaults to the batch's content tokens."""
    content = (ctx.batch.content_mask if content_mask is None else content_mask).bool()
    out: dict[str, torch.Tensor] = {}
    for method in _resolve(methods):
        mixing = method(ctx)
        if method.defines_layer:
            _summarise(f"{method.name}.layer", mixing[:, :, 0, :], content, out)
        if method.defines_heads:
            _summarise(f"{method.name}.head", method.heads(ctx, queries=[0])[:, :, :, 0, :], content, out)
        if method.defines_inputs:
            _summarise(f"{method.name}.inputs", method.to_inputs(ctx, mixing), content, out)
    return out
