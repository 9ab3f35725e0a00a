"""Attention flow (Abnar & Zuidema 2020) against networkx's Edmonds-Karp on float capacities."""

from __future__ import annotations

import pytest
import torch

from eval_suite.attribution import AttentionRollout
from eval_suite.context_mixing import AttentionFlow
from eval_suite.context_mixing.base import rollout_rows
from tests.eval_suite.context_mixing import references as ref
from tests.eval_suite.context_mixing.conftest import every_family_and_mapping


@every_family_and_mapping
def test_flow_matches_networkx(tiny_context, family, mapping):
    ctx = tiny_context(family, mapping)
    torch.testing.assert_close(AttentionFlow().to_inputs(ctx), ref.attention_flow(ctx.classifier, ctx.batch),
                               atol=1e-6, rtol=0)


def test_capacities_are_the_rollout_matrices(tiny_context):
    """Flow and the suite's rollout read the same residual-augmented attention: like for like."""
    ctx = tiny_context("bert", "entmax15")
    capacities = AttentionFlow()(ctx)
    rolled = rollout_rows(capacities, ctx.batch.attention_mask)[:, -1]
    real = ctx.batch.attention_mask.bool()
    expected = AttentionRollout().full(ctx).double()
    torch.testing.assert_close(rolled[real], expected[real], atol=1e-6, rtol=0)


def test_flows_are_distributions_over_real_inputs(tiny_context):
    ctx = tiny_context("distilbert", "sparsemax")
    flows = AttentionFlow().to_inputs(ctx)
    real = ctx.batch.attention_mask.bool()
    assert torch.allclose(flows.sum(dim=-1), torch.ones(1, dtype=torch.float64))
    assert (flows[~real[:, None, :].expand_as(flows)] == 0).all() and (flows >= 0).all()
