"""python -m eval_suite.compare: paired tests on the same examples; a checkpoint with one head made uniform differs
in that head and in no other head of its layer, a sparse mapping against softmax on the same weights shows its
sparsity, and unlike evaluations are refused."""

from __future__ import annotations

import json

import pytest

from eval_suite.cli import main as eval_main
from eval_suite.compare import main as compare_main
from tests.helpers.tiny_models import make_head_uniform, make_text_csv, make_tiny_checkpoint


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    checkpoint = make_tiny_checkpoint(root / "ckpt")
    uniform = make_head_uniform(checkpoint, root / "ckpt_uniform")  # layer 0, head 0
    data = make_text_csv(root / "data.csv", n=150)
    common = [checkpoint, "--dataset", data, "--split", "train", "--limit", "40", "--measures", "quick",
              "--plot-examples", "0", "--faithfulness-attention", "none"]
    assert eval_main([*common, "--output-dir", str(root / "softmax")]) == 0
    assert eval_main([*common, "--attn-impl", "sparsemax", "--output-dir", str(root / "sparsemax")]) == 0
    assert eval_main([uniform, *common[1:], "--output-dir", str(root / "uniform_head")]) == 0
    assert eval_main([*common[:6], "30", *common[7:], "--output-dir", str(root / "fewer")]) == 0
    return root


def test_a_head_made_uniform_differs_there_and_nowhere_else_in_its_layer(two_runs, capsys):
    out = two_runs / "uniform_vs_original"
    assert compare_main([str(two_runs / "softmax"), str(two_runs / "uniform_head"), "--output-dir", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["n_examples"] == 40 and result["n_tests"] > 0
    layer0 = {(t["metric"], t["head"]): t for t in result["tests"] if t["layer"] == 0 and t["method"] is None}
    changed = layer0["attention_entropy", 0]  # uniform over the content tokens: normalised entropy exactly 1
    assert changed["b"] == pytest.approx(1.0, abs=1e-6) and changed["a"] < 0.99
    assert changed["significant"] and changed["ci95"][0] > 0 and changed["difference"] == pytest.approx(
        changed["b"] - changed["a"])
    assert layer0["attention_special_mass", 0]["significant"]
    for head in (1, 2, 3):  # the same weights on the same inputs: nothing differs, nothing is significant
        for summary in ("attention_entropy", "attention_sparsity", "attention_special_mass"):
            same = layer0[summary, head]
            assert same["difference"] == 0 and same["p_value"] == 1.0 and not same["significant"], (summary, head)
    # Layer 1 reads layer 0's output, so its heads change too.
    assert any(t["significant"] for t in result["tests"] if t["layer"] == 1)
    assert f"{result['n_significant']} of {result['n_tests']} differences significant" in capsys.readouterr().out


def test_sparsemax_against_softmax_on_the_same_weights_differs_in_sparsity(two_runs, capsys):
    out = two_runs / "sparse_vs_soft"
    assert compare_main([str(two_runs / "softmax"), str(two_runs / "sparsemax"), "--output-dir", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    sparsity = [t for t in result["tests"] if t["metric"] == "attention_sparsity"]
    assert sparsity and all(t["b"] >= t["a"] for t in sparsity)
    assert sum(t["significant"] for t in sparsity) >= len(sparsity) // 2
    significant = [t for t in result["tests"] if t["significant"]]
    assert all(t["ci95"][0] <= t["difference"] <= t["ci95"][1] for t in significant)
    assert all(t["p_adjusted"] >= t["p_value"] for t in result["tests"])
    assert "significant at FDR 0.05" in capsys.readouterr().out


def test_evaluations_of_different_examples_are_refused(two_runs, capsys):
    out = two_runs / "never"
    assert compare_main([str(two_runs / "softmax"), str(two_runs / "fewer"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different examples" in err and err.count("\n") == 1
    assert not out.exists()
