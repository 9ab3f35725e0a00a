"""Eq. 5 from a replicated batch (eval_suite.input_to_representation): the same rows as the per-position loop of
eval_suite.attribution.InputToRepresentation on tiny models and MiniLM (float32 1e-6, float64 1e-12), computed only
for the (example, position) pairs wanted and at each example's own length; its sampled summaries are those of
eval_suite.measure, unbiased, with a standard error that is the spread over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_suite import input_to_representation as input_to_representation_module
from eval_suite import metrics as M
from eval_suite.attribution import ForwardContext, InputToRepresentation, sample_positions
from eval_suite.batching import collate, encode_texts
from eval_suite.input_to_representation import (
    forecast_work,
    input_to_representation,
    input_to_representation_length_buckets,
    input_to_representation_replicated,
    length_buckets,
    sampled_position_summaries,
)
from eval_suite.batch_rows import measure_batch
from eval_suite.settings import MeasureConfig
from eval_suite.model_access import load_classifier
from tests.helpers.tiny_models import make_tiny_checkpoint

TEXTS = ["w1 w2 w3 w4 w5 w6", "w9 w8 w7", "w10 w11 w12 w13 w14 w15 w16 w17 w18", "w40 w41 w42 w43"]
# documents with more content tokens than the sample takes: 7 to 12 words
DOCUMENTS = [" ".join(f"w{(7 * d + 3 * i) % 90}" for i in range(7 + d)) for d in range(6)]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_classifier(tiny_path)


def _batch(classifier, texts=TEXTS):
    encodings, _ = encode_texts(classifier.tokenizer, texts, classifier.max_length)
    return collate(encodings, classifier.tokenizer.pad_token_id)


def _some_positions(batch, n_layers, seed=0):
    """A different random subset of the real positions per layer (what projection and sampling ask for)."""
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(batch.size, n_layers, batch.length, generator=g) < 0.5
    return chosen & batch.attention_mask.bool()[:, None, :]


def test_replicated_rows_equal_the_per_position_loop(tiny, tmp_path):
    sparse = load_classifier(make_tiny_checkpoint(tmp_path / "sparse", attn_impl="sparsemax"))
    for classifier in (tiny, sparse):
        batch = _batch(classifier)
        ctx = ForwardContext(classifier, batch, max_grad_tokens=20)  # several chunks of rows
        positions = _some_positions(batch, classifier.n_layers)
        loop = InputToRepresentation()(ctx, positions)
        replicated = input_to_representation_replicated(ctx, positions)
        assert replicated.dtype == loop.dtype == torch.float32
        torch.testing.assert_close(replicated, loop, rtol=0, atol=1e-6)
        assert (replicated[~positions] == 0).all() and (replicated.sum(dim=-1)[positions] - 1).abs().max() < 1e-5
        torch.testing.assert_close(input_to_representation_replicated(ctx), InputToRepresentation()(ctx),
                                   rtol=0, atol=1e-6)


def test_replicated_rows_equal_the_per_position_loop_in_float64(tiny_path, monkeypatch):
    classifier = load_classifier(tiny_path)
    classifier.model.double()
    batch = _batch(classifier)
    ctx = ForwardContext(classifier, batch)
    positions = _some_positions(batch, classifier.n_layers, seed=1)
    loop = InputToRepresentation()(ctx, positions)
    replicated = input_to_representation_replicated(ctx, positions)
    assert replicated.dtype == torch.float64
    torch.testing.assert_close(replicated, loop, rtol=0, atol=1e-12)
    monkeypatch.setattr(input_to_representation_module, "CALL_COST", 0)
    torch.testing.assert_close(input_to_representation_length_buckets(ctx, positions), loop, rtol=0, atol=1e-12)


def test_jacobian_mode_rows_equal_the_per_position_loop(tiny):
    batch = _batch(tiny, TEXTS[:2])
    ctx = ForwardContext(tiny, batch)
    positions = _some_positions(batch, tiny.n_layers, seed=2)
    loop = InputToRepresentation(mode="jacobian")(ctx, positions)
    torch.testing.assert_close(input_to_representation_replicated(ctx, positions, mode="jacobian"), loop,
                               rtol=0, atol=1e-6)


def test_minilm_rows_equal_the_per_position_loop(minilm_path, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    folder = tmp_path / "minilm_cls"
    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    classifier = load_classifier(str(folder), attn_impl="entmax15")
    batch = _batch(classifier, ["a gorgeous, witty, seductive movie.", "the plot is boilerplate.", "not bad"])
    ctx = ForwardContext(classifier, batch)
    content = batch.content_mask[:, None, :].expand(-1, classifier.n_layers, -1)
    loop = InputToRepresentation()(ctx, content)
    torch.testing.assert_close(input_to_representation_replicated(ctx, content), loop, rtol=0, atol=1e-6)
    monkeypatch.setattr(input_to_representation_module, "CALL_COST", 0)  # one group per length
    assert len(length_buckets(batch.attention_mask, content)[0]) > 1
    torch.testing.assert_close(input_to_representation_length_buckets(ctx, content), loop, rtol=0, atol=1e-6)


def test_examples_without_a_position_never_pay(tiny):
    """Every forward pass holds exactly the wanted (example, position) rows, shortest first, each pass cut to the
    longest example among its own rows."""
    batch = _batch(tiny)
    ctx = ForwardContext(tiny, batch, max_grad_tokens=24)
    positions = batch.content_mask[:, None, :].expand(-1, tiny.n_layers, -1)
    lengths = batch.attention_mask.sum(dim=1)
    seen = []
    handle = tiny.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        base = ctx.base  # the batch's own pass, at its padded length
        seen.clear()
        input_to_representation_replicated(ctx, positions)
    finally:
        handle.remove()
    rows_per_example = batch.content_mask.sum(dim=1)
    assert sum(rows for rows, _ in seen) == int(rows_per_example.sum())
    expected_lengths = sorted(int(lengths[b]) for b in range(batch.size) for _ in range(int(rows_per_example[b])))
    start = 0
    for rows, length in seen:
        assert length == max(expected_lengths[start:start + rows]) and rows * length <= 24
        start += rows
    assert base.embeddings.shape[1] == batch.length > min(length for _, length in seen)


def test_length_buckets_give_the_loop_rows_and_group_a_ragged_batch(tiny, monkeypatch):
    # free calls: on the tiny model the fixed cost of a call would keep the batch whole
    monkeypatch.setattr(input_to_representation_module, "CALL_COST", 0)
    batch = _batch(tiny, TEXTS + DOCUMENTS)
    ctx = ForwardContext(tiny, batch)
    positions = _some_positions(batch, tiny.n_layers, seed=3)
    groups, _ = length_buckets(batch.attention_mask, positions)
    assert len(groups) > 1 and sorted(sum(groups, [])) == list(range(batch.size))
    torch.testing.assert_close(input_to_representation_length_buckets(ctx, positions),
                               InputToRepresentation()(ctx, positions), rtol=0, atol=1e-6)


def test_auto_picks_the_least_forecast_work(tiny):
    """A MiniLM-shaped (6 layers) runner batch of 32 sentences of 6-27 tokens wastes most of the loop's work on
    padding and missing positions, and both other layouts save it; one 512-token document wastes none."""
    lengths = torch.linspace(6, 27, 32).round().long()
    ragged = (torch.arange(27)[None, :] < lengths[:, None]).long()
    work = forecast_work(ragged, ragged.bool()[:, None, :].expand(-1, 6, -1))
    assert work["length_buckets"] < work["per_position"] and work["replicated"] < work["per_position"]
    long = torch.ones(1, 512, dtype=torch.long)
    work = forecast_work(long, torch.ones(1, 6, 512, dtype=torch.bool))
    assert min(work, key=work.get) == "per_position" and work["length_buckets"] == work["per_position"]
    ctx = ForwardContext(tiny, _batch(tiny))
    for strategy in ("auto", "replicated", "length_buckets", "per_position"):
        torch.testing.assert_close(input_to_representation(ctx, strategy=strategy), InputToRepresentation()(ctx),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="strategy must be"):
        input_to_representation(ctx, strategy="vmap")


# ----------------------------------------------------------------------------------------------- sampled summaries


def _summaries_of_measure(classifier, batch, indices, **config):
    arrays, _ = measure_batch(classifier, batch, [0] * batch.size, indices,
                              MeasureConfig.of(measures="input_to_repr", **config))
    return {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith("input_to_repr.")}


def test_summaries_are_the_measure_rows_with_and_without_sampling(tiny):
    batch = _batch(tiny)
    indices = [3, 8, 1, 5]
    ctx = ForwardContext(tiny, batch)
    content = batch.content_mask
    g = input_to_representation_replicated(ctx, content[:, None, :].expand(-1, tiny.n_layers, -1))
    exact = sampled_position_summaries(g, content)
    for key, value in _summaries_of_measure(tiny, batch, indices).items():
        np.testing.assert_allclose(exact[key].numpy(), value, rtol=0, atol=1e-6, err_msg=key)
    sampled = sample_positions(indices, content, 4, seed=7)
    ours = sampled_position_summaries(g, content, sampled)
    measured = _summaries_of_measure(tiny, batch, indices, input_to_repr_sample=4, seed=7)
    assert set(ours) == set(measured) == {"entropy", "coindexed_share", "entropy_se", "coindexed_share_se", "positions"}
    for key, value in measured.items():
        np.testing.assert_allclose(ours[key].numpy(), value, rtol=0, atol=1e-6, err_msg=key)
    # K >= every example's content count: the sample is every position, the figures are exact, their error 0
    everything = sample_positions(indices, content, 64, seed=7)
    assert torch.equal(everything, content)
    full = sampled_position_summaries(g, content, everything)
    for key in ("entropy", "coindexed_share"):
        assert torch.equal(full[key], exact[key]) and (full[f"{key}_se"] == 0).all()


def test_sampled_estimate_is_unbiased_and_its_standard_error_is_the_spread_over_seeds(tiny):
    """Over 400 seeded samples of k = 4 of the 7-12 content positions of each document: the mean estimate is the
    exact mean, the spread is the finite-population standard error sqrt((1 - n/N) S^2 / n) of the population of
    positions, and the reported (estimated) variance is that variance on average."""
    batch = _batch(tiny, DOCUMENTS)
    indices, k = [3, 8, 1, 5, 0, 2], 4
    ctx = ForwardContext(tiny, batch)
    content = batch.content_mask
    g = input_to_representation_replicated(ctx, content[:, None, :].expand(-1, tiny.n_layers, -1))
    # only the sampled rows computed give the same rows (and so the same estimate) as the full computation
    sampled = sample_positions(indices, content, k, seed=0)
    alone = input_to_representation_replicated(ctx, sampled[:, None, :].expand(-1, tiny.n_layers, -1))
    torch.testing.assert_close(alone[sampled[:, None, :].expand_as(alone[..., 0])],
                               g[sampled[:, None, :].expand_as(g[..., 0])], rtol=0, atol=1e-6)
    exact = sampled_position_summaries(g, content)
    population = {}
    rows = M.normalise(g.double(), content[:, None, None, :])
    population["entropy"] = M.normalised_entropy(rows, content[:, None, None, :])
    population["coindexed_share"] = torch.diagonal(rows, dim1=-2, dim2=-1)
    seeds = 400
    estimates = {key: [] for key in population}
    variances = {key: [] for key in population}
    for seed in range(seeds):
        summary = sampled_position_summaries(g, content, sample_positions(indices, content, k, seed))
        for key in population:
            estimates[key].append(summary[key])
            variances[key].append(summary[f"{key}_se"] ** 2)
    N = content.sum(dim=1).double()[:, None]
    sampled_examples = (N > k).expand(-1, tiny.n_layers).clone()
    sampled_examples[:, 0] = False  # layer 0 is one-hot: every position has entropy 0 and share 1
    for key, values in population.items():
        estimate = torch.stack(estimates[key])  # [seeds, B, n]
        kept = torch.where(content[:, None, :], values, float("nan"))
        S2 = torch.tensor(np.nanvar(kept.numpy(), axis=-1, ddof=1))
        theory = (1 - k / N) * S2 / k  # the variance of the sample mean
        considered = sampled_examples & (theory > 1e-12)
        assert considered.sum() == batch.size, key
        spread = estimate.var(dim=0)
        z = (estimate.mean(dim=0) - exact[key]).abs() / (theory / seeds).sqrt()
        assert z[considered].max() < 4.5, (key, z)
        ratio = spread[considered] / theory[considered]
        assert ((ratio > 0.7) & (ratio < 1.35)).all(), (key, ratio)
        reported = torch.stack(variances[key]).mean(dim=0)
        ratio = reported[considered] / theory[considered]
        assert ((ratio > 0.8) & (ratio < 1.25)).all(), (key, ratio)
