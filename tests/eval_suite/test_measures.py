"""Measurement selection (--measures): each tier's results hold exactly its measurements and every consumer of
results (plots, per_layer_head.csv, report.html, the model card, compare) copes with what is missing; the
narrower selections and the "rows only where needed" work give the same numbers as the full set."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from eval_suite import batch_rows as measure_module
from eval_suite.attribution import InputToRepresentation, ProjectedAttention
from eval_suite.forward_context import ForwardContext, attention_rows
from eval_suite.agreement import METRIC_NAMES
from eval_suite.batching import collate, encode_texts
from eval_suite.batch_rows import measure_batch
from eval_suite.settings import MeasureConfig
from eval_suite.registry import MethodLists, describe_selection, registry, resolve_measures, tiers
from eval_suite.model_access import load_classifier
from eval_suite.errors import EvalError
from tests.helpers.tiny_models import VOCAB_WORDS, make_checkpoint, make_results, make_tiny_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STANDARD = ("quick", "paper", "full")


# ----------------------------------------------------------------------------------------------- resolving names


def test_tiers_are_cumulative_and_full_holds_every_measurement():
    named = tiers()
    tiered = {name for name, entry in registry().items() if entry.tier is not None}
    assert set(named["quick"]) < set(named["paper"]) < set(named["full"]) == tiered
    assert not set(named["full"]) & {name for name, entry in registry().items() if entry.tier is None}
    assert named["quick"] == ("grad_norm", "grad_x_input", "repr_grad_norm", "rollout")
    for tier in STANDARD:
        assert resolve_measures(tier) == named[tier] and describe_selection(named[tier]) == tier


def test_measures_mix_tiers_names_and_removals_in_registry_order():
    assert resolve_measures("loo,quick") == ("grad_norm", "grad_x_input", "loo", "repr_grad_norm", "rollout")
    mixing = tiers()["mixing"]
    assert resolve_measures("full,-faithfulness,-integrated_gradients," + ",".join("-" + m for m in mixing)) \
        == tiers()["paper"]
    assert describe_selection(resolve_measures("quick,loo")) == "grad_norm,grad_x_input,loo,repr_grad_norm,rollout"


@pytest.mark.parametrize("spec, fragment", [("quik", "unknown measurement or tier 'quik'"),
                                            ("quick,-quick", "selects nothing")])
def test_bad_selection_is_one_line_naming_the_choices(spec, fragment):
    with pytest.raises(EvalError) as caught:
        resolve_measures(spec)
    message = str(caught.value)
    assert fragment in message and "\n" not in message
    if "unknown" in fragment:
        assert all(tier in message for tier in STANDARD)


# ----------------------------------------------------------------------------------------------- each tier end to end


@pytest.fixture(scope="module")
def tier_runs(tmp_path_factory):
    """One real evaluation per standard tier on the same 16 seeded MR test sentences and the same checkpoint."""
    root = tmp_path_factory.mktemp("tiers")
    checkpoint = make_checkpoint(root / "ckpt", attn_impl="sparsemax")
    return {"root": root, "checkpoint": checkpoint,
            **{tier: make_results(checkpoint, root / f"eval_{tier}", measures=tier).parent for tier in STANDARD}}


@pytest.mark.parametrize("tier", STANDARD)
def test_each_tier_results_hold_exactly_its_measures(tier_runs, tier):
    results = json.loads((tier_runs[tier] / "results.json").read_text())
    members = tiers()[tier]
    methods = MethodLists.of(members)
    assert results["config"]["measures"] == list(members)
    assert results["measure_selection"] == tier
    assert set(results["measures_left_out"]) == set(tiers()["full"]) - set(members)
    assert results["importance_methods"] == methods.importance
    assert results["input_methods"] == methods.input and results["representation_methods"] == methods.representation
    for entry in results["per_layer_head"]:
        assert set(entry["kendall_tau_b"]) == set(methods.importance)
        assert ("projected" in entry) == ("projected" in members)
        assert ("rollout" in entry) == ("rollout" in members)
    for layer in results["per_layer"]:
        assert ("input_to_repr_entropy" in layer) == ("input_to_repr" in members)
    assert ("faithfulness" in results) == ("faithfulness" in members)
    assert ("integrated_gradients" in results) == ("integrated_gradients" in members)
    # The summary names what ran and nothing else.
    measured_line = results["summary"]["text"][0]
    assert all(m in measured_line for m in members)
    assert all(m not in measured_line.split("measured:")[1].split(", ") for m in results["measures_left_out"])


@pytest.mark.parametrize("tier", STANDARD)
def test_every_consumer_copes_with_each_tier(tier_runs, tier):
    from eval_suite.report import report_payload
    from hub_cards.render import render_card

    folder = tier_runs[tier]
    results = json.loads((folder / "results.json").read_text())
    members = set(tiers()[tier])
    left_out = set(tiers()["full"]) - members
    # plots: every listed file is a PNG, one pair per measured importance method and none for the others
    for rel in results["plots"]:
        assert (folder / rel).read_bytes()[:8] == PNG_MAGIC
    plotted = {rel.split("kendall_tau_b_excess_")[-1][:-4] for rel in results["plots"]
               if "excess_" in rel and "mixing_" not in rel}  # context-mixing plots are per mixing method
    assert plotted == set(results["importance_methods"])
    # per_layer_head.csv: one row per head, method columns only for measured methods
    with open(folder / "per_layer_head.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == results["n_layers"] * results["n_heads"]
    columns = {c.split(".")[1] for c in table[0] if c.startswith("kendall_tau_b.")}
    assert columns == set(results["importance_methods"])
    assert not any(c.startswith("projected.") for c in table[0]) or "projected" in members
    # report.html was written and its payload lists the measured methods only
    assert (folder / "report.html").stat().st_size > 1000
    payload = report_payload(results, json.loads((folder / "token_examples.json").read_text()))
    assert payload["meta"]["input_methods"] == results["input_methods"]
    assert (payload["faithfulness"] is None) == ("faithfulness" not in members)
    for example in payload["examples"]:
        assert set(example["representation"]) == set(results["representation_methods"])
        assert (example["projected"] is None) == ("projected" not in members)
    # the model card renders and says what was left out
    carded = tier_runs["root"] / f"card_{tier}"
    shutil.copytree(tier_runs["checkpoint"], carded)
    card = render_card(carded, folder / "results.json").read_text()
    assert f"selection `{tier}`" in card
    for name in left_out:
        assert f"`{name}`" in card.split("Not measured, so not reported here:")[1].split(".")[0]
    if not left_out:
        assert "Not measured" not in card


def test_compare_of_two_tiers_compares_what_both_measured(tier_runs, capsys):
    from eval_suite.compare import main as compare_main

    out = tier_runs["root"] / "compare_quick_paper"
    assert compare_main([str(tier_runs["quick"]), str(tier_runs["paper"]), "--output-dir", str(out),
                         "--bootstrap-resamples", "50"]) == 0
    result = json.loads((out / "compare.json").read_text())
    quick, paper = MethodLists.of(tiers()["quick"]), MethodLists.of(tiers()["paper"])
    assert result["methods_compared"] == quick.importance
    assert result["methods_only_in_a"] == []
    assert result["methods_only_in_b"] == [m for m in paper.importance if m not in quick.importance]
    assert "not compared (measured in b only): loo, repr_loo" in capsys.readouterr().out
    # Same checkpoint, same examples: attention and the shared methods' rows are identical, nothing differs.
    assert result["accuracy"]["a"] == result["accuracy"]["b"]
    assert result["tests"] and all(t["difference"] == 0 and not t["significant"] for t in result["tests"])
    from eval_suite.compare import load_evaluation

    rows = {tier: load_evaluation(tier_runs[tier]).rows for tier in ("quick", "paper")}
    paper_methods = MethodLists.of(tiers()["paper"])
    shared = [k for k in rows["quick"] if k in rows["paper"]]
    assert {"attention.entropy", "attention.kendall_tau_b", "rollout.kendall_tau_b", "example.prediction"} <= set(shared)
    for key in shared:
        paper = rows["paper"][key]
        axis = _method_axis(key, quick)  # the quick run's methods along the key's last axis, if it has one
        if axis is not None:
            listed = (paper_methods.importance if key.startswith(("attention.", "importance.")) else
                      paper_methods.all_positions if key.startswith("all_positions.") else paper_methods.input)
            paper = paper[..., [listed.index(m) for m in axis]]
        np.testing.assert_array_equal(rows["quick"][key], paper, err_msg=key)


# ----------------------------------------------------------------------------------------------- same numbers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_measures") / "ckpt", layers=3, seed=3)
    classifier = load_classifier(folder, device="cpu")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(VOCAB_WORDS, size=n)) for n in (3, 11, 9, 14)]
    encodings, _ = encode_texts(classifier.tokenizer, texts, 64)
    return classifier, collate(encodings, classifier.tokenizer.pad_token_id)


def _measure(tiny, **config):
    classifier, batch = tiny
    config = MeasureConfig.of(ig_steps=4, ig_tolerance=None, fractions=(0.1, 0.5), **config)
    return measure_batch(classifier, batch, [0, 1, 0, 1], [10, 11, 12, 13], config)[0], config


def _method_axis(key: str, methods: MethodLists) -> list | None:
    """The methods along the last axis of a row key (None: the key has no method axis)."""
    prefix, metric = key.split(".", 1)
    if metric not in METRIC_NAMES and key != "importance.entropy":
        return None
    if prefix in ("attention", "importance"):
        return methods.importance
    if prefix == "all_positions":
        return methods.all_positions
    return methods.input  # rollout / projected


@pytest.mark.parametrize("tier", ["quick", "paper"])
def test_a_narrower_selection_gives_the_full_sets_values(tiny, tier):
    full, full_config = _measure(tiny, measures="full")
    part, part_config = _measure(tiny, measures=tier)
    assert set(part) < set(full)
    for key, values in part.items():
        axis = _method_axis(key, part_config.methods)
        expected = full[key]
        if axis is not None:
            expected = expected[..., [full_config.methods.importance.index(m) if key.startswith(("attention.",
                                      "importance.")) else (full_config.methods.all_positions if key.startswith(
                                      "all_positions.") else full_config.methods.input).index(m) for m in axis]]
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-6, equal_nan=True, err_msg=key)


def test_eq5_rows_only_where_needed_equal_every_row(tiny):
    classifier, batch = tiny
    ctx = ForwardContext(classifier, batch)
    every = InputToRepresentation()(ctx)
    queries = attention_rows(ctx.base.attentions, ctx.batch.attention_mask, "cls")
    wanted = (queries != 0).any(dim=2) | ctx.batch.content_mask[:, None, :]
    some = InputToRepresentation()(ctx, wanted)
    torch.testing.assert_close(some[wanted], every[wanted], rtol=0, atol=1e-6)
    assert some[~wanted].abs().max() == 0
    # what a projection multiplies by a non-zero weight is all it needs: the projection is the same
    only_attended = (queries != 0).any(dim=2)
    torch.testing.assert_close(ProjectedAttention()(ctx, InputToRepresentation()(ctx, only_attended)),
                               ProjectedAttention()(ctx, every), rtol=0, atol=1e-6)


def test_chunked_work_gives_the_same_rows(tiny, monkeypatch):
    """Tiny token budgets split every [B*L, ...] pass (LOO, repr-LOO, IG, faithfulness) and the metrics into many
    chunks; the rows are the same as in one piece. In float64: in float32 a matmul over another number of rows may
    round differently (about 1e-7 of a probability), which the metrics of near-tied rankings magnify to 1e-6."""
    classifier, batch = tiny
    classifier.model.double()
    try:
        whole, _ = _measure(tiny, measures="full")
        monkeypatch.setattr(measure_module, "METRIC_ELEMENTS", 1)
        chunked, _ = _measure(tiny, measures="full", max_tokens=20, max_grad_tokens=20)
    finally:
        classifier.model.float()
    assert set(whole) == set(chunked)
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=0, atol=1e-6, equal_nan=True, err_msg=key)


# ----------------------------------------------------------------------------------------------- sampled eq. 5


def test_sampled_eq5_is_unbiased_and_reports_its_standard_error(tiny):
    """The mean of the sampled estimate over many seeds is the exact value within a few standard errors of that
    mean, and the reported standard error is the spread of the estimate over seeds."""
    exact, _ = _measure(tiny, measures="input_to_repr")
    k = 4
    estimates = {"entropy": [], "coindexed_share": []}
    reported = {"entropy": [], "coindexed_share": []}
    for seed in range(60):
        rows, _ = _measure(tiny, measures="input_to_repr", input_to_repr_sample=k, seed=seed)
        n_content = rows["example.n_content"]
        assert np.array_equal(rows["input_to_repr.positions"], np.broadcast_to(np.minimum(k, n_content)[:, None],
                                                                                 rows["input_to_repr.positions"].shape))
        for key in estimates:
            estimates[key].append(rows[f"input_to_repr.{key}"])
            reported[key].append(rows[f"input_to_repr.{key}_se"])
    for key in estimates:
        values = np.stack(estimates[key]).astype(np.float64)  # [seeds, B, n]
        mean = values.mean(axis=0)
        spread = values.std(axis=0, ddof=1)
        sampled = spread > 0  # examples with more content tokens than k, layers >= 1
        assert sampled.sum() >= 6
        error_of_mean = spread / np.sqrt(values.shape[0])
        z = np.abs(mean - exact[f"input_to_repr.{key}"])[sampled] / error_of_mean[sampled]
        assert z.max() < 4.5, (key, z)
        # the reported standard error (finite-population corrected) matches the spread over seeds
        ratio = np.stack(reported[key]).mean(axis=0)[sampled] / spread[sampled]
        assert 0.6 < np.median(ratio) < 1.5, (key, ratio)
    # an example with at most k content tokens is measured exactly, with standard error 0
    short = rows["example.n_content"] <= k
    assert short.sum() == 1
    np.testing.assert_allclose(rows["input_to_repr.entropy"][short], exact["input_to_repr.entropy"][short], atol=1e-6)
    assert np.all(rows["input_to_repr.entropy_se"][short] == 0)


def test_sampled_eq5_standard_error_is_the_finite_population_formula_of_its_own_sample(tiny):
    """Examples of N = 4 content tokens sampled k = 3 at a time: each estimate leaves one position out, whose value
    is 4 x (exact mean) - 3 x (estimate); over seeds that recovers every position's value, so the reported standard
    error can be checked, sample by sample, against sqrt((1 - k/N) s^2 / k), s^2 the sample's variance (ddof 1)."""
    classifier, _ = tiny
    texts = ["w3 w17 w40 w8", "w60 w2 w33 w71", "w5 w9 w12"]
    batch = collate(encode_texts(classifier.tokenizer, texts, 64)[0], classifier.tokenizer.pad_token_id)
    n, k = 4, 3

    def rows(**config):
        return measure_batch(classifier, batch, [0, 1, 0], [0, 1, 2], MeasureConfig.of(measures="input_to_repr",
                                                                                     **config))[0]

    exact = rows()
    sampled = [rows(input_to_repr_sample=k, seed=seed) for seed in range(24)]
    assert list(exact["example.n_content"]) == [n, n, 3]
    checked = 0
    for key in ("entropy", "coindexed_share"):
        for b in (0, 1):
            for layer in range(1, exact[f"input_to_repr.{key}"].shape[1]):  # layer 0: every value is the same
                total = n * float(exact[f"input_to_repr.{key}"][b, layer])
                left_out = [total - k * float(r[f"input_to_repr.{key}"][b, layer]) for r in sampled]
                population = []
                for value in sorted(left_out):
                    if not population or value - population[-1] > 1e-4:
                        population.append(value)
                assert len(population) == n, (key, b, layer, population)  # every position was left out once
                for value, r in zip(left_out, sampled):
                    sample = list(population)
                    sample.pop(int(np.argmin(np.abs(np.array(sample) - value))))
                    expected = np.sqrt((1 - k / n) * np.var(sample, ddof=1) / k)
                    assert float(r[f"input_to_repr.{key}_se"][b, layer]) == pytest.approx(expected, rel=1e-3, abs=2e-6)
                    checked += 1
        for r in sampled:  # three content tokens: all of them are the sample, measured exactly, standard error 0
            np.testing.assert_allclose(r[f"input_to_repr.{key}"][2], exact[f"input_to_repr.{key}"][2], atol=1e-6)
            assert np.all(r[f"input_to_repr.{key}_se"][2] == 0)
    assert checked >= 2 * 2 * 2 * 24


