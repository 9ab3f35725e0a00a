"""eval_suite.faithfulness: ties broken in a seeded random order (not by position), and greedy AOPC bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_suite.forward_context import ForwardContext
from eval_suite.batching import collate, encode_texts
from eval_suite.faithfulness import (faithfulness_curves, greedy_comprehensiveness_bounds, removal_counts,
                                     tie_break_keys)
from eval_suite.model_access import load_classifier
from tests.helpers.tiny_models import VOCAB_WORDS, make_tiny_checkpoint


@pytest.fixture(scope="module")
def batch_ctx(tmp_path_factory):
    classifier = load_classifier(make_tiny_checkpoint(tmp_path_factory.mktemp("faith"), attn_impl="sparsemax"))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(VOCAB_WORDS, size=12)) for _ in range(40)]
    batch = collate(encode_texts(classifier.tokenizer, texts, 32)[0], classifier.tokenizer.pad_token_id)
    return ForwardContext(classifier, batch), list(range(40))


def test_aopc_of_a_tie_heavy_ranking_does_not_depend_on_the_tie_order_beyond_noise(batch_ctx):
    ctx, indices = batch_ctx
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    # A sparse ranking: two tokens scored, every other content token tied at zero.
    scores = torch.zeros(ctx.batch.size, ctx.batch.length)
    scores[:, 1], scores[:, 2] = 2.0, 1.0
    fractions = (0.5,)
    means = []
    for seed in range(6):
        keys = tie_break_keys(indices, lengths, ctx.batch.length, seed)
        comprehensiveness, _ = faithfulness_curves(ctx, {"sparse": scores}, fractions, tie_break=keys)
        means.append(comprehensiveness[:, 0, 0].numpy())
    per_seed = np.array([m.mean() for m in means])
    noise = np.mean([m.std(ddof=1) for m in means]) / np.sqrt(len(indices))
    assert per_seed.std(ddof=1) < 4 * noise + 1e-6
    # Keys depend on (seed, example, length) only: the same order for a second call, another for another seed.
    assert torch.equal(tie_break_keys(indices, lengths, 20, 0)[:, :5], tie_break_keys(indices, lengths, 30, 0)[:, :5])
    assert not torch.equal(tie_break_keys(indices, lengths, 20, 0), tie_break_keys(indices, lengths, 20, 1))


def test_greedy_bounds_at_one_token_are_the_best_and_worst_single_removals(batch_ctx):
    ctx, _ = batch_ctx
    fractions = (0.01, 0.5)  # k = 1 and k = half the content tokens
    upper, lower = greedy_comprehensiveness_bounds(ctx, fractions)
    content = ctx.batch.content_mask
    rows, positions = torch.nonzero(content, as_tuple=True)
    keep = ctx.batch.attention_mask[rows].bool().clone()
    keep[torch.arange(rows.numel()), positions] = False
    drops = ctx.base.target.detach()[rows] - ctx.target_probability(ctx.batch.keep_tokens(rows, keep), rows)
    for b in range(ctx.batch.size):
        single = drops[rows == b]
        assert float(upper[b, 0]) == pytest.approx(float(single.max()), abs=1e-6)
        assert float(lower[b, 0]) == pytest.approx(float(single.min()), abs=1e-6)
    assert (upper[:, 1] >= lower[:, 1] - 1e-6).all()
    k = removal_counts(0.5, content.sum(dim=1))
    assert (k >= 1).all()
