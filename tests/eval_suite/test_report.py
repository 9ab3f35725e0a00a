"""report.html: its data (every statistic with its n, interval and reason), a page that needs no network, one
written by every evaluation, and the page itself in a real headless Chromium: no console errors, one cell per
layer x head, numbers on hover, the token view on click, a screenshot that is not blank, and its load time at
12 layers x 12 heads x 100 examples."""

from __future__ import annotations

import io
import json
import re
import statistics
from pathlib import Path

import pytest

from eval_suite.errors import EvalError
from eval_suite.report import (GRID_METRICS, compare_payload, grid_payload, read_fingerprint,
                               statistic, write_compare_report, write_report)
from tests.helpers.browser import browser_expected, console_errors, headless_chromium, missing_browser, needs_browser
from tests.helpers.report_data import SPECIAL_REASON, embedded, full_results, token_examples, undefined_heads
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint



# ----------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("value, entry, key, expected", [
    ({"mean": 0.25, "std": 0.1, "n": 40, "ci95": [0.2, 0.3], "defined": True, "reason": None}, None, None,
     [0.25, 0.1, 40, 0.2, 0.3, True, None]),
    ({"mean": 0.25, "std": 0.1, "n": 40}, None, None, [0.25, 0.1, 40, None, None, True, None]),
    ({"mean": None, "std": None, "n": 0, "ci95": None, "defined": False, "reason": "all attention on special tokens"},
     None, None, [None, None, 0, None, None, False, "all attention on special tokens"]),
    ({"mean": 0.5, "n": 3, "defined": False, "reason": "defined in 3 of 40 examples (minimum 10)"}, None, None,
     [0.5, None, 3, None, None, False, "defined in 3 of 40 examples (minimum 10)"]),
    ({"mean": None, "std": None, "n": 0}, None, None, [None, None, 0, None, None, False, "defined in 0 examples"]),
    (0.123456789, {"sparsity_std": 0.05, "n_defined": 12}, "sparsity", [0.123456789, 0.05, 12, None, None, True, None]),
    (None, {"n_defined": 0}, "attention_entropy", [None, None, 0, None, None, False, "defined in 0 examples"]),
])
def test_every_statistic_keeps_its_n_interval_and_reason(value, entry, key, expected):
    assert statistic(value, entry, key) == expected


def test_grid_has_each_present_metric_for_every_head_with_undefined_heads_and_reasons():
    results = full_results(3, 4, 40)
    grid = grid_payload(results)
    keys = [m["key"] for m in grid["metrics"]]
    assert keys == [m.key for m in GRID_METRICS if m.key != "support_size"]  # support_size: not in this file
    undefined = undefined_heads(3, 4)
    for metric in grid["metrics"]:
        for method, series in grid["values"][metric["key"]].items():
            assert len(series) == 12
            for i, s in enumerate(series):
                layer, head = divmod(i, 4)
                entry = results["per_layer_head"][i]
                stat = entry[metric["key"]][method] if method else entry[metric["key"]]
                assert s[2] == stat["n"] and s[5] == stat["defined"]
                if not s[5]:
                    assert (layer, head) in undefined and s[6] == SPECIAL_REASON.format(n=40)
                else:
                    assert s[0] == pytest.approx(stat["mean"], rel=1e-3) and s[3] == pytest.approx(stat["ci95"][0], rel=1e-3)
    tau = next(m for m in grid["metrics"] if m["key"] == "kendall_tau_b")
    assert tau["methods"] == results["importance_methods"] and tau["scale"] == "diverging"


def test_results_written_before_the_statistics_dicts_still_give_a_grid():
    results = full_results(2, 2, 10)
    for entry in results["per_layer_head"]:
        entry["sparsity"] = entry.pop("attention_sparsity")["mean"]
        entry["sparsity_std"] = 0.1
        entry["n_defined"] = 10
        del entry["kendall_tau_b_excess"]
    grid = grid_payload(results)
    keys = [m["key"] for m in grid["metrics"]]
    assert "attention_sparsity" in keys and "kendall_tau_b_excess" not in keys
    assert grid["values"]["attention_sparsity"][""][0][1:3] == [0.1, 10]