# ----------------------------------------------------------------------------------------------- tau-b, by scipy


def _tau(x, y) -> float:
    from scipy.stats import kendalltau

    if len(x) < 2:
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)


def _null_by_enumeration(a: np.ndarray, g: np.ndarray) -> float:
    """Mean tau-b over every arrangement of g's non-zero values among g's non-zero positions."""
    import itertools

    nonzero = np.flatnonzero(g)
    taus = []
    for order in set(itertools.permutations(g[nonzero])):
        shuffled = g.copy()
        shuffled[nonzero] = order
        taus.append(_tau(a, shuffled))
    return float(np.mean(taus))


def _null_closed_form(a: np.ndarray, g: np.ndarray) -> float:
    """docs/eval_suite.md: sum_{i<j} sign(a_i - a_j)(nz_i - nz_j) / sqrt((n0 - ties_a)(n0 - ties_g)), nz = [g != 0]."""
    i, j = np.triu_indices(len(a), k=1)
    nz = (g != 0).astype(int)
    numerator = float(np.sum(np.sign(a[i] - a[j]) * (nz[i] - nz[j])))
    denominator = np.sqrt(float(np.sum(a[i] != a[j])) * float(np.sum(g[i] != g[j])))
    return numerator / denominator if denominator > 0 else float("nan")


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """measure_batch on a sparsemax checkpoint (exact zeros in attention and in the representation gradients), with
    every example's token-level attention and importance kept."""
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("sparse_tau") / "ckpt", attn_impl="sparsemax", seed=5)
    classifier = load_classifier(folder, device="cpu")
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(VOCAB_WORDS, size=size)) for size in (4, 7, 9, 12)]
    batch = collate(encode_texts(classifier.tokenizer, texts, 64)[0], classifier.tokenizer.pad_token_id)
    indices = [20, 21, 22, 23]
    config = MeasureConfig(measures="grad_norm,loo,repr_grad_norm,repr_loo", token_map_indices=frozenset(indices))
    arrays, maps = measure_batch(classifier, batch, [0, 1, 0, 1], indices, config)
    return arrays, maps, indices, config


