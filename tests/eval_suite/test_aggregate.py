"""eval_suite.aggregate: undefined cells stay undefined with their reason, pooled means weight heads by their n,
bootstrap intervals are seeded and bracket the mean, and an all-special-token head leaves every mean untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval_suite.aggregate import AggregateConfig, Bootstrap, Stats, pooled_stat
from eval_suite.cli import main
from tests.helpers.tiny_models import make_special_token_head_checkpoint, make_text_csv


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
    rows = [line for line in text.splitlines() if line.startswith("| 0 | 0 |")]
    assert rows and "undefined: all attention on special tokens in 30 of 30 examples" in rows[0]
    assert "1 of 8 heads are undefined" in text
    values = {r.metric_type: r for r in ModelCard.load(card_path).data.eval_results}
    results = json.loads((out / "results.json").read_text())
    layer0 = results["per_layer"][0]["agreement"]["grad_norm"]["kendall_tau_b_excess"]["mean"]
    best = values["kendall_tau_b_excess_grad_best_layer"]
    if best.metric_args["layer"] == 0:
        assert best.metric_value == pytest.approx(layer0, abs=1e-4)


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
