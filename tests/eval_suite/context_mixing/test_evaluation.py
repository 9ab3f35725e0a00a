"""The context-mixing methods inside a real evaluation (``python -m eval_suite --measures mixing,...``): their rows
equal context_mixing_rows called directly on the evaluation's own batches, their results.json blocks are finite
and are the mean of those rows, and every consumer copes: the CSV, the plots, the report's token view, the model
card, compare, and --resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from eval_suite.cli import main
from tests.helpers.report_data import embedded
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint

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


@pytest.fixture(scope="module")
def direct(workspace, evaluated):
    """context_mixing_rows and the gradient importance, computed directly on each planned batch of the run,
    scattered back to dataset order: {key: [N, ...]}, with the stored rows of the run beside them."""
    from eval_suite.attribution import GradientNorm
    from eval_suite.forward_context import ForwardContext
    from eval_suite.batching import collate
    from eval_suite.compare import load_evaluation
    from eval_suite.context_mixing import context_mixing_rows
    from eval_suite.settings import MeasureConfig
    from eval_suite.runner import EvalRequest, plan_evaluation

    request = EvalRequest(checkpoint=workspace["checkpoint"], output_dir=str(evaluated), dataset=workspace["data"],
                          split="train", limit=N, batch_size=5, measure=MeasureConfig.of(measures=SELECTION))
    plan = plan_evaluation(request, torch.device("cpu"))
    values: dict[str, list] = {}
    for members in plan.batches:
        batch = collate([plan.encodings[k] for k in members], plan.classifier.tokenizer.pad_token_id)
        ctx = ForwardContext(plan.classifier, batch)
        rows = context_mixing_rows(ctx, list(MIXING))
        rows["grad_norm"] = GradientNorm()(ctx)
        rows["content"] = batch.content_mask
        for key, value in rows.items():
            value = value.detach().double()
            if key.count(".") != 2:  # a vector over positions (not a summary): pad to one length for stacking
                fill = 0.0 if key == "content" else float("nan")
                value = torch.nn.functional.pad(value, (0, 64 - batch.length), value=fill)
            for row, k in enumerate(members):
                values.setdefault(key, [None] * N)[k] = value[row]
    stacked = {key: torch.stack(v).numpy() for key, v in values.items()}
    order = np.argsort(plan.indices, kind="stable")
    return {key: v[order] for key, v in stacked.items()}, load_evaluation(evaluated).rows


def test_stored_rows_equal_context_mixing_rows_on_the_same_batches(direct):
    computed, stored = direct
    compared = 0
    for method in MIXING:
        from eval_suite.registry import get

        for view in get(method).mixing.views():
            for summary in ("entropy", "sparsity", "special_mass"):
                key = f"{method}.{view}.{summary}"
                np.testing.assert_allclose(stored[f"mixing.{key}"], computed[key], atol=1e-6, equal_nan=True)
                compared += np.isfinite(computed[key]).sum()
    assert compared > 100  # real values, not NaN everywhere


def test_results_blocks_are_finite_and_are_the_means_of_the_direct_rows(direct, evaluated):
    """Per layer: the layer and inputs views' entropy and their raw tau-b with grad_norm are the mean over examples
    of the directly computed values (tau-b from the suite's metric on the direct vectors); the head view's
    per-head entropy likewise."""
    from eval_suite import metrics as M

    computed, _ = direct
    results = _results(evaluated)
    assert results["mixing_methods"]["value_zeroing"] == ["head", "layer", "inputs"]
    assert results["mixing_methods"]["attention_flow"] == ["inputs"]
    assert results["mixing_compared_with"]["inputs"] == ["grad_norm", "loo"]
    assert results["mixing_compared_with"]["layer"] == ["grad_norm", "loo", "repr_grad_norm"]
    content = torch.from_numpy(computed["content"]).bool()
    for layer, entry in enumerate(results["per_layer"]):
        for method in MIXING:
            for view, block in entry["mixing"][method].items():
                for summary in ("entropy", "sparsity", "special_mass"):
                    stat = block[summary]
                    assert stat["defined"] and np.isfinite(stat["mean"]) and len(stat["ci95"]) == 2, (method, view)
                    if view != "head":
                        expected = np.nanmean(computed[f"{method}.{view}.{summary}"][:, layer])
                        assert stat["mean"] == pytest.approx(expected, abs=1e-6)
                for against, metrics in block["agreement"].items():
                    assert all(np.isfinite(metrics[m]["mean"]) for m in ("kendall_tau_b", "kendall_tau_b_excess"))
                if view == "head":
                    continue
                vector = torch.nan_to_num(torch.from_numpy(computed[f"{method}.{view}"][:, layer]), nan=0.0)
                importance = torch.nan_to_num(torch.from_numpy(computed["grad_norm"]), nan=0.0)
                tau = M.kendall_tau_b_cross(vector[:, None, None], importance[:, None, None], content[:, None, :])
                expected = np.nanmean(tau.numpy())
                assert block["agreement"]["grad_norm"]["kendall_tau_b"]["mean"] == pytest.approx(expected, abs=1e-6)
    for entry in results["per_layer_head"]:
        for method in ("attention_norm", "value_zeroing"):
            stat = entry["mixing"][method]["entropy"]
            expected = np.nanmean(computed[f"{method}.head.entropy"][:, entry["layer"], entry["head"]])
            if stat["defined"]:
                assert stat["mean"] == pytest.approx(expected, abs=1e-6)
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

    # Against itself: every view compared, nothing differs. Against a run without value zeroing: the rest only.
    capsys.readouterr()
    assert compare_main([str(evaluated), str(out), "--output-dir", str(workspace["root"] / "cmp")]) == 0
    compared = json.loads((workspace["root"] / "cmp" / "compare.json").read_text())
    assert "value_zeroing.head" in compared["mixing_compared"] and "attention_flow.inputs" in compared["mixing_compared"]
    assert compared["n_significant"] == 0
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
