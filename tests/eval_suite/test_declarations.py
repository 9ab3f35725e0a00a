"""The declarations every consumer iterates: measures, agreement metrics, settings. No consumer knows a method by
name, a captum attribution is one more measure end to end (rows, results.json, CSV, report, card, compare,
forecast) and agrees with the suite's own integrated gradients, the command line is generated from the settings
(grouped, one flag style, every option with help, nothing heavy imported for --help), and the cost model counts the
pooling classifier's attention layer."""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_suite.agreement import AGREEMENT_METRICS, HEADLINE
from eval_suite.registry import registry
from tests.helpers.tiny_models import make_checkpoint, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
CAPTUM = ["captum:IntegratedGradients", "captum:DeepLift", "captum:GradientShap", "captum:Occlusion",
          "captum:FeatureAblation", "captum:NoiseTunnel(Saliency)"]
WITH_DELTA = ["captum:IntegratedGradients", "captum:DeepLift", "captum:GradientShap"]


# ----------------------------------------------------------------------------------------------- one declaration


def _sources(*packages):
    for package in packages:
        yield from sorted((REPO / package).rglob("*.py"))


def test_no_consumer_tests_a_method_by_name():
    names = "|".join(re.escape(n) for n in registry())
    pattern = re.compile(rf"""["']({names})["']\s+(not\s+)?in\b|==\s*["']({names})["']""")
    found = [f"{path.relative_to(REPO)}: {m.group(0)}" for path in _sources("eval_suite")
             if "methods" not in path.parts for m in pattern.finditer(path.read_text())]
    assert found == []


def test_the_headline_metric_is_named_in_its_declaration_only():
    literal = f'"{HEADLINE}"'
    found = [str(path.relative_to(REPO)) for path in _sources("eval_suite", "hub_cards", "studies", "hf_sparse_attn",
                                                                "bench") if literal in path.read_text()]
    assert found == ["eval_suite/agreement.py"]
    assert [m.name for m in AGREEMENT_METRICS if m.headline] == [HEADLINE]


def test_no_function_in_eval_suite_or_hub_cards_is_over_100_lines():
    long = [f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in _sources("eval_suite", "hub_cards") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100]
    assert long == []


def test_the_report_grid_and_compare_read_the_metric_declarations():
    from eval_suite.agreement import PAIRED, grid_metrics
    from eval_suite.report import GRID_METRICS

    assert [m.key for m in GRID_METRICS if m.per_method] == [m.name for m in grid_metrics()]
    assert GRID_METRICS[0].key == HEADLINE
    assert PAIRED == tuple(m.name for m in AGREEMENT_METRICS if m.paired)


# ----------------------------------------------------------------------------------------------- settings


