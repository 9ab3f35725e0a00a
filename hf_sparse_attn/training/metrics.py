"""Evaluation statistics for classifiers with (sparse) attention: accuracy, macro-F1 and per-head sparsity.

Plain numpy/torch: ``evaluate.load("accuracy")`` needs the Hub and scikit-learn is not a dependency.

Attention statistics follow one definition, used by training logs and reusable by evaluation code:
for every non-padded query position, over the non-padded keys of its example,

* ``sparsity``     = fraction of those keys that get exactly zero attention,
* ``support_size`` = number of those keys that get non-zero attention,

each averaged over all non-padded query positions of all examples (every query row weighs the same).
"""

from __future__ import annotations

import numpy as np
import torch

# Per-example statistics are stored as [n_layers, n_heads, N_STATS] sums so that they can be gathered
# across processes (duplicates from even batching dropped by accelerate) and then added up.
ROW_COUNT, ZERO_FRACTION_SUM, SUPPORT_SUM = range(3)
N_STATS = 3


def _class_arrays(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError(f"need equally many predictions and labels, at least one (got {predictions.size} and "
                         f"{labels.size})")
    return predictions, labels


def accuracy(predictions, labels) -> float:
    """Share of predictions equal to their label."""
    predictions, labels = _class_arrays(predictions, labels)
    return float(np.mean(predictions == labels))


def macro_f1(predictions, labels) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``labels`` or ``predictions``.

    Same convention as scikit-learn's ``f1_score(average="macro")``: a class that is predicted but never
    present (or present but never predicted) scores 0; classes absent from both are left out.
    """
    predictions, labels = _class_arrays(predictions, labels)
    scores = []
    for c in np.union1d(np.unique(labels), np.unique(predictions)):
        true_positive = np.sum((predictions == c) & (labels == c))
        predicted = np.sum(predictions == c)
        actual = np.sum(labels == c)
        scores.append(0.0 if predicted + actual == 0 else 2.0 * true_positive / (predicted + actual))
    return float(np.mean(scores))


@torch.no_grad()
def attention_row_statistics(attentions, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-example sums ``[batch, n_layers, n_heads, N_STATS]`` of row count, zero fraction and support size.

    ``attentions``: per layer ``[batch, heads, queries, keys]`` probabilities (``output_attentions=True``).
    ``attention_mask``: ``[batch, keys]`` with 1 for real tokens and 0 for padding.
    """
    keep = attention_mask.bool()
    n_valid_keys = keep.sum(dim=-1).clamp(min=1).to(torch.float64)  # [B]
    query_keep = keep[:, None, :].to(torch.float64)  # [B, 1, Lq]
    per_layer = []
    for probs in attentions:
        nonzero_on_valid_keys = ((probs != 0) & keep[:, None, None, :]).sum(dim=-1).to(torch.float64)  # [B, H, Lq]
        support = nonzero_on_valid_keys * query_keep
        zero_fraction = (1.0 - nonzero_on_valid_keys / n_valid_keys[:, None, None]) * query_keep
        rows = query_keep.expand_as(support)
        per_layer.append(torch.stack([rows.sum(-1), zero_fraction.sum(-1), support.sum(-1)], dim=-1))  # [B, H, 3]
    return torch.stack(per_layer, dim=1)  # [B, L, H, 3]


def summarise_attention(row_statistics: torch.Tensor, alphas: torch.Tensor | None = None) -> list[dict]:
    """``per_layer_head`` records (docs/CONTRACTS.md section 3) from summed statistics ``[n_layers, n_heads, N_STATS]``."""
    totals = row_statistics.to(torch.float64)
    if totals.dim() == 4:  # still per example
        totals = totals.sum(dim=0)
    rows = totals[..., ROW_COUNT].clamp(min=1)
    sparsity = totals[..., ZERO_FRACTION_SUM] / rows
    support = totals[..., SUPPORT_SUM] / rows
    n_layers, n_heads = rows.shape
    records = []
    for layer in range(n_layers):
        for head in range(n_heads):
            records.append({
                "layer": layer,
                "head": head,
                "sparsity": float(sparsity[layer, head]),
                "support_size": float(support[layer, head]),
                "alpha": None if alphas is None else float(alphas[layer, head]),
            })
    return records


def per_layer_sparsity(per_layer_head: list[dict]) -> list[float]:
    """Mean sparsity over the heads of each layer, in layer order."""
    n_layers = 1 + max(r["layer"] for r in per_layer_head)
    return [float(np.mean([r["sparsity"] for r in per_layer_head if r["layer"] == layer])) for layer in range(n_layers)]
