"""evaluate_checkpoint(): an evaluation from Python that a notebook shows inline (the report's grid and token view,
no network, no widgets), and files written with the permissions of any other new file."""

from __future__ import annotations

import html
import json
import os
import re
import stat
import sys

import pytest

from eval_suite import Evaluation, EvalError, evaluate_checkpoint, load_evaluation
from tests.helpers.browser import console_errors, headless_chromium, missing_browser
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint

NO_BROWSER = missing_browser()


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook")
    checkpoint = make_tiny_checkpoint(root / "ckpt", attn_impl="sparsemax")
    data = make_text_csv(root / "data.csv", n=30)
    previous = os.umask(0o022)
    try:
        result = evaluate_checkpoint(checkpoint, data, split="train", limit=8, measures="quick", plot_examples=2,
                                     output_dir=root / "eval", seed=3)
    finally:
        os.umask(previous)
    return result


def test_evaluate_checkpoint_returns_what_the_command_writes(evaluation):
    assert isinstance(evaluation, Evaluation)
    on_disk = json.loads((evaluation.output_dir / "results.json").read_text())
    assert evaluation.results == on_disk and evaluation["n_examples"] == 8
    assert on_disk["config"]["seed"] == 3 and on_disk["config"]["aggregation"]["bootstrap_seed"] == 3
    assert on_disk["measures"] == ["grad_norm", "grad_x_input", "repr_grad_norm", "rollout"]
    assert evaluation.summary == on_disk["summary"]["text"] and len(evaluation.token_examples) == 2
    assert "8 examples, accuracy" in repr(evaluation)
    assert load_evaluation(evaluation.output_dir) == evaluation


def test_every_output_file_gets_the_umask_mode_not_0600(evaluation):
    files = [p for p in evaluation.output_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.name for p in files} >= {"results.json", "report.html", "per_layer_head.csv", "token_examples.json"}
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_the_inline_view_is_report_html_in_a_sandboxed_frame(evaluation):
    shown = evaluation._repr_html_()
    assert shown.startswith("<iframe") and 'sandbox="allow-scripts"' in shown
    page = html.unescape(re.search(r'srcdoc="([^"]*)"', shown).group(1))
    assert page == (evaluation.output_dir / "report.html").read_text()  # the same grid and token view
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing to fetch
    assert "ipywidgets" not in sys.modules


def test_an_unknown_setting_is_a_one_line_error(tmp_path):
    with pytest.raises(EvalError, match="unknown setting .*limt"):
        evaluate_checkpoint("unused", "mr", output_dir=tmp_path, limt=3)


@pytest.mark.skipif(NO_BROWSER is not None, reason=f"no headless browser: {NO_BROWSER}")
def test_the_inline_view_draws_the_grid_and_the_token_view_in_chromium(evaluation, tmp_path):
    notebook_page = tmp_path / "notebook.html"
    notebook_page.write_text(f"<!DOCTYPE html><html><body><h1>a notebook cell</h1>{evaluation._repr_html_()}"
                             "</body></html>", encoding="utf-8")
    results = evaluation.results
    with headless_chromium() as driver:
        driver.get(notebook_page.resolve().as_uri())
        driver.switch_to.frame(driver.find_element("css selector", "iframe"))
        assert driver.execute_script("return document.documentElement.dataset.ready") == "1"
        cells = driver.find_elements("css selector", "#grids .cell")
        assert len(cells) == results["n_layers"] * results["n_heads"]
        cells[results["n_heads"] + 1].click()  # layer 1, head 1
        assert driver.find_element("id", "token-title").text == "Token view: layer 1, head 1"
        examples = driver.find_elements("css selector", "#token-view .example")
        assert len(examples) == len(evaluation.token_examples)
        first = evaluation.token_examples[str(min(int(k) for k in evaluation.token_examples))]
        tokens = examples[0].find_elements("css selector", ".maprow")[0].find_elements("css selector", ".tok")
        assert [t.text for t in tokens] == first["tokens"]
        assert console_errors(driver) == []
