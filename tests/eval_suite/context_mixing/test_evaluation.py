"""The context-mixing methods inside a real evaluation (``python -m eval_suite --measures mixing,...``): their rows
equal the slow loop references (tests/eval_suite/context_mixing/references.py) run on each example alone, their
results.json blocks are finite and are the mean of those rows, and every consumer copes: the CSV, the plots, the
report's token view, the model card, compare (against a checkpoint that differs in one known head), and
--resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from eval_suite.cli import main
from tests.helpers.report_data import embedded
from tests.helpers.tiny_models import make_head_uniform, make_text_csv, make_tiny_checkpoint

MIXING = ("attention_norm", "attention_norm_res_ln", "value_zeroing", "alti", "attention_flow")
SELECTION = "mixing,grad_norm,loo,repr_grad_norm"
N = 12


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("hf_sparse_attn")
    root = tmp_path_factory.mktemp("mixing_eval")
    checkpoint = make_tiny_checkpoint(root / "ckpt", attn_impl="sparsemax", seed=3)
    data = make_text_csv(root / "data.csv", n=30, seed=2)
    return {"root": root, "checkpoint": checkpoint, "data": data}


def _args(ws, out, *extra):
    return [ws["checkpoint"], "--dataset", ws["data"], "--split", "train", "--limit", str(N), "--batch-size", "5",
            "--measures", SELECTION, "--plot-examples", "2", "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def evaluated(workspace):
    out = workspace["root"] / "run"
    assert main(_args(workspace, out)) == 0
    return out


def _results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def _summaries(vector: np.ndarray, content: np.ndarray) -> dict:
    """Entropy, sparsity and special mass of one classification-token vector over the real positions, restricted to
    the content positions: the definitions of eval_suite.context_mixing.rows, written out."""
    # A cosine distance of an unchanged output is 0; the loop's arithmetic leaves ~1e-16 of roundoff on it.
    vector = np.where(np.abs(vector) <= 1e-12 * np.abs(vector).max(), 0.0, vector)
    kept = vector[content]
    total, mass = vector.sum(), kept.sum()
    out = {"sparsity": float((kept == 0).mean()), "special_mass": float(1 - mass / total) if total > 0 else np.nan}
    if mass <= 0:  # no mixing from any content token: no distribution over them
        return {**out, "entropy": np.nan, "vector": np.full(len(kept), np.nan)}
    p = kept / mass
    nonzero = p[p > 0]
    return {**out, "entropy": float(-(nonzero * np.log(nonzero)).sum() / np.log(len(p))), "vector": p}


def _gradient_norm(model, ids: list[int]) -> np.ndarray:
    """||d y_hat / d x_i||_2 for the word embedding x_i of every token of one example (y_hat: predicted class)."""
    embeddings = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    probabilities = torch.softmax(model(inputs_embeds=embeddings).logits[0], dim=-1)
    probabilities[probabilities.argmax()].backward()
    return embeddings.grad[0].norm(dim=-1).detach().numpy()


def _padded_batch(tokenizer, texts: list[str]):
    """One right-padded TokenBatch of ``texts`` built here (special tokens first and last), and the lengths."""
    from eval_suite.batching import TokenBatch

    encoded = [tokenizer(text)["input_ids"] for text in texts]
    lengths = [len(ids) for ids in encoded]
    ids = torch.zeros(len(texts), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
    content = mask.bool().clone()
    content[:, 0] = False
    content[torch.arange(len(texts)), torch.tensor(lengths) - 1] = False
    return TokenBatch(ids, mask, content, torch.zeros_like(ids)), lengths


# Value zeroing's loop reruns the model once per layer, head and token: it runs on these few examples only.
ZEROED = 4


@pytest.fixture(scope="module")
def direct(workspace, evaluated):
    """Per example of the run, from a float64 copy of the model on a batch padded here: every context-mixing view
    from the loop references of tests/eval_suite/context_mixing/references.py (value zeroing on the ZEROED shortest
    examples), the gradient norm by autograd, each summarised here; with the run's stored rows beside them.
    Returns (summaries {key: [N, ...]}, vectors {key: [per example]}, stored rows); NaN where not computed."""
    from eval_suite.compare import load_evaluation
    from eval_suite.model_access import load_classifier
    from hf_sparse_attn.data import load_text_classification
    from tests.eval_suite.context_mixing import references as ref

    stored = load_evaluation(evaluated).rows
    classifier = load_classifier(workspace["checkpoint"], device="cpu")
    classifier.model.double()
    split = load_text_classification(workspace["data"])["train"]["text"]
    texts = [split[index] for index in stored["example.index"]]
    views = _results(evaluated)["mixing_methods"]
    batch, lengths = _padded_batch(classifier.tokenizer, texts)
    heads, layers = ref.attention_norms(classifier, batch)
    matrices = {"attention_norm": layers, "attention_norm_res_ln": ref.norms_res_ln(classifier, batch),
                "alti": ref.alti(classifier, batch)}
    per_head = {"attention_norm": heads}
    flows = ref.attention_flow(classifier, batch)
    shortest = sorted(range(len(texts)), key=lambda k: lengths[k])[:ZEROED]
    zero_batch, _ = _padded_batch(classifier.tokenizer, [texts[k] for k in shortest])
    zeroed = {k: row for row, k in enumerate(shortest)}
    zeroed_layer = ref.value_zeroing(classifier, zero_batch, per_head=False)
    zeroed_heads = ref.value_zeroing(classifier, zero_batch, per_head=True)
    computed: dict[str, list] = {}
    for k, n in enumerate(lengths):
        content = batch.content_mask[k, :n].numpy()
        vectors = {}
        sources = dict(matrices)
        heads_of = dict(per_head)
        if k in zeroed:
            sources["value_zeroing"] = zeroed_layer[zeroed[k]: zeroed[k] + 1]
            heads_of["value_zeroing"] = zeroed_heads[zeroed[k]: zeroed[k] + 1]
            row = 0
        for method, matrix in sources.items():
            b = row if method == "value_zeroing" else k
            vectors[method, "layer"] = matrix[b, :, 0, :n].numpy()  # the [CLS] row of every layer
            if "inputs" in views[method]:
                square = matrix[b: b + 1, :, :n, :n]
                vectors[method, "inputs"] = ref.rollout_cls(square / square.sum(dim=-1, keepdim=True), [n])[0].numpy()
        for method, values in heads_of.items():
            vectors[method, "head"] = values[row if method == "value_zeroing" else k, :, :, 0, :n].numpy()
        vectors["attention_flow", "inputs"] = flows[k, :, :n].numpy()
        for method, method_views in views.items():
            for view in method_views:
                if (method, view) not in vectors:  # value zeroing of an example it did not run on
                    shape = (len(layers[0]), classifier.n_heads) if view == "head" else (len(layers[0]),)
                    vectors[method, view] = np.full((*shape, n), np.nan)
        assert {(m, v) for m, vs in views.items() for v in vs} == set(vectors)
        for (method, view), vector in vectors.items():
            per_row = [_summaries(v, content) for v in vector.reshape(-1, n)]
            for key in ("entropy", "sparsity", "special_mass"):
                values = np.array([r[key] for r in per_row]).reshape(vector.shape[:-1])
                computed.setdefault(f"{method}.{view}.{key}", []).append(values)
            computed.setdefault(f"{method}.{view}", []).append([r["vector"] for r in per_row])
        ids = batch.input_ids[k, :n].tolist()
        computed.setdefault("grad_norm", []).append(_gradient_norm(classifier.model, ids)[content])
    summaries = {key: np.stack(values) for key, values in computed.items() if key.count(".") == 2}
    computed["value_zeroing examples"] = sorted(shortest)
    return summaries, computed, stored


def test_stored_rows_equal_the_loop_references_on_every_example(direct):
    summaries, computed, stored = direct
    compared = 0
    for key, expected in summaries.items():
        rows = computed["value_zeroing examples"] if key.startswith("value_zeroing.") else slice(None)
        np.testing.assert_allclose(stored[f"mixing.{key}"][rows], expected[rows], atol=2e-5, equal_nan=True,
                                   err_msg=key)
        compared += np.isfinite(expected).sum()
    assert compared > 500  # real values, not NaN everywhere


def test_results_blocks_are_finite_and_are_the_means_of_the_reference_rows(direct, evaluated):
    """Per layer: the layer and inputs views' summaries and their raw tau-b with grad_norm (scipy's, on the
    reference vectors and an autograd gradient norm) are the mean over examples; the head view's per-head entropy
    likewise."""
    from scipy.stats import kendalltau

    summaries, computed, _ = direct
    results = _results(evaluated)
    assert results["mixing_methods"]["value_zeroing"] == ["head", "layer", "inputs"]
    assert results["mixing_methods"]["attention_flow"] == ["inputs"]
    assert results["mixing_compared_with"]["inputs"] == ["grad_norm", "loo"]
    assert results["mixing_compared_with"]["layer"] == ["grad_norm", "loo", "repr_grad_norm"]
    for layer, entry in enumerate(results["per_layer"]):
        for method in MIXING:
            for view, block in entry["mixing"][method].items():
                for summary in ("entropy", "sparsity", "special_mass"):
                    stat = block[summary]
                    assert stat["defined"] and np.isfinite(stat["mean"]) and len(stat["ci95"]) == 2, (method, view)
                    if view != "head" and method != "value_zeroing":  # (its loop ran on a few examples only)
                        expected = np.nanmean(summaries[f"{method}.{view}.{summary}"][:, layer])
                        assert stat["mean"] == pytest.approx(expected, abs=2e-5), (method, view, summary)
                for against, metrics in block["agreement"].items():
                    assert all(np.isfinite(metrics[m]["mean"]) for m in ("kendall_tau_b", "kendall_tau_b_excess"))
                if view == "head" or method == "value_zeroing":
                    continue
                taus = [kendalltau(vectors[layer], gradient, variant="b").statistic
                        for vectors, gradient in zip(computed[f"{method}.{view}"], computed["grad_norm"])]
                expected = np.nanmean(taus)
                assert block["agreement"]["grad_norm"]["kendall_tau_b"]["mean"] == pytest.approx(expected, abs=2e-5)
    for entry in results["per_layer_head"]:
        for method in ("attention_norm", "value_zeroing"):
            stat = entry["mixing"][method]["entropy"]
            if method == "value_zeroing":
                assert set(entry["mixing"][method]["kendall_tau_b_excess"]) == {"grad_norm", "loo", "repr_grad_norm"}
                continue
            expected = np.nanmean(summaries[f"{method}.head.entropy"][:, entry["layer"], entry["head"]])
            if stat["defined"]:
                assert stat["mean"] == pytest.approx(expected, abs=2e-5)
            assert set(entry["mixing"][method]["kendall_tau_b_excess"]) == {"grad_norm", "loo", "repr_grad_norm"}
    summary = results["summary"]["mixing"]
    assert set(summary) == set(MIXING)
    last = results["n_layers"] - 1
    assert summary["alti"]["inputs"]["entropy"] == results["per_layer"][last]["mixing"]["alti"]["inputs"]["entropy"]
    assert any(line.startswith("context mixing alti (inputs)") for line in results["summary"]["text"])


def test_csv_plots_and_report_token_view_show_the_methods(evaluated):
    results = _results(evaluated)
    header = (evaluated / "per_layer_head.csv").read_text().splitlines()[0].split(",")
    assert "mixing.value_zeroing.kendall_tau_b_excess.grad_norm.mean" in header
    assert "mixing.attention_norm.entropy.ci_low" in header
    for method in MIXING:
        assert f"plots/mixing_kendall_tau_b_excess_{method}_grad_norm.png" in results["plots"]
        assert (evaluated / f"plots/mixing_kendall_tau_b_excess_{method}_grad_norm.png").read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((evaluated / "token_examples.json").read_text())
    assert len(stored) == 2
    page = embedded(evaluated / "report.html")
    for example in page["examples"]:
        source = stored[str(example["index"])]
        n_tokens = len(source["tokens"])
        mixing = source["mixing"]
        assert set(mixing) == set(MIXING) and set(mixing["alti"]) == {"layer", "inputs"}
        assert len(mixing["value_zeroing"]["head"]) == results["n_layers"]
        assert len(mixing["value_zeroing"]["head"][0]) == results["n_heads"]
        for views in mixing.values():
            for values in views.values():
                flat = np.array(values, dtype=float).reshape(-1, n_tokens)
                sums = np.nansum(flat, axis=-1)
                assert np.allclose(sums[np.isfinite(flat).all(axis=-1)], 1.0, atol=1e-4)  # over content tokens
        np.testing.assert_allclose(example["mixing"]["alti"]["inputs"], mixing["alti"]["inputs"], rtol=1e-3, atol=1e-6)
    script = (evaluated / "report.html").read_text()
    assert "ex.mixing" in script  # the token view draws them


def test_card_has_a_context_mixing_row_per_method_and_view(workspace, evaluated, tmp_path):
    from hub_cards.render import render_card

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(workspace["checkpoint"], checkpoint)
    text = render_card(checkpoint, evaluated / "results.json").read_text()
    section = text[text.index("### Context mixing"):]
    results = _results(evaluated)
    for method, views in results["mixing_methods"].items():
        for view in views:
            rows = [line for line in section.splitlines() if line.startswith(f"| `{method}` | {view} |")]
            assert len(rows) == 1, (method, view)
    excess = results["summary"]["mixing"]["alti"]["inputs"]["agreement"]["grad_norm"]["kendall_tau_b_excess"]
    (alti,) = [line for line in section.splitlines() if line.startswith("| `alti` | inputs |")]
    assert f"{excess['mean']:.3f}" in alti


def test_resume_gives_the_same_results_and_compare_tests_the_mixing_views(workspace, evaluated, capsys):
    from eval_suite.compare import main as compare_main

    out = workspace["root"] / "resumed"
    shutil.copytree(evaluated, out)
    shards = sorted((out / "rows").glob("batch_*.npz"))
    assert len(shards) == 3
    shards[0].unlink()
    assert main(_args(workspace, out, "--resume")) == 0
    assert json.loads((out / "run_info.json").read_text())["examples_measured_this_run"] < N
    assert (out / "results.json").read_bytes() == (evaluated / "results.json").read_bytes()

    # Against a checkpoint whose last layer's head 0 attends uniformly: that head's mixing differs; layer 0 and the
    # other heads of the last layer see the same inputs with the same weights and do not (up to roundoff). (attention_norm alone:
    # compare tests the summaries; each test with ties among 12 examples is an exact permutation test, so the
    # fewer that differ, the faster.)
    uniform = make_head_uniform(workspace["checkpoint"], workspace["root"] / "ckpt_uniform", layer=1, head=0)
    other = workspace["root"] / "uniform_head"
    assert main([uniform, *_args(workspace, other, "--measures", "attention_norm", "--plot-examples", "0")[1:]]) == 0
    capsys.readouterr()
    assert compare_main([str(evaluated), str(other), "--output-dir", str(workspace["root"] / "cmp")]) == 0
    compared = json.loads((workspace["root"] / "cmp" / "compare.json").read_text())
    assert compared["mixing_compared"] == ["attention_norm.head", "attention_norm.layer"]
    per_head = {(t["layer"], t["head"], t["metric"]): t for t in compared["tests"]
                if t.get("source") == "attention_norm.head" and t["method"] is None}
    for layer, head in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]:
        for summary in ("mixing_entropy", "mixing_sparsity", "mixing_special_mass"):
            same = per_head[layer, head, summary]  # (the last layer's own float32 roundoff: ~1e-9)
            assert same["difference"] == pytest.approx(0, abs=0 if layer == 0 else 1e-7), (layer, head, same)
            assert same["p_value"] == 1.0 and not same["significant"], (layer, head)
    changed = per_head[1, 0, "mixing_sparsity"]  # uniform attention: no zero left in that head's mixing
    assert changed["b"] == 0 and changed["a"] > 0.2 and changed["difference"] < 0 and changed["p_value"] < 0.01
    # Against a run without value zeroing on the same checkpoint: the rest only, nothing differs.
    fewer = workspace["root"] / "fewer"
    assert main(_args(workspace, fewer, "--measures", "mixing,-value_zeroing,grad_norm,loo,repr_grad_norm")) == 0
    assert compare_main([str(evaluated), str(fewer), "--output-dir", str(workspace["root"] / "cmp2")]) == 0
    compared = json.loads((workspace["root"] / "cmp2" / "compare.json").read_text())
    assert not any(s.startswith("value_zeroing") for s in compared["mixing_compared"])
    assert "alti.layer" in compared["mixing_compared"]
    tests = [t for t in compared["tests"] if t.get("source") == "alti.inputs" and t["metric"] == "kendall_tau_b"]
    assert len(tests) == 2 * 2 and all(t["difference"] == pytest.approx(0.0, abs=1e-9) for t in tests)


def test_mixing_is_a_tier_inside_full_with_a_cost_per_method_in_the_forecast(evaluated):
    from eval_suite.settings import MeasureConfig
    from eval_suite.cost import BatchShape, ModelShape, stage_costs
    from eval_suite.registry import resolve_measures

    assert resolve_measures("mixing") == MIXING
    assert set(MIXING) <= set(resolve_measures("full")) and not set(MIXING) & set(resolve_measures("paper"))
    assert resolve_measures("mixing,-value_zeroing,grad_norm") == ("grad_norm",) + tuple(
        m for m in MIXING if m != "value_zeroing")
    model = ModelShape(n_layers=6, n_heads=12, d_model=384, d_ff=1536)
    config = MeasureConfig.of(measures="mixing,grad_norm")

    def costs(length):
        return stage_costs(BatchShape((length,) * 4, (length - 2,) * 4), model, config, config.measures)

    short, long = costs(20), costs(40)
    for stage in (*MIXING, "context_mixing_split"):
        assert short[stage].flops > 0 and long[stage].flops >= 2 * short[stage].flops, stage
    # value zeroing: the feed-forward of every (i, j) pair (quadratic; its per-head [CLS] rows are linear);
    # flow: one max-flow over n^2 edges per token (cubic)
    assert long["value_zeroing"].flops >= 3 * short["value_zeroing"].flops
    assert long["attention_flow"].flops >= 7 * short["attention_flow"].flops
    forecast = json.loads((evaluated / "run_info.json").read_text())["forecast"]
    assert {*MIXING, "context_mixing_split"} <= set(forecast["stage_seconds"])
    assert all(forecast["factors"][stage] > 0 for stage in MIXING)


def test_a_budget_too_small_for_full_suggests_a_standard_tier_never_the_mixing_tier_alone():
    """``mixing`` alone measures no importance to compare with; the cheaper selection offered for ``full`` must be
    the largest standard tier that fits, even where the mixing tier would fit too."""
    from eval_suite.forecast import Forecast, Machine, cheaper_options
    from eval_suite.settings import MeasureConfig
    from eval_suite.cost import BatchShape, ModelShape

    model = ModelShape(n_layers=6, n_heads=12, d_model=384, d_ff=1536)
    forecast = Forecast(model, MeasureConfig.of(measures="full"), Machine(flop_rate=1e10, call_seconds=0.01),
                        [BatchShape((30,) * 8, (28,) * 8)])
    quick = forecast.with_measures(MeasureConfig.of(measures="quick").measures).total([[0]])[0]
    mixing = forecast.with_measures(MeasureConfig.of(measures="mixing").measures).total([[0]])[0]
    full = forecast.total([[0]])[0]
    budget = max(quick, mixing) * 1.01
    assert budget < full
    assert cheaper_options(forecast, [[0]], budget, 8).measures in ("quick", "paper")