def test_incomplete_per_layer_head_is_refused():
    results = full_results(2, 2, 10)
    results["per_layer_head"].pop()
    with pytest.raises(EvalError, match="3 per_layer_head entries for 2 x 2 heads"):
        grid_payload(results)


def test_the_page_needs_no_network_and_tokens_cannot_break_out_of_its_script(tmp_path):
    results = full_results(2, 3, 10)
    examples = token_examples(2, 3, 2)
    hostile = "</script><script>alert(1)</script>"
    examples["0"]["tokens"][0] = hostile
    path = write_report(tmp_path, results, examples)
    page = path.read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data block's and the script's, nothing a token brought
    assert not re.search(r"<(link|img|iframe)\b", page) and not re.search(r"\b(src|href)\s*=", page)
    assert "fetch(" not in page and "XMLHttpRequest" not in page and "import(" not in page
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"]  # a namespace, never loaded
    data = embedded(path)
    assert data["examples"][0]["tokens"][0] == hostile
    assert read_fingerprint(path) == results["weights_fingerprint"]


def test_compare_needs_the_same_heads_and_says_what_is_not_like_for_like():
    a, b = full_results(2, 3, 10), full_results(2, 3, 12, seed=1, attn_impl="softmax")
    payload = compare_payload(a, b, [{"layer": 1, "head": 2, "metric": "kendall_tau_b", "method": "loo",
                                      "difference": 0.2, "ci95": [0.1, 0.3], "p_value": 0.001, "significant": True}])
    assert payload["names"] == ["entmax15", "softmax"]
    assert payload["warnings"] == ["n_examples differs: 10 vs 12"]
    assert payload["differences"][0]["significant"] is True
    with pytest.raises(EvalError, match="cannot compare 2 x 3 heads with 3 x 3"):
        compare_payload(a, full_results(3, 3, 10))


# ----------------------------------------------------------------------------------------------- every evaluation


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    pytest.importorskip("hf_sparse_attn")
    from eval_suite.cli import main

    root = tmp_path_factory.mktemp("report_eval")
    checkpoint = make_tiny_checkpoint(root / "ckpt", attn_impl="sparsemax")
    data = make_text_csv(root / "data.csv", n=30)
    out = root / "eval"
    assert main([checkpoint, "--dataset", data, "--split", "train", "--limit", "12", "--batch-size", "6",
                 "--ig-steps", "2", "--plot-examples", "4", "--output-dir", str(out)]) == 0
    return out


def test_every_evaluation_writes_its_report(evaluated):
    results = json.loads((evaluated / "results.json").read_text())
    stored = json.loads((evaluated / "token_examples.json").read_text())
    data = embedded(evaluated / "report.html")
    assert data["meta"]["weights_fingerprint"] == results["weights_fingerprint"]
    assert read_fingerprint(evaluated / "report.html") == results["weights_fingerprint"]
    n = results["n_layers"] * results["n_heads"]
    for metric in data["grid"]["metrics"]:
        for series in data["grid"]["values"][metric["key"]].values():
            assert len(series) == n
    tau = data["grid"]["values"]["kendall_tau_b"]["grad_norm"]
    for entry in results["per_layer_head"]:
        s = tau[entry["layer"] * results["n_heads"] + entry["head"]]
        recorded = entry["kendall_tau_b"]["grad_norm"]
        assert s[2] == recorded["n"]
        assert (s[0] is None) == (recorded["mean"] is None)
        if s[0] is not None:
            assert s[0] == pytest.approx(recorded["mean"], rel=1e-3, abs=1e-4)
    assert [e["index"] for e in data["examples"]] == sorted(int(k) for k in stored)
    for example in data["examples"]:
        source = stored[str(example["index"])]
        assert example["tokens"] == source["tokens"] and example["probability"] == pytest.approx(source["probability"], rel=1e-3)
        for layer, heads in enumerate(source["heads"]):
            for head, values in enumerate(heads):
                shown = example["heads"][layer][head]
                assert [v is None for v in shown] == [v is None for v in values]
                assert [v == 0 for v in shown] == [v == 0 for v in values]  # exact zeros stay exact


# ----------------------------------------------------------------------------------------------- in Chromium


def _not_blank(png: bytes) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    non_white = float((pixels.min(axis=1) < 235).mean())
    assert non_white > 0.03, f"screenshot nearly blank ({non_white:.1%} non-white pixels)"
    assert len(np.unique(pixels, axis=0)) > 40, "screenshot has almost no colours"


