"""context_mixing_rows: the per-example vectors and summaries the agreement metrics will read."""

from __future__ import annotations

import math

import pytest
import torch

from eval_suite import metrics as M
from eval_suite.forward_context import ForwardContext
from eval_suite.batching import TokenBatch
from eval_suite.context_mixing import CONTEXT_MIXING_METHODS, context_mixing_method, context_mixing_rows
from tests.eval_suite.context_mixing.conftest import tiny_batch

NAMES = list(CONTEXT_MIXING_METHODS)


def _views(method):
    return (["layer"] if method.defines_layer else []) + (["head"] if method.defines_heads else []) + (
        ["inputs"] if method.defines_inputs else [])


@pytest.mark.parametrize("family", ["bert", "xlm-roberta-xl"])
def test_keys_shapes_and_definitions(tiny_context, family):
    ctx = tiny_context(family, "sparsemax")
    rows = context_mixing_rows(ctx, NAMES)
    content = ctx.batch.content_mask
    B, L = ctx.batch.size, ctx.batch.length
    expected_keys = set()
    for name in NAMES:
        method = context_mixing_method(name)
        sources = {"layer": lambda: method(ctx)[:, :, 0, :], "head": lambda: method.heads(ctx)[:, :, :, 0, :],
                   "inputs": lambda: method.to_inputs(ctx)}
        for view in _views(method):
            key = f"{name}.{view}"
            expected_keys |= {key, f"{key}.entropy", f"{key}.sparsity", f"{key}.special_mass"}
            raw = sources[view]().double()
            lead = (B, 2, 4) if view == "head" else (B, 2)
            assert rows[key].shape == (*lead, L) and rows[f"{key}.entropy"].shape == lead
            mask = content.reshape(B, *([1] * (raw.dim() - 2)), L).expand_as(raw)
            kept = torch.where(mask, raw, torch.zeros_like(raw))
            total = kept.sum(dim=-1, keepdim=True)
            torch.testing.assert_close(rows[key], torch.where(total > 0, kept / total, torch.nan), equal_nan=True)
            defined = (total > 0).expand_as(raw)
            assert (rows[key][~mask & defined] == 0).all() and torch.isnan(rows[key][~defined]).all()
            zeros = ((raw == 0) & mask).sum(dim=-1) / mask.sum(dim=-1)
            torch.testing.assert_close(rows[f"{key}.sparsity"], zeros.double())
            torch.testing.assert_close(rows[f"{key}.entropy"], M.normalised_entropy(raw, mask), equal_nan=True)
            special = 1 - kept.sum(dim=-1) / raw.sum(dim=-1)
            torch.testing.assert_close(rows[f"{key}.special_mass"], special, equal_nan=True)
    assert set(rows) == expected_keys
    # Sparse attention gives exact zeros somewhere in the attention-carried maps.
    assert float(rows["attention_norm.head.sparsity"].nan_to_num(0).max()) > 0


def test_no_content_is_undefined_not_zero(tiny_context):
    ctx = tiny_context("bert")
    content = ctx.batch.content_mask.clone()
    content[1] = False
    content[2, :] = False
    content[2, 1] = True  # one content token: its share is 1, its entropy undefined
    rows = context_mixing_rows(ctx, ["alti", "attention_norm"], content)
    for key in ("alti.layer", "alti.inputs", "attention_norm.head"):
        assert torch.isnan(rows[key][1]).all() and torch.isnan(rows[f"{key}.entropy"][1]).all()
        assert torch.isnan(rows[f"{key}.sparsity"][1]).all()
        assert torch.isnan(rows[f"{key}.entropy"][2]).all()
        assert torch.isfinite(rows[f"{key}.entropy"][0]).all()
    assert (rows["alti.layer"][2, :, 1] == 1).all()


def test_each_example_alone_gives_the_same_rows(tiny_context):
    ctx = tiny_context("roberta", "entmax15")
    together = context_mixing_rows(ctx, NAMES)
    batch = ctx.batch
    for b in range(batch.size):
        n = int(batch.attention_mask[b].sum())
        alone_batch = TokenBatch(batch.input_ids[b:b + 1, :n], batch.attention_mask[b:b + 1, :n],
                                 batch.content_mask[b:b + 1, :n])
        alone = context_mixing_rows(ForwardContext(ctx.classifier, alone_batch), NAMES)
        for key, value in alone.items():
            big = together[key][b:b + 1]
            if not key.endswith((".entropy", ".sparsity", ".special_mass")):  # vectors: positions last
                big = big[..., :n]
            torch.testing.assert_close(big, value, atol=1e-10, rtol=0, equal_nan=True, msg=key)


def test_same_numbers_twice(tiny_classifier):
    first = context_mixing_rows(ForwardContext(tiny_classifier("distilbert", "entmax_learned"), tiny_batch()), NAMES)
    second = context_mixing_rows(ForwardContext(tiny_classifier("distilbert", "entmax_learned"), tiny_batch()), NAMES)
    for key in first:
        assert torch.equal(first[key].nan_to_num(math.pi), second[key].nan_to_num(math.pi)), key


def test_unknown_method_is_one_line():
    with pytest.raises(ValueError, match=r"^unknown context-mixing method 'rollout'; choose from attention_norm, ") as info:
        context_mixing_method("rollout")
    assert "\n" not in str(info.value)
