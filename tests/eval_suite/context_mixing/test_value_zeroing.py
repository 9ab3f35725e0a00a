"""Value zeroing (Mohebbi et al. 2023) against real reruns of the model with one token's value zeroed by a hook."""

from __future__ import annotations

import pytest
import torch

from eval_suite.context_mixing import ValueZeroing
from tests.eval_suite.context_mixing import references as ref
from tests.eval_suite.context_mixing.conftest import every_family_and_mapping


@every_family_and_mapping
def test_value_zeroing_matches_reruns(tiny_context, family, mapping):
    ctx = tiny_context(family, mapping)
    method = ValueZeroing()
    mixing = method(ctx)
    expected = ref.value_zeroing(ctx.classifier, ctx.batch, per_head=False)
    torch.testing.assert_close(mixing, expected, atol=1e-6, rtol=0)
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    torch.testing.assert_close(method.to_inputs(ctx, mixing), ref.rollout_cls(expected, lengths), atol=1e-6, rtol=0)
    torch.testing.assert_close(method.heads(ctx), ref.value_zeroing(ctx.classifier, ctx.batch, per_head=True),
                               atol=1e-6, rtol=0)


def test_a_value_that_reaches_nobody_changes_nothing(tiny_context):
    ctx = tiny_context("bert", "sparsemax")
    heads = ValueZeroing().heads(ctx)
    attention = torch.stack(ctx.base.attentions, dim=1)  # [B, n, H, L, L]
    real = ctx.batch.attention_mask.bool()
    pairs = real[:, None, None, :, None] & real[:, None, None, None, :]
    unreached = (attention == 0) & pairs
    assert unreached.any() and (heads[unreached] == 0).all()
    assert (heads[(attention > 0) & pairs] > 0).all()
    cls_rows = ValueZeroing().heads(ctx, queries=[0])
    torch.testing.assert_close(cls_rows, heads[:, :, :, :1], atol=1e-12, rtol=0)