def _open(driver, path):
    driver.get(Path(path).resolve().as_uri())
    assert driver.execute_script("return document.documentElement.dataset.ready") == "1"


def _hover(driver, element):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(element).perform()
    return driver.find_element("id", "tooltip").text


@needs_browser
def test_report_of_a_real_evaluation_in_chromium(evaluated, tmp_path):
    results = json.loads((evaluated / "results.json").read_text())
    stored = json.loads((evaluated / "token_examples.json").read_text())
    with headless_chromium() as driver:
        _open(driver, evaluated / "report.html")
        cells = driver.find_elements("css selector", "#grids .cell")
        assert len(cells) == results["n_layers"] * results["n_heads"]
        metric = driver.find_element("id", "metric-select")
        assert metric.get_attribute("value") == "kendall_tau_b_excess"  # the headline comes first
        entry = next(e for e in results["per_layer_head"]
                     if e["kendall_tau_b_excess"]["grad_norm"]["mean"] is not None)
        cell = driver.find_element("css selector",
                                   f'#grids .cell[data-layer="{entry["layer"]}"][data-head="{entry["head"]}"]')
        tip = _hover(driver, cell)
        stat = entry["kendall_tau_b_excess"]["grad_norm"]
        assert f"layer {entry['layer']}, head {entry['head']}" in tip
        assert f"mean {stat['mean']:.3f}" in tip and f"n = {stat['n']}" in tip and f"std {stat['std']:.3f}" in tip
        cell.click()
        examples = driver.find_elements("css selector", "#token-view .example")
        assert len(examples) == len(stored)
        first = stored[str(min(int(k) for k in stored))]
        heading = examples[0].find_element("css selector", "h3").text
        assert f"p = {first['probability']:.2f}" in heading
        rows = examples[0].find_elements("css selector", ".maprow")
        assert rows[0].find_element("css selector", ".name").text == f"attention L{entry['layer']} H{entry['head']}"
        assert len(rows[0].find_elements("css selector", ".tok")) == len(first["tokens"])
        names = [r.find_element("css selector", ".name").text for r in rows]
        assert {"grad_norm", "loo", "rollout (whole network)"} <= set(names)
        assert any(n.startswith("projected L") for n in names)
        _not_blank(driver.get_screenshot_as_png())
        assert console_errors(driver) == []


def _load_timing(driver, path, repeats=3) -> dict:
    timings = []
    for _ in range(repeats):
        _open(driver, path)
        timings.append(driver.execute_script(
            "var n = performance.getEntriesByType('navigation')[0];"
            "return {load: n.loadEventEnd - n.startTime, ready: window.reportTiming.readyMs};"))
    return {"first_load_ms": timings[0]["load"], "median_load_ms": statistics.median(t["load"] for t in timings),
            "median_ready_ms": statistics.median(t["ready"] for t in timings)}


