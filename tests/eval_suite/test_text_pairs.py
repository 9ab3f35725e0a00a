"""Evaluating sentence pairs (--text-pair-column): the model reads each pair as one sequence with its token types,
the second text's tokens are content tokens of every measure, and every output (token_examples.json, tokens_*.png,
report.html) holds both texts' tokens with the [SEP] boundary between them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval_suite import plots
from tests.helpers.browser import console_errors, headless_chromium, missing_browser
from tests.helpers.report_data import embedded
from tests.helpers.tiny_models import make_text_pair_file, make_tiny_checkpoint

NO_BROWSER = missing_browser()


def _evaluate(checkpoint, data, out, *extra):
    from eval_suite.cli import main

    assert main([str(checkpoint), "--dataset", str(data), "--split", "train", "--text-column", "premise",
                 "--text-pair-column", "hypothesis", "--measures", "quick,loo", "--ig-steps", "2",
                 "--output-dir", str(out), *extra]) == 0
    return (json.loads((out / "results.json").read_text()), json.loads((out / "token_examples.json").read_text()))


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    checkpoint = make_tiny_checkpoint(root / "ckpt", attn_impl="sparsemax")
    data = make_text_pair_file(root / "pairs.csv", n=30)
    out = root / "eval"
    results, stored = _evaluate(checkpoint, data, out, "--limit", "10", "--plot-examples", "3")
    return checkpoint, data, out, results, stored


def _split_rows(data, text_column="premise"):
    from hf_sparse_attn.data import load_text_classification

    return load_text_classification(str(data), text_column=text_column, text_pair_column="hypothesis")["train"]


def test_both_texts_are_content_tokens_of_every_output(tiny_pairs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_sparse_attn  # noqa: F401

    checkpoint, data, out, results, stored = tiny_pairs
    assert results["config"]["text_pair_column"] == "hypothesis" and len(stored) == 3
    split = _split_rows(data)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    for index, example in stored.items():
        row = split[int(index)]
        first, second = tokenizer.tokenize(row["text"]), tokenizer.tokenize(row["text_pair"])
        assert example["tokens"] == first + second
        assert example["segments"] == [0] * len(first) + [1] * len(second)
        # The model saw the pair as one sequence with token types 0 / 1: the same probability as a direct forward.
        encoded = tokenizer(row["text"], row["text_pair"], return_tensors="pt")
        assert encoded["token_type_ids"][0].tolist().count(1) == len(second) + 1
        with torch.no_grad():
            probabilities = model(**encoded).logits.softmax(-1)[0]
        assert example["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)
        for name in ("grad_norm", "loo", "attention layer 1 (head mean)"):
            values = example["maps"][name]
            assert len(values) == len(first) + len(second) and sum(values) == pytest.approx(1.0)
            assert any(v > 0 for v in values[len(first):]), name  # the second text gets importance too
    rows = {k: v for k, v in np.load(out / "rows" / "batch_00000.npz").items()}
    for position, index in enumerate(rows["example.index"]):
        row = split[int(index)]
        expected = len(tokenizer.tokenize(row["text"])) + len(tokenizer.tokenize(row["text_pair"]))
        assert rows["example.n_content"][position] == expected  # [CLS] and both [SEP] left out, nothing else


def test_the_token_plot_marks_the_boundary_between_the_texts(tiny_pairs, tmp_path, monkeypatch):
    *_, stored = tiny_pairs
    seen = []
    original = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: (seen.append(fig), original(fig, path, **kw)))
    index, example = next(iter(stored.items()))
    plots.token_plots({index: example}, tmp_path)
    ax = seen[0].axes[0]
    boundary = example["segments"].index(1)
    lines = [line for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
    assert [line.get_ydata()[0] for line in lines] == [boundary - 0.5]
    assert "line: the [SEP] between the texts" in ax.get_xlabel()
    colours = [label.get_color() for label in ax.get_yticklabels()]
    assert len(set(colours[:boundary])) == 1 and set(colours[boundary:]) == {plots.SECOND_TEXT_COLOR}


def test_the_report_holds_the_segments(tiny_pairs):
    *_, out, _, stored = tiny_pairs
    data = embedded(out / "report.html")
    for example in data["examples"]:
        assert example["segments"] == stored[str(example["index"])]["segments"]


@pytest.mark.skipif(NO_BROWSER is not None, reason=f"no headless browser: {NO_BROWSER}")
def test_the_report_token_view_shows_the_sep_boundary_in_chromium(tiny_pairs):
    *_, out, results, stored = tiny_pairs
    with headless_chromium() as driver:
        driver.get((out / "report.html").resolve().as_uri())
        assert driver.execute_script("return document.documentElement.dataset.ready") == "1"
        driver.find_element("css selector", '#grids .cell[data-layer="1"][data-head="0"]').click()
        example = driver.find_elements("css selector", "#token-view .example")[0]
        first = stored[str(min(int(k) for k in stored))]
        box = example.find_elements("css selector", ".maprow .tokens")[0]
        shown = [span.text for span in box.find_elements("css selector", "span")]
        boundary = first["segments"].index(1)
        assert shown == first["tokens"][:boundary] + ["[SEP]"] + first["tokens"][boundary:]
        assert console_errors(driver) == []


def test_pairs_with_minilm_from_a_jsonl_file(tmp_path, minilm_path):
    """The embedded MiniLM (a classifier head on it) on three pairs of real words from a .jsonl file."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = tmp_path / "minilm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).save_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.save_pretrained(checkpoint)
    words = ["the", "film", "was", "good", "bad", "plot", "a", "long", "dull", "gripping"]
    data = make_text_pair_file(tmp_path / "pairs.jsonl", n=12, words=words)
    results, stored = _evaluate(checkpoint, data, tmp_path / "eval", "--limit", "3", "--plot-examples", "2",
                                "--max-length", "32", "--measures", "grad_norm")
    assert results["n_examples"] == 3 and results["n_layers"] == 6
    split = _split_rows(data)
    for index, example in stored.items():
        row = split[int(index)]
        first, second = tokenizer.tokenize(row["text"]), tokenizer.tokenize(row["text_pair"])
        assert example["tokens"] == first + second
        assert example["segments"] == [0] * len(first) + [1] * len(second)