def test_help_is_grouped_one_flag_style_with_help_everywhere_and_imports_nothing_heavy():
    code = ("import sys; from eval_suite.cli import build_parser; p = build_parser(); text = p.format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'captum') if m in sys.modules)); "
            "print(len(text.splitlines()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    loaded, lines = out.splitlines()
    assert loaded == "[]"
    from eval_suite.cli import build_parser

    parser = build_parser()
    titles = [group.title for group in parser._action_groups]
    for key in ("data", "model", "measures", "statistics", "output"):
        assert any(title.startswith(key) for title in titles), (key, titles)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert all(a.help and a.help.strip() for a in options), [a.option_strings for a in options if not a.help]
    assert all("_" not in flag for a in options for flag in a.option_strings)
    assert all(len(a.option_strings) == 1 for a in options)  # one spelling each
    assert "--text-column" in parser.format_help() and int(lines) < 153


def test_every_measure_parameter_is_a_flag_and_reaches_its_measure(tmp_path):
    from eval_suite.cli import build_parser
    from eval_suite.settings import request_from_args

    args = build_parser().parse_args(["ckpt", "--ig-steps", "5", "--fractions", "0.2,0.4", "--input-to-repr",
                                      "jacobian", "--captum-steps", "3", "--seed", "4", "--ig-tolerance", "none",
                                      "--output-dir", str(tmp_path / "out")])
    request = request_from_args(args)
    measure = request.measure
    assert measure.params_of("integrated_gradients").ig_steps == 5 and measure.ig_tolerance is None
    assert measure.params_of("faithfulness").fractions == (0.2, 0.4)
    assert measure.params_of("input_to_repr").input_to_repr == "jacobian"
    assert measure.params_of("captum:DeepLift").captum_steps == 3
    assert request.aggregation.bootstrap_seed == 4 and measure.seed == 4
    recorded = measure.to_dict()
    assert recorded["ig_steps"] == 5 and recorded["fractions"] == [0.2, 0.4] and recorded["captum_steps"] == 3


def test_bad_captum_names_are_one_line_errors():
    from eval_suite.errors import EvalError
    from eval_suite.registry import resolve_measures

    for spec, fragment in (("captum:Nothing", "not a primary attribution"),
                           ("captum:LayerConductance", "not a primary attribution"),
                           ("captum:Saliency(Saliency)", "only NoiseTunnel wraps"), ("captum:", "unknown")):
        with pytest.raises(EvalError) as caught:
            resolve_measures(spec)
        assert fragment in str(caught.value) and "\n" not in str(caught.value), spec


# ----------------------------------------------------------------------------------------------- cost model


def test_the_cost_model_counts_the_pooling_layer():
    from transformers import AutoConfig

    import hf_sparse_attn  # noqa: F401  (registers the model types)
    from eval_suite.cost import BatchShape, ModelShape, stage_costs
    from eval_suite.settings import MeasureConfig

    config = AutoConfig.for_model("attn_pooling_roberta", vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=1, intermediate_size=32, max_position_embeddings=12)
    shape = ModelShape.of(config)
    assert shape.n_layers == config.num_attention_layers == 3
    batch = BatchShape((8, 6), (6, 4))
    rollout = stage_costs(batch, shape, MeasureConfig.of(measures="rollout"), ("rollout",))["rollout"]
    assert rollout.calls == 3


# ----------------------------------------------------------------------------------------------- captum


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from eval_suite.model_access import load_classifier

    return load_classifier(make_tiny_checkpoint(tmp_path_factory.mktemp("captum_tiny"), attn_impl="entmax15"))


def test_captum_integrated_gradients_agrees_with_the_suites(tiny):
    pytest.importorskip("captum")
    from eval_suite.attribution import IntegratedGradients
    from eval_suite.batch_rows import BatchState
    from eval_suite.batching import collate, encode_texts
    from eval_suite.forward_context import ForwardContext
    from eval_suite.methods.captum_adapter import _attribute
    from eval_suite.settings import MeasureConfig

    texts = ["w1 w2 w3 w4 w5 w6", "w9 w8 w7", "w10 w11 w12 w13 w14 w15 w16 w17", "w40 w41 w42 w43"]
    encodings, _ = encode_texts(tiny.tokenizer, texts, tiny.max_length)
    ctx = ForwardContext(tiny, collate(encodings, tiny.tokenizer.pad_token_id), max_grad_tokens=64)
    ours = IntegratedGradients(steps=12, baseline="pad")
    signed, gap, _ = ours.attribute(ctx)
    config = MeasureConfig.of(captum_steps=12, max_grad_tokens=64)
    theirs, delta = _attribute("captum:IntegratedGradients", ctx, config, BatchState([0, 1, 2, 3]))
    torch.testing.assert_close(theirs, signed.abs() * ctx.batch.attention_mask, rtol=1e-4, atol=1e-6)
    # captum's convergence delta is the suite's completeness gap before its division
    change = (ctx.base.target.detach() - ours.baseline_probability(ctx)).abs().clamp_min(ours.GAP_FLOOR)
    torch.testing.assert_close(delta, gap * change, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def captum_run(tmp_path_factory):
    pytest.importorskip("captum")
    from eval_suite.cli import main

    root = tmp_path_factory.mktemp("captum_run")
    checkpoint = make_checkpoint(root / "ckpt", attn_impl="sparsemax")
    out = root / "eval"
    assert main([str(checkpoint), "--dataset", "mr", "--split", "test", "--limit", "4", "--max-length", "16",
                 "--measures", "grad_norm," + ",".join(CAPTUM), "--captum-steps", "4", "--captum-samples", "2",
                 "--plot-examples", "1", "--output-dir", str(out), "--threads", "1"]) == 0
    return root, checkpoint, out


def test_captum_family_runs_end_to_end_and_every_output_shows_it(captum_run):
    root, checkpoint, out = captum_run
    results = json.loads((out / "results.json").read_text())
    assert results["input_methods"] == ["grad_norm", *sorted(CAPTUM)]
    for entry in results["per_layer_head"]:
        assert set(entry[HEADLINE]) == set(results["importance_methods"])
    for name in WITH_DELTA:  # the convergence delta of every method that reports one, and no other
        assert results[name]["convergence_delta"]["n"] == 4 and results[name]["convergence_delta"]["median"] >= 0
        assert any(line.startswith(f"{name}: median |convergence delta|") for line in results["summary"]["text"])
    assert all(name not in results for name in set(CAPTUM) - set(WITH_DELTA))
    with open(out / "per_layer_head.csv", newline="") as handle:
        columns = next(csv.reader(handle))
    assert all(f"{HEADLINE}.{name}.mean" in columns for name in CAPTUM)
    for name in CAPTUM:
        plot = out / "plots" / f"{HEADLINE}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        assert plot.read_bytes()[:4] == b"\x89PNG"
    examples = json.loads((out / "token_examples.json").read_text())
    assert all(set(CAPTUM) <= set(example["maps"]) for example in examples.values())
    from eval_suite.report import report_payload

    grid = report_payload(results, examples)["grid"]
    assert set(CAPTUM) <= set(next(m for m in grid["metrics"] if m["key"] == HEADLINE)["methods"])
    forecast = json.loads((out / "run_info.json").read_text())["forecast"]["stage_seconds"]
    assert set(CAPTUM) <= set(forecast)


def test_captum_methods_reach_the_card_and_compare(captum_run, capsys):
    from eval_suite.compare import main as compare_main
    from hub_cards.render import render_card

    root, checkpoint, out = captum_run
    carded = root / "carded"
    shutil.copytree(checkpoint, carded)
    card = render_card(carded, out / "results.json").read_text()
    for name in WITH_DELTA:
        assert f"{name}: median convergence delta" in card
    scores = (carded / "interpretability" / "scores.md").read_text()  # the per-head table's page
    assert "excess vs `captum:DeepLift`" in scores
    assert compare_main([str(out), str(out), "--output-dir", str(root / "cmp"), "--bootstrap-resamples", "20"]) == 0
    compared = json.loads((root / "cmp" / "compare.json").read_text())
    assert set(CAPTUM) <= set(compared["methods_compared"])
    assert {t["method"] for t in compared["tests"] if t["method"]} >= set(CAPTUM)
    np.testing.assert_array_equal([t["difference"] for t in compared["tests"]], 0.0)
