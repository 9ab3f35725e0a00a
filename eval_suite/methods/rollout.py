"""Attention rollout: each head's attention carried to the inputs through the layers below (Abnar & Zuidema 2020)."""

from __future__ import annotations

from ..cost import Cost
from ..registry import Measure, declare


def _compute(ctx, settings, state):
    from ..attribution import AttentionRollout

    return AttentionRollout(settings.attention_query)(ctx)


def _ranking(ctx, settings, state):
    from ..attribution import AttentionRollout

    return AttentionRollout(settings.attention_query).full(ctx)


def rollout_cost(shape, model, config, measures) -> Cost:
    return Cost(2 * shape.size * model.n_layers * shape.length ** 3 * 2, model.n_layers)


declare(Measure("rollout", "map", "quick", "attention carried to the inputs through the layers below (rollout)",
                order=70, cost=rollout_cost, compute=_compute, ranking=_ranking,
                token_map=lambda values, ranking, n_layers: ("rollout (whole network)", ranking)))
