"""python -m eval_suite end to end on tiny checkpoints: outputs and their contract, determinism, resume, bad input
(one-line errors before any output), truncation, and a 2-process accelerate run equal to the 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eval_suite.cli import main
from tests.helpers.launch import cpu_launch_command
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    return {
        "root": root,
        "checkpoint": make_tiny_checkpoint(root / "ckpt"),
        "data": make_text_csv(root / "data.csv", n=40),
    }


def _args(ws, out, *extra):
    return [ws["checkpoint"], "--dataset", ws["data"], "--split", "train", "--limit", "12", "--batch-size", "5",
            "--ig-steps", "4", "--measures", "full", "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def first_run(workspace):
    out = workspace["root"] / "run1"
    assert main(_args(workspace, out)) == 0
    return out


def test_outputs_follow_the_contract(first_run, workspace):
    results = json.loads((first_run / "results.json").read_text())
    for key in ("checkpoint", "weights_fingerprint", "attn_impl", "sparse_attention", "dataset", "split", "n_examples",
                "accuracy", "macro_f1", "n_layers", "n_heads", "importance_methods", "per_layer_head", "per_layer",
                "summary", "plots", "config", "faithfulness"):
        assert key in results, key
    assert results["n_examples"] == 12 and results["attn_impl"] == "softmax" and results["split"] == "train"
    assert results["weights_fingerprint"].startswith("sha256:")
    assert 0 <= results["accuracy"] <= 1 and 0 <= results["macro_f1"] <= 1
    methods = results["importance_methods"]
    assert {"grad_norm", "grad_x_input", "integrated_gradients", "loo", "repr_grad_norm", "repr_loo"} <= set(methods)
    pairs = {(e["layer"], e["head"]) for e in results["per_layer_head"]}
    assert pairs == {(layer, head) for layer in range(2) for head in range(4)}
    for entry in results["per_layer_head"]:
        assert 0 <= entry["attention_sparsity"]["mean"] <= 1 and 0 <= entry["attention_entropy"]["mean"] <= 1
        for method in methods:
            tau = entry["kendall_tau_b"][method]
            assert -1 <= tau["mean"] <= 1 and tau["std"] >= 0 and tau["n"] <= 12
        assert set(entry["rollout"]["kendall_tau_b"]) == {"grad_norm", "grad_x_input", "integrated_gradients", "loo"}
    for layer in results["per_layer"]:
        assert 0 <= layer["input_to_repr_entropy"]["mean"] <= 1 and 0 <= layer["coindexed_share"]["mean"] <= 1
    assert results["per_layer"][0]["coindexed_share"]["mean"] == pytest.approx(1.0)  # embeddings: x_p only
    faith = results["faithfulness"]["rankings"]
    assert {"attention_layer_0", "attention_layer_1", "rollout", "grad_norm", "loo", "random"} <= set(faith)
    assert len(faith["loo"]["comprehensiveness_per_fraction"]) == 5
    assert isinstance(results["summary"]["text"], list) and results["summary"]["agreement"]["grad_norm"]["kendall_tau_b"]["mean"] is not None

    table = (first_run / "per_layer_head.csv").read_text().splitlines()
    assert len(table) == 1 + 8 and table[0].startswith("layer,head,n_examples,defined")
    assert len(results["plots"]) == 2 * len(methods) + 2 + 5 + 3  # + one per context-mixing method
    for rel in results["plots"]:
        assert (first_run / rel).read_bytes()[:8] == PNG_MAGIC
    examples = json.loads((first_run / "token_examples.json").read_text())
    assert len(examples) == 3
    assert all(len(v["tokens"]) == len(v["maps"]["grad_norm"]) for v in examples.values())


def test_hub_cards_accepts_the_results(first_run):
    hub_results = pytest.importorskip("hub_cards.results")
    loaded = hub_results.load_results(first_run / "results.json")
    assert hub_results.card_scores(loaded).last_layer == 1


def test_same_seed_same_bytes_and_resume_recomputes_only_missing_batches(first_run, workspace):
    out = workspace["root"] / "run2"
    assert main(_args(workspace, out)) == 0
    assert (out / "results.json").read_bytes() == (first_run / "results.json").read_bytes()

    shards = sorted((out / "rows").glob("batch_*.npz"))
    assert len(shards) >= 3  # 12 examples, batches of at most 5
    with np.load(shards[1]) as rows:
        lost = len(rows["example.index"])
    shards[1].unlink()
    assert main(_args(workspace, out, "--resume")) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["examples_measured_this_run"] == lost
    assert (out / "results.json").read_bytes() == (first_run / "results.json").read_bytes()

    # Different settings must not mix with stored rows.
    assert main(_args(workspace, out, "--resume", "--ig-steps", "5")) == 2


def test_variant_settings_in_one_run(workspace, first_run, capsys):
    """Another seed, mean-query attention, truncation, no per-layer faithfulness, and a sparse override together."""
    pytest.importorskip("hf_sparse_attn")
    out = workspace["root"] / "variant"
    capsys.readouterr()
    assert main(_args(workspace, out, "--seed", "1", "--attention-query", "mean", "--max-length", "6",
                      "--faithfulness-attention", "none", "--attn-impl", "sparsemax", "--plot-examples", "0")) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["attention_query"] == "mean" and len(results["plots"]) == 2 * 6 + 2 + 5
    assert results["attn_impl"] == "sparsemax" and results["sparse_attention"]["attn_impl"] == "sparsemax"
    assert results["summary"]["attention_sparsity"]["mean"] > 0
    assert "attention_layer_0" not in results["faithfulness"]["rankings"]
    n = results["config"]["n_truncated"]
    assert n > 0 and f"truncated {n} of 12 texts to 6 tokens" in printed
    a = np.load(first_run / "rows" / "batch_00000.npz")
    b = np.load(out / "rows" / "batch_00000.npz")
    assert set(a["example.index"]) != set(b["example.index"])
    assert b["example.n_tokens"].max() <= 6


def _run_bad(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ws, a: a.__setitem__(a.index("--limit") + 1, "0"), "--limit must be a positive"),
        (lambda ws, a: a.__setitem__(a.index("--dataset") + 1, "no_such_corpus_xyz"), "no_such_corpus_xyz"),
        (lambda ws, a: a.extend(["--text-column", "sentence"]), "sentence"),
        (lambda ws, a: a.__setitem__(a.index("--split") + 1, "dev"), "no split 'dev'"),
        (lambda ws, a: a.__setitem__(a.index("--dataset") + 1, ws["three_class"]), "outside the model's 2 classes"),
        (lambda ws, a: a.__setitem__(0, ws["bare"]), "not a trained sequence classifier"),
        (lambda ws, a: a.__setitem__(0, ws["mpnet"]), "AttentionInterface"),
        (lambda ws, a: a.__setitem__(0, str(ws["root"] / "missing")), "cannot read a transformers config"),
    ],
)
def test_bad_input_is_one_line_before_any_output(workspace, capsys, monkeypatch, change, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ws = workspace
    if "three_class" not in ws:
        ws["three_class"] = make_text_csv(ws["root"] / "three.csv", n=30, n_classes=3)
        ws["bare"] = make_tiny_checkpoint(ws["root"] / "bare", with_head=False)
        ws["mpnet"] = _save_mpnet(ws["root"] / "mpnet")
    out = ws["root"] / "bad_out"
    argv = _args(ws, out)
    change(ws, argv)
    code, err = _run_bad(capsys, argv)
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def _save_mpnet(folder):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    config = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37, num_labels=2, max_position_embeddings=64)
    MPNetForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_two_processes_give_the_single_process_results(first_run, workspace):
    out = workspace["root"] / "two_procs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    # eval_suite's --cpu puts the two torchrun processes on gloo (see tests/helpers/launch.py).
    command = cpu_launch_command("eval_suite", [*_args(workspace, out), "--cpu"])
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["processes"] == 2
    single = json.loads((first_run / "results.json").read_text())
    double = json.loads((out / "results.json").read_text())
    _assert_close(single, double)


def _assert_close(a, b, path="results"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, abs=1e-6), path
    else:
        assert a == b, path


def test_no_plots_writes_no_png_says_so_and_a_card_still_renders(workspace, tmp_path):
    """--no-plots: results, CSV and report complete, no plots/ folder, the report names the skip, and the model card
    draws its own heatmaps from results.json."""
    render = pytest.importorskip("hub_cards.render")
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main([checkpoint, "--dataset", workspace["data"], "--split", "train", "--limit", "6", "--measures", "quick",
                 "--output-dir", str(out), "--no-plots"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["plots"] == [] and results["config"]["no_plots"] is True and not (out / "plots").exists()
    assert (out / "per_layer_head.csv").is_file()
    assert "skipped (--no-plots)" in (out / "report.html").read_text()
    render.render_card(checkpoint, out / "results.json")
    images = sorted(p for p in Path(checkpoint).rglob("*.png"))
    assert images and all(p.read_bytes()[:8] == PNG_MAGIC for p in images)
    pages = "".join(page.read_text() for page in Path(checkpoint).rglob("*.md"))  # the card and its pages
    assert all(f"({p.name})" in pages or f"/{p.name})" in pages for p in images)
