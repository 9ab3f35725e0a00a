"""attention_norm (Kobayashi et al. 2020) and attention_norm_res_ln (2021) against loops over tokens and heads."""

from __future__ import annotations

import pytest
import torch

from eval_suite.context_mixing import AttentionNorm, AttentionNormResidualLN
from tests.eval_suite.context_mixing import references as ref
from tests.eval_suite.context_mixing.conftest import every_family_and_mapping


@every_family_and_mapping
def test_attention_norm_matches_the_loops(tiny_context, family, mapping):
    ctx = tiny_context(family, mapping)
    heads, layer = ref.attention_norms(ctx.classifier, ctx.batch)
    method = AttentionNorm()
    torch.testing.assert_close(method.heads(ctx), heads, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(method(ctx), layer, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(method.heads(ctx, queries=[0, 2]), heads[:, :, :, [0, 2]], atol=1e-6, rtol=1e-6)


@every_family_and_mapping
def test_residual_layernorm_norm_matches_the_loops(tiny_context, family, mapping):
    ctx = tiny_context(family, mapping)
    torch.testing.assert_close(AttentionNormResidualLN()(ctx), ref.norms_res_ln(ctx.classifier, ctx.batch),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["bert", "roberta-prelayernorm"])
def test_zero_attention_sends_exactly_nothing(tiny_context, family):
    ctx = tiny_context(family, "sparsemax")
    attention = torch.stack(ctx.base.attentions, dim=1)  # [B, n, H, L, L]
    real = ctx.batch.attention_mask.bool()
    pairs = real[:, None, :, None] & real[:, None, None, :]
    silent = (attention == 0).all(dim=2) & pairs  # no head lets j reach i
    assert silent.any() and (~silent & pairs).any()
    heads, layer = AttentionNorm().heads(ctx), AttentionNorm()(ctx)
    assert torch.equal(heads == 0, (attention == 0) | ~pairs[:, :, None])
    assert (layer[silent] == 0).all() and (layer[~silent & pairs] > 0).all()
    with_residual = AttentionNormResidualLN()(ctx)
    off_diagonal = ~torch.eye(ctx.batch.length, dtype=torch.bool)
    assert (with_residual[silent & off_diagonal] == 0).all()
    assert (with_residual[pairs & ~silent] > 0).all()
    diagonal = with_residual.diagonal(dim1=-2, dim2=-1)  # the token's own residual always counts
    assert (diagonal[real[:, None, :].expand_as(diagonal)] > 0).all()


def test_aggregation_is_defined_only_with_the_residual(tiny_context):
    ctx = tiny_context("bert")
    with pytest.raises(ValueError, match="attention_norm defines no aggregation"):
        AttentionNorm().to_inputs(ctx)
    with pytest.raises(ValueError, match="attention_norm_res_ln defines no per-head mixing"):
        AttentionNormResidualLN().heads(ctx)
    method = AttentionNormResidualLN()
    mixing = method(ctx)
    normalised = mixing / mixing.sum(dim=-1, keepdim=True).clamp(min=1e-300)
    expected = ref.rollout_cls(normalised, ctx.batch.attention_mask.sum(dim=1).tolist())
    torch.testing.assert_close(method.to_inputs(ctx, mixing), expected, atol=1e-6, rtol=0)
    assert torch.allclose(method.to_inputs(ctx).sum(dim=-1), torch.ones(1, dtype=torch.float64))
