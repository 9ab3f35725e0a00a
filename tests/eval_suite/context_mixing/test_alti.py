"""ALTI (Ferrando et al. 2022) against loops over tokens, with y_i read from the real model."""

from __future__ import annotations

import pytest
import torch

from eval_suite.context_mixing import ALTI
from tests.eval_suite.context_mixing import references as ref
from tests.eval_suite.context_mixing.conftest import every_family_and_mapping


@every_family_and_mapping
def test_alti_matches_the_loops(tiny_context, family, mapping):
    ctx = tiny_context(family, mapping)
    method = ALTI()
    mixing = method(ctx)
    expected = ref.alti(ctx.classifier, ctx.batch)
    torch.testing.assert_close(mixing, expected, atol=1e-6, rtol=0)
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    torch.testing.assert_close(method.to_inputs(ctx, mixing), ref.rollout_cls(expected, lengths), atol=1e-6, rtol=0)


def test_rows_are_distributions_and_silent_tokens_score_zero(tiny_context):
    ctx = tiny_context("bert", "sparsemax")
    mixing = ALTI()(ctx)
    real = ctx.batch.attention_mask.bool()
    sums = mixing.sum(dim=-1)
    assert torch.allclose(sums[real[:, None, :].expand_as(sums)], torch.ones(1, dtype=torch.float64))
    assert (sums[~real[:, None, :].expand_as(sums)] == 0).all()
    attention = torch.stack(ctx.base.attentions, dim=1)
    silent = (attention == 0).all(dim=2) & ~torch.eye(ctx.batch.length, dtype=torch.bool)
    silent &= real[:, None, :, None] & real[:, None, None, :]
    assert silent.any() and (mixing[silent] == 0).all()