@needs_browser
def test_12_layers_12_heads_100_examples_in_chromium(tmp_path, capsys):
    """Grid, hover, undefined cells, token view with more examples on demand; prints the page's load time."""
    results, examples = full_results(12, 12, 100), token_examples(12, 12, 100)
    path = write_report(tmp_path, results, examples)
    undefined = undefined_heads(12, 12)
    with headless_chromium() as driver:
        timing = _load_timing(driver, path)
        with capsys.disabled():
            print(f"\nreport.html 12 x 12 heads x 100 examples: {path.stat().st_size / 2 ** 20:.2f} MiB; "
                  f"load event {timing['first_load_ms']:.0f} ms first, {timing['median_load_ms']:.0f} ms median of 3; "
                  f"grid drawn {timing['median_ready_ms']:.0f} ms after navigation start (median)")
        cells = driver.find_elements("css selector", "#grids .cell")
        assert len(cells) == 144
        assert driver.find_element("id", "metric-select").get_attribute("value") == "kendall_tau_b_excess"
        hatched = driver.find_elements("css selector", "#grids .cell.undefined")
        assert {(int(c.get_attribute("data-layer")), int(c.get_attribute("data-head"))) for c in hatched} == undefined
        assert all(c.text == "n/a" for c in hatched)
        assert "undefined: " + SPECIAL_REASON.format(n=100) in _hover(driver, hatched[0])
        entry = results["per_layer_head"][1]
        stat = entry["kendall_tau_b_excess"]["grad_norm"]
        tip = _hover(driver, cells[1])
        assert f"95% CI [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]" in tip and "n = 100" in tip
        driver.save_screenshot(str(tmp_path / "grid.png"))
        _not_blank((tmp_path / "grid.png").read_bytes())

        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("id", "metric-select")).select_by_value("attention_sparsity")
        assert driver.find_elements("css selector", "#grids .cell.undefined") == []
        assert not driver.find_element("id", "method-label").is_displayed()  # one value per head, no method

        cells = driver.find_elements("css selector", "#grids .cell")
        cells[5 * 12 + 7].click()
        assert driver.find_element("id", "token-title").text == "Token view: layer 5, head 7"
        assert len(driver.find_elements("css selector", "#token-view .example")) == 10
        driver.find_element("id", "more-examples").click()
        shown = driver.find_elements("css selector", "#token-view .example")
        assert len(shown) == 20
        first = examples["0"]
        row = shown[0].find_element("css selector", ".maprow.primary")
        spans = row.find_elements("css selector", ".tok")
        assert [s.text for s in spans] == first["tokens"]
        zeros = [i for i, v in enumerate(first["heads"][5][7]) if v == 0]
        assert [i for i, s in enumerate(spans) if "zero" in s.get_attribute("class").split()] == zeros
        assert "label " + ["rotten", "fresh"][first["label"]] in shown[0].find_element("css selector", "h3").text
        driver.save_screenshot(str(tmp_path / "tokens.png"))
        _not_blank((tmp_path / "tokens.png").read_bytes())
        assert console_errors(driver) == []


@needs_browser
def test_compare_view_in_chromium(tmp_path):
    a, b = full_results(4, 6, 50), full_results(4, 6, 50, seed=3, attn_impl="softmax")
    differences = [{"layer": l, "head": h, "metric": "kendall_tau_b_excess", "method": "grad_norm",
                    "difference": 0.1 * h, "ci95": [0.1 * h - 0.05, 0.1 * h + 0.05], "p_value": 0.01 * (h + 1),
                    "significant": h % 2 == 0} for l in range(4) for h in range(6)]
    path = write_compare_report(tmp_path / "compare.html", a, b, differences)
    with headless_chromium() as driver:
        _open(driver, path)
        blocks = driver.find_elements("css selector", "#grids .grid")
        assert len(blocks) == 3 and all(len(g.find_elements("css selector", ".cell")) == 24 for g in blocks)
        marked = driver.find_elements("css selector", '#grids .cell.significant[data-grid="d"]')
        assert len(marked) == sum(d["significant"] for d in differences)
        cell = driver.find_element("css selector", '#grids .cell[data-grid="d"][data-layer="2"][data-head="4"]')
        tip = _hover(driver, cell)
        assert "difference 0.400, 95% CI [0.350, 0.450]" in tip and "p = 0.050 · significant" in tip
        rows = driver.find_elements("css selector", "table.diffs tr")
        assert len(rows) == 1 + len(marked)
        _not_blank(driver.get_screenshot_as_png())
        assert console_errors(driver) == []


def test_same_inputs_give_the_same_bytes(tmp_path):
    results, examples = full_results(3, 3, 20), token_examples(3, 3, 4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_report(tmp_path / "a", results, examples).read_bytes()
    assert write_report(tmp_path / "b", results, examples).read_bytes() == first and len(first) > 10_000


def test_browser_tests_fail_rather_than_skip_where_ci_expects_a_browser(monkeypatch):
    def browser_test():
        pass

    monkeypatch.setenv("PATH", "")  # no Chromium, no chromedriver
    assert missing_browser() is not None
    for value, expected in (("true", True), ("TRUE", True), ("", False), ("false", False)):
        monkeypatch.setenv("CI", value)
        assert browser_expected() is expected
        marks = [m for m in getattr(needs_browser(browser_test), "pytestmark", []) if m.name == "skipif"]
        browser_test.pytestmark = []
        assert bool(marks[0].args[0]) is not expected  # the skip condition holds only outside CI
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true expects one: no Chromium on PATH"):
        with headless_chromium():
            pass
