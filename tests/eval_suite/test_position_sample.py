"""Long documents measured at one shared seeded sample of content positions (eval_suite.position_sample): the
sample is shared by leave-one-out, representation leave-one-out and eq. 5, a document no longer than the threshold
or K is measured exactly, and the sampled agreement figures are unbiased with a jackknife standard error that
matches their spread over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_suite.agreement import AgreementPass
from eval_suite.attribution import sample_positions
from eval_suite.batch_rows import measure_batch
from eval_suite.batching import collate, encode_texts
from eval_suite.errors import EvalError
from eval_suite.model_access import load_classifier
from eval_suite.position_sample import PositionSample
from eval_suite.settings import MeasureConfig
from tests.helpers.tiny_models import VOCAB_WORDS, make_tiny_checkpoint

MEASURES = "loo,repr_loo,input_to_repr,grad_norm"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_sample") / "ckpt", layers=2, seed=3)
    classifier = load_classifier(folder, device="cpu")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(VOCAB_WORDS, size=n)) for n in (3, 11, 14)]
    encodings, _ = encode_texts(classifier.tokenizer, texts, 64)
    return classifier, collate(encodings, classifier.tokenizer.pad_token_id)


def _measure(tiny, **settings):
    classifier, batch = tiny
    config = MeasureConfig.of(measures=MEASURES, **settings)
    return measure_batch(classifier, batch, [0, 1, 0], [10, 11, 12], config)[0]


def test_k_at_least_the_length_is_exact_and_short_documents_stay_exact(tiny):
    exact = _measure(tiny)
    assert not any(k.endswith("_se") or k.startswith("positions.") for k in exact)
    everything = _measure(tiny, sample_above=0, sample_positions=64)  # K >= every document's content
    assert everything.keys() == exact.keys()
    for key, value in exact.items():
        assert np.array_equal(value, everything[key], equal_nan=True), key
    sampled = _measure(tiny, sample_above=4, sample_positions=4)
    n_content = exact["example.n_content"]
    long = n_content > 4
    assert long.tolist() == [False, True, True]
    assert np.array_equal(sampled["positions.measured"], np.where(long, 4, n_content))
    # the short document is measured at every position: the same values up to the float32 rounding of forward
    # passes whose batches hold other variants
    for key in ("attention.kendall_tau_b", "attention.jensen_shannon", "input_to_repr.entropy", "importance.entropy"):
        np.testing.assert_allclose(sampled[key][~long], exact[key][~long], rtol=0, atol=1e-5, err_msg=key)
    for key in ("attention.kendall_tau_b_se", "attention.jensen_shannon_se", "input_to_repr.entropy_se"):
        assert np.all(sampled[key][~long] == 0), key
    se = sampled["attention.kendall_tau_b_se"]  # [B, n, H, M]: loo is method 1, repr_loo method 2, grad_norm 0
    assert np.all(se[:, :, :, 0] == 0) and np.isfinite(se[long][..., 1:]).any() and (se[long][..., 1:] > 0).any()


def test_one_sample_serves_loo_repr_loo_and_eq5(tiny, monkeypatch):
    """LOO and repr-LOO are non-zero only at the sampled positions, which are the ones eq. 5's summaries rest on
    (sample_positions with the run's seed), and where measured they equal the exact run's values."""
    classifier, batch = tiny
    from eval_suite import attribution

    seen = []
    original = attribution.LeaveOneOut.__call__
    monkeypatch.setattr(attribution.LeaveOneOut, "__call__",
                        lambda self, ctx, measured=None: seen.append(measured) or original(self, ctx, measured))
    config = MeasureConfig.of(measures=MEASURES, sample_above=4, sample_positions=4, seed=5)
    measure_batch(classifier, batch, [0, 1, 0], [10, 11, 12], config)
    exact_config = MeasureConfig.of(measures=MEASURES)
    measure_batch(classifier, batch, [0, 1, 0], [10, 11, 12], exact_config)
    expected = sample_positions([10, 11, 12], batch.content_mask, 4, 5)
    expected[0] = batch.content_mask[0]  # 3 content tokens: every one
    assert torch.equal(seen[0], expected) and torch.equal(seen[1], batch.content_mask)


def test_sampled_agreement_is_unbiased_and_its_jackknife_error_is_the_spread_over_seeds():
    """tau-b of continuous vectors over a uniform sample of k of L positions is a U-statistic of the full tau-b:
    its mean over seeds is the exact value, and the reported jackknife standard error (finite-population
    corrected) is its standard deviation over seeds."""
    rng = np.random.default_rng(3)
    L, k, seeds = 40, 12, 300
    x = torch.tensor(rng.random((1, 1, 3, L)))
    y = x[:, :, :2] + torch.tensor(rng.normal(0, 0.3, (1, 1, 2, L)))  # related, so tau-b is far from 0
    content = torch.ones(1, L, dtype=torch.bool)
    exact = AgreementPass(y, {"content": content})
    exact.add("attention", x, "content")
    full = exact.rows()["attention.kendall_tau_b"][0, 0]
    # one document per draw, as a batch: each draw's sample comes from (seed, its index)
    content = content.expand(seeds, L)
    sample = PositionSample(sample_positions(list(range(seeds)), content, k, 0), torch.ones(seeds, dtype=torch.bool),
                            torch.full((seeds,), L), True)
    agreement = AgreementPass(y.expand(seeds, -1, -1, -1), {"content": content}, (0, 1), sample)
    agreement.add("attention", x.expand(seeds, -1, -1, -1), "content")
    rows = agreement.rows()
    estimates, reported = rows["attention.kendall_tau_b"][:, 0], rows["attention.kendall_tau_b_se"][:, 0]
    spread = estimates.std(dim=0)
    z = (estimates.mean(dim=0) - full).abs() / (spread / seeds ** 0.5)
    assert z.max() < 4.0, z
    ratio = reported.mean(dim=0) / spread
    # the jackknife is slightly conservative for a U-statistic; without the finite-population correction the mean
    # ratio would be about 1.3
    assert ((ratio > 0.75) & (ratio < 1.4)).all() and 0.9 < float(ratio.mean()) < 1.25, ratio


def test_bad_sampling_settings_are_one_line_errors():
    for settings in ({"sample_positions": 1}, {"sample_above": -1}):
        with pytest.raises(EvalError) as caught:
            MeasureConfig.of(**settings).validate()
        assert "--sample-positions" in str(caught.value) and "\n" not in str(caught.value)
