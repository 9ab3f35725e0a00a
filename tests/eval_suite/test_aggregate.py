"""eval_suite.aggregate: undefined cells stay undefined with their reason, pooled means weight heads by their n,
bootstrap intervals are seeded and bracket the mean, and an all-special-token head leaves every mean untouched."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from eval_suite.aggregate import AggregateConfig, Bootstrap, Stats, aggregate, pooled_stat
from eval_suite.cli import main
from tests.helpers.tiny_models import make_special_token_head_checkpoint, make_text_csv, make_tiny_checkpoint


def test_pooled_means_weight_heads_by_the_examples_they_are_defined_on():
    n = 40
    values = np.full((n, 2), np.nan)
    values[:, 0] = 1.0  # head A: defined on all 40 examples
    values[:12, 1] = 0.0  # head B: defined on 12
    bootstrap = Bootstrap(n, AggregateConfig(bootstrap_resamples=200))
    pooled = pooled_stat(values, np.array([True, True]), bootstrap, min_n=10)
    assert pooled["mean"] == pytest.approx(40 / 52) and pooled["n"] == 52
    equal_weight_mean = (1.0 + 0.0) / 2
    assert pooled["mean"] != pytest.approx(equal_weight_mean)


def test_too_few_examples_make_a_cell_undefined_with_its_reason():
    values = np.full((30, 1), np.nan)
    values[:4, 0] = 0.5
    stats = Stats(values, Bootstrap(30, AggregateConfig(bootstrap_resamples=50)), min_n=10)
    cell = stats.at(0, reason="all attention on special tokens in 26 of 30 examples")
    assert cell["defined"] is False and cell["mean"] is None and cell["n"] == 4 and cell["ci95"] is None
    assert "4 of 30" in cell["reason"] and "special tokens in 26" in cell["reason"]


def test_bootstrap_intervals_are_seeded_and_bracket_the_mean():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 1.0, size=(200, 3))
    a = Stats(values, Bootstrap(200, AggregateConfig(bootstrap_seed=1)), min_n=10)
    b = Stats(values, Bootstrap(200, AggregateConfig(bootstrap_seed=1)), min_n=10)
    c = Stats(values, Bootstrap(200, AggregateConfig(bootstrap_seed=2)), min_n=10)
    assert a.at(0) == b.at(0) and a.at(0)["ci95"] != c.at(0)["ci95"]
    for k in range(3):
        stat = a.at(k)
        assert stat["ci95"][0] < stat["mean"] < stat["ci95"][1]
        assert stat["ci95"][1] - stat["ci95"][0] == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
        assert stat["std"] == pytest.approx(values[:, k].std(ddof=1))


@pytest.fixture(scope="module")
def special_head_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("special_head")
    checkpoint = make_special_token_head_checkpoint(root / "ckpt")
    data = make_text_csv(root / "data.csv", n=120)
    out = root / "eval"
    assert main([checkpoint, "--dataset", data, "--split", "train", "--limit", "30", "--ig-steps", "4",
                 "--ig-tolerance", "none", "--plot-examples", "0", "--output-dir", str(out)]) == 0
    return checkpoint, out


def test_a_head_with_all_mass_on_special_tokens_is_undefined_and_left_out_of_means(special_head_run):
    _, out = special_head_run
    results = json.loads((out / "results.json").read_text())
    heads = {(h["layer"], h["head"]): h for h in results["per_layer_head"]}
    special = heads[0, 0]
    assert special["special_mass"]["mean"] == pytest.approx(1.0)
    assert special["defined"] is False and special["attention_entropy"]["n"] == 0
    assert "all attention on special tokens in 30 of 30 examples" in special["undefined_reason"]
    tau = special["kendall_tau_b_excess"]["grad_norm"]
    assert tau["defined"] is False and tau["mean"] is None and "special tokens" in tau["reason"]

    rows = {k: v for k, v in np.load(out / "rows" / "batch_00000.npz").items()}
    layer0 = results["per_layer"][0]
    assert layer0["n_heads_defined"] == 3
    # The pooled layer value is the mean over the other heads' per-example values, never a 0 for head 0.
    others = np.concatenate([np.load(p)["attention.kendall_tau_b_excess"][:, 0, 1:, 0]
                             for p in sorted((out / "rows").glob("batch_*.npz"))])
    pooled = layer0["agreement"]["grad_norm"]["kendall_tau_b_excess"]
    assert pooled["mean"] == pytest.approx(np.nanmean(others), abs=1e-6) and pooled["n"] == np.isfinite(others).sum()
    assert results["summary"]["heads_defined"]["n"] == 7 and results["summary"]["heads_defined"]["of"] == 8
    assert any("1 of 8 heads are undefined" in w for w in results["summary"]["warnings"])
    assert "attention.special_mass" in rows


def test_the_card_shows_the_undefined_head_as_undefined(special_head_run, tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    from hub_cards.render import render_card

    checkpoint, out = special_head_run
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    card_path = render_card(folder, out / "results.json")
    text = card_path.read_text()
    scores_page = (folder / "interpretability" / "scores.md").read_text()  # every layer x head
    rows = [line for line in scores_page.splitlines() if line.startswith("| 0 | 0 |")]
    assert rows and "undefined: all attention on special tokens in 30 of 30 examples" in rows[0]
    assert "1 of 8 heads are undefined" in text and "7 of 8 heads defined" in text
    values = {r.metric_type: r for r in ModelCard.load(card_path).data.eval_results}
    results = json.loads((out / "results.json").read_text())
    pooled = results["summary"]["agreement"]["grad_norm"]["kendall_tau_b_excess"]["mean"]  # defined heads only
    assert values["kendall_tau_b_excess_grad_all_layers"].metric_value == pytest.approx(pooled, abs=1e-4)
    last = values["kendall_tau_b_excess_grad_last_layer"]
    last_pooled = results["per_layer"][-1]["agreement"]["grad_norm"]["kendall_tau_b_excess"]["mean"]
    assert last.metric_args["layer"] == len(results["per_layer"]) - 1
    assert last.metric_value == pytest.approx(last_pooled, abs=1e-4)


# ----------------------------------------------------------------------------------------------- by their meaning
#
# Through aggregate(), the function that turns a run's rows into results.json: every head of a one-layer "model" is
# one simulated dataset (its per-example attention entropy), so one call scores many datasets.


def _aggregated_heads(values: np.ndarray, **config) -> list[dict]:
    """per_layer_head of aggregate() on per-example values [N, C] as the attention entropy of C heads."""
    n, cells = values.shape
    v = np.asarray(values, dtype=np.float64)[:, None, :]
    zeros = np.zeros_like(v)
    rows = {"example.label": np.zeros(n, dtype=np.int64), "example.prediction": np.zeros(n, dtype=np.int64),
            "example.index": np.arange(n), "attention.entropy": v, "attention.sparsity": zeros,
            "attention.support_size": zeros + 3, "attention.special_mass": zeros, "all_positions.entropy": v,
            "all_positions.sparsity": zeros, "all_positions.support_size": zeros + 3}
    results = aggregate(rows, n_layers=1, n_heads=cells, settings=SimpleNamespace(measures=()),
                        config=AggregateConfig(**config))  # no measure: attention's own summaries only
    return results["per_layer_head"]


def test_the_95_percent_interval_covers_the_true_mean_of_95_percent_of_datasets():
    """800 seeded datasets of 100 values from Beta(2, 5) (mean 2/7, skewed like entropies): the percentile
    bootstrap's 95% interval covers 2/7 in 95% +- 2% of them (the binomial standard error of the share is 0.8%);
    an interval of 90% covers about 90%, which the same band refuses."""
    values = np.random.default_rng(0).beta(2, 5, size=(100, 800))
    coverage = {}
    for confidence in (0.95, 0.90):
        intervals = np.array([h["attention_entropy"]["ci95"] for h in _aggregated_heads(values, confidence=confidence)])
        coverage[confidence] = float(((intervals[:, 0] <= 2 / 7) & (2 / 7 <= intervals[:, 1])).mean())
    assert 0.93 <= coverage[0.95] <= 0.97, coverage
    assert coverage[0.90] < 0.93, coverage


def test_resamples_are_of_n_examples_the_binomial_law_of_a_share():
    """A 0/1 value with k ones among N examples: a resample of N examples has Binomial(N, k/N) ones, so with many
    resamples the interval's ends are that law's 2.5% and 97.5% quantiles over N, exactly (resamples of N - 1
    would give multiples of 1/(N - 1)); a 90% interval would give the 5% and 95% quantiles."""
    from scipy.stats import binom

    n, resamples = 24, 20000
    ones = np.array([4, 12, 20])  # counts whose law has no quantile near 2.5, 5, 95 or 97.5%
    values = (np.arange(n)[:, None] < ones[None, :]).astype(np.float64)
    heads = _aggregated_heads(values, bootstrap_resamples=resamples)
    noise = 4 * np.sqrt(0.025 * 0.975 / resamples)  # no quantile of the law lies within noise of a jump
    for cell, k in enumerate(ones):
        law = binom(n, k / n)
        for tail in (0.025, 0.05, 0.95, 0.975):
            assert np.min(np.abs(law.cdf(np.arange(n + 1)) - tail)) > noise
        expected = [law.ppf(0.025) / n, law.ppf(0.975) / n]
        stat = heads[cell]["attention_entropy"]
        assert stat["ci95"] == pytest.approx(expected, abs=1e-12), (k, stat["ci95"], expected)
        assert stat["mean"] == pytest.approx(k / n) and stat["n"] == n


@pytest.mark.parametrize("n_examples, min_examples", [(30, 10), (8, 10), (6, 10)])
def test_a_cell_is_defined_from_exactly_min_of_the_minimum_and_n_examples(n_examples, min_examples):
    """The rule: defined when n >= min(--min-examples, N). Cells with n = m - 1, m, m + 1 (where they exist) and 0,
    with N above the minimum and below it (runs with --limit 6 or 8)."""
    m = min(min_examples, n_examples)
    counts = [c for c in (m - 1, m, m + 1, 0) if c <= n_examples]
    values = np.full((n_examples, len(counts)), np.nan)
    for cell, count in enumerate(counts):
        values[:count, cell] = np.linspace(0.1, 0.9, count)
    heads = _aggregated_heads(values, min_examples=min_examples, bootstrap_resamples=50)
    for cell, count in enumerate(counts):
        stat = heads[cell]["attention_entropy"]
        assert stat["n"] == count
        assert stat["defined"] is (count >= m and count > 0), (count, m, stat)
        assert (stat["mean"] is None) is (not stat["defined"]) and (stat["ci95"] is None) is (not stat["defined"])
        if not stat["defined"]:
            assert f"defined on {count} of {n_examples} examples (at least {m} needed)" in stat["reason"]
        else:
            assert stat["mean"] == pytest.approx(0.5) and stat["reason"] is None


def test_a_run_of_fewer_examples_than_the_minimum_defines_every_head_on_all_of_them(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", seed=2)  # softmax: every head is defined on every example
    data = make_text_csv(tmp_path / "data.csv", n=40)
    out = tmp_path / "eval"
    assert main([checkpoint, "--dataset", data, "--split", "train", "--limit", "6", "--measures", "grad_norm",
                 "--plot-examples", "0", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_examples"] == 6 and results["summary"]["min_examples"] == 6
    assert results["summary"]["heads_defined"]["n"] == 8
    for head in results["per_layer_head"]:
        assert head["defined"] and head["attention_entropy"]["n"] == 6 and head["attention_entropy"]["mean"] is not None
        assert head["kendall_tau_b"]["grad_norm"]["defined"]
    with open(out / "per_layer_head.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert {row["attention_entropy.defined"] for row in table} == {"True"}


def test_columnwise_nanpercentile_equals_numpys_bit_for_bit():
    """Bootstrap intervals: the grouped percentile gives np.nanpercentile's numbers exactly, for columns without NaN,
    with some, with all but one, and all NaN (undefined stays NaN)."""
    import warnings

    from eval_suite.statistics import nanpercentile_columns

    rng = np.random.default_rng(7)
    values = rng.normal(size=(1000, 40))
    for column in range(40):
        values[rng.random(1000) < (column % 8) / 8, column] = np.nan
    values[:, 5] = np.nan
    values[1:, 6], values[0, 6] = np.nan, 1.5
    ours = nanpercentile_columns(values, (2.5, 97.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns on the all-NaN column
        theirs = np.nanpercentile(values, (2.5, 97.5), axis=0)
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(ours[:, 5]).all() and (ours[:, 6] == 1.5).all()
