"""SmoothGrad: without noise it is the gradient norm; with noise an example's value depends on the seed and its own
index only (not on its batch), and it is compared with attention like every input method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_suite.batch_rows import BatchState, measure_batch
from eval_suite.batching import collate, encode_texts
from eval_suite.forward_context import ForwardContext
from eval_suite.methods.smoothgrad import smoothgrad
from eval_suite.model_access import load_classifier
from eval_suite.settings import MeasureConfig
from tests.helpers.tiny_models import make_tiny_checkpoint

TEXTS = ["w1 w2 w3 w4 w5 w6", "w9 w8 w7", "w10 w11 w12 w13 w14 w15 w16", "w40 w41 w42 w43"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_classifier(make_tiny_checkpoint(tmp_path_factory.mktemp("smoothgrad"), attn_impl="entmax15"))


def _ctx(classifier, texts):
    encodings, _ = encode_texts(classifier.tokenizer, texts, classifier.max_length)
    return ForwardContext(classifier, collate(encodings, classifier.tokenizer.pad_token_id))


def test_without_noise_it_is_the_gradient_norm(tiny):
    ctx = _ctx(tiny, TEXTS)
    config = MeasureConfig.of(smoothgrad_samples=1, smoothgrad_noise=0.0)
    expected = ctx.gradients[0].norm(dim=-1) * ctx.batch.attention_mask
    torch.testing.assert_close(smoothgrad(ctx, config, BatchState([0, 1, 2, 3])), expected, rtol=1e-5, atol=1e-7)


def test_an_example_gets_its_own_noise_in_any_batch(tiny):
    config = MeasureConfig.of(smoothgrad_samples=4, smoothgrad_noise=0.2, seed=7)
    together = smoothgrad(_ctx(tiny, TEXTS), config, BatchState([10, 11, 12, 13]))
    alone = smoothgrad(_ctx(tiny, TEXTS[1:2]), config, BatchState([11]))  # the shortest: padded in the batch
    n = alone.shape[1]
    torch.testing.assert_close(together[1, :n], alone[0], rtol=1e-4, atol=1e-7)
    assert together[1, n:].abs().max() == 0  # padding
    other_seed = smoothgrad(_ctx(tiny, TEXTS[1:2]), MeasureConfig.of(smoothgrad_samples=4, smoothgrad_noise=0.2,
                                                                     seed=8), BatchState([11]))
    assert not torch.allclose(other_seed, alone)  # the noise is real


def test_it_is_compared_with_attention_like_every_input_method(tiny):
    ctx = _ctx(tiny, TEXTS)
    config = MeasureConfig.of(measures="grad_norm,smoothgrad", smoothgrad_samples=2, token_map_indices=frozenset({1}))
    arrays, maps = measure_batch(tiny, ctx.batch, [0, 1, 0, 1], [0, 1, 2, 3], config)
    assert config.methods.input == ["grad_norm", "smoothgrad"]
    assert arrays["attention.kendall_tau_b_excess"].shape[-1] == 2
    assert np.isfinite(arrays["attention.kendall_tau_b"][..., 1]).any()
    assert set(maps[1]["maps"]) >= {"grad_norm", "smoothgrad"}