def test_tau_b_rows_are_scipys_on_the_runs_own_attention_and_importance(sparse_run):
    """Every form of attention.kendall_tau_b*, per example, layer, head and method, from the stored token-level
    vectors (token_examples.json's content): raw, on attention's support, on the union of the supports (scipy's
    tau-b on the selected positions) and the null (every arrangement enumerated where there are at most 5
    non-zero importances, the published closed form otherwise), and the excess = raw - null."""
    arrays, maps, indices, config = sparse_run
    methods = config.methods
    enumerated = forms_seen = 0
    for b, index in enumerate(indices):
        example = maps[index]
        for layer, heads in enumerate(example["heads"]):
            for h, attention in enumerate(heads):
                for m, method in enumerate(methods.importance):
                    importance = (example["maps"][method] if method in methods.input
                                  else example["representation"][method][layer])
                    stored = {form: float(arrays[f"attention.{form}"][b, layer, h, m]) for form in (
                        "kendall_tau_b", "kendall_tau_b_on_support", "kendall_tau_b_on_union",
                        "kendall_tau_b_null", "kendall_tau_b_excess")}
                    if attention[0] is None:  # no attention on content tokens: every form is undefined
                        assert all(np.isnan(v) for v in stored.values())
                        continue
                    a, g = np.array(attention, dtype=np.float64), np.array(importance, dtype=np.float64)
                    support, union = a != 0, (a != 0) | (g != 0)
                    expected = {"kendall_tau_b": _tau(a, g),
                                "kendall_tau_b_on_support": _tau(a[support], g[support]),
                                "kendall_tau_b_on_union": _tau(a[union], g[union])}
                    if 0 < np.count_nonzero(g) <= 5:
                        expected["kendall_tau_b_null"] = _null_by_enumeration(a, g)
                        assert expected["kendall_tau_b_null"] == pytest.approx(_null_closed_form(a, g), abs=1e-9,
                                                                               nan_ok=True)
                        enumerated += 1
                    else:
                        expected["kendall_tau_b_null"] = _null_closed_form(a, g)
                    expected["kendall_tau_b_excess"] = expected["kendall_tau_b"] - expected["kendall_tau_b_null"]
                    for form, value in expected.items():
                        where = (index, layer, h, method, form)
                        assert stored[form] == pytest.approx(value, abs=1e-5, nan_ok=True), where
                        forms_seen += np.isfinite(value)
    assert enumerated >= 10 and forms_seen >= 300
    # the forms really differ here: sparse attention makes support and union other sets than all tokens
    raw, support = arrays["attention.kendall_tau_b"], arrays["attention.kendall_tau_b_on_support"]
    assert np.nanmax(np.abs(raw - support)) > 0.2 and np.nanmax(np.abs(arrays["attention.kendall_tau_b_null"])) > 0.2
