"""What a Hub visitor sees: one screen with what the model is, how to load it, its accuracy with n, the headline
agreement with its interval and a link to the full report; the rest folded or in interpretability/scores.md.
And the metadata and numbers behind it: license, datasets only for a Hub dataset, no layer picked on the examples it
is reported on, and the excess-equals-raw explanation exactly where the null is 0.

One evaluation (module fixture) serves every test; each renders a copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hub_cards.cli import main as cli_main
from hub_cards.render import render_card
from hub_cards.sections import parse_sections
from tests.helpers.faults import assert_one_line_error, run_command
from tests.helpers.tiny_models import make_checkpoint

FIRST_SCREEN_LINES = 40  # docs/hub_cards.md states the same bound
NULL_IS_ZERO = "the shared-zeros null is exactly 0"


def _edit(path: Path, change) -> dict:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def _body(card_path: Path) -> str:
    return ModelCard.load(card_path).text


def _first_screen(body: str) -> str:
    """What the Hub shows before the first folded block."""
    return body.split("\n<details>", 1)[0]


def section_of(body: str, name: str) -> str:
    return body[slice(*parse_sections(body)[name])]


def _fmt_interval(stat: dict) -> str:
    return f"**{stat['mean']:.3f}** [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]"


def test_first_screen_holds_the_five_things_and_the_rest_is_folded(fresh):
    checkpoint, results_path = fresh
    final = _edit(checkpoint / "final_metrics.json", lambda d: d["test"].update(n_examples=1275))["test"]
    body = _body(render_card(checkpoint, results_path, repo_id="me/tiny-entmax15"))
    results = json.loads(results_path.read_text())
    first = _first_screen(body)

    assert len(first.strip().splitlines()) <= FIRST_SCREEN_LINES, first
    assert "text classifier" in first and "entmax15" in first  # what it is
    assert 'model_id = "me/tiny-entmax15"' in first and "from_pretrained(model_id" in first  # how to load it
    assert f"**{final['accuracy']:.3f}**" in first and "n = 1,275" in first  # accuracy with n ...
    accuracy_line = next(line for line in first.splitlines() if "Accuracy" in line)
    assert "[0.7" in accuracy_line and "95%" in accuracy_line  # ... and its interval
    headline = results["summary"]["agreement"]["grad_norm"]["kendall_tau_b_excess"]
    assert _fmt_interval(headline) in first and f"n = {headline['n']:,}" in first  # agreement with its interval
    assert "[report.html](report.html)" in first  # the full report

    sections = parse_sections(body)
    for name in ("attention", "per-head", "training", "evaluation", "citation"):
        start, end = sections[name]
        assert "<details>" in body[start:end], name
    assert body.count("![") == 0  # every image is in interpretability/scores.md
    scores = (checkpoint / "interpretability" / "scores.md").read_text()
    head_rows = [line for line in scores.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(head_rows) == results["n_layers"] * results["n_heads"]
    for rel in json.loads((checkpoint / "results.json").read_text())["plots"]:
        assert (checkpoint / rel).is_file() and f"]({rel.split('/', 1)[1]})" in scores
    assert "[interpretability/scores.md](interpretability/scores.md)" in body


def test_license_comes_from_the_base_model_card_or_the_flag(fresh, tmp_path, capsys):
    checkpoint, results_path = fresh
    card = ModelCard.load(render_card(checkpoint, results_path))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.license == "apache-2.0"  # what the base model's own card says

    code, err = run_command(cli_main, ["render", checkpoint, "--results", results_path, "--license", "mit"], capsys)
    assert code == 0, err
    assert ModelCard.load(checkpoint / "README.md").data.license == "mit"
    code, err = run_command(cli_main, ["render", checkpoint, "--license", "not a licence"], capsys)
    assert_one_line_error(code, err, "--license")

    unknown = make_checkpoint(tmp_path / "no_base", attn_impl="entmax15", training_files=False)
    assert ModelCard.load(render_card(unknown, None)).data.license is None  # unknown stays unstated


@pytest.mark.parametrize("dataset, hub_ids", [
    ("mr", None),  # the embedded re-split is not a Hub dataset
    ("reviews.csv (local file)", None),
    ("stanfordnlp/sst2", ["stanfordnlp/sst2"]),
    ("glue/sst2", ["nyu-mll/glue"]),
    ("movie reviews <b>2024</b>", None),  # not a Hub id at all
])
def test_datasets_metadata_only_for_a_hub_dataset_id(fresh, dataset, hub_ids):
    checkpoint, results_path = fresh
    _edit(results_path, lambda d: d.update(dataset=dataset))
    card = ModelCard.load(render_card(checkpoint, results_path))
    assert card.data.datasets == hub_ids
    if hub_ids is None and dataset != "mr":
        assert card.data.eval_results[0].dataset_type == "custom"


def test_no_layer_is_selected_on_the_examples_it_is_reported_on(fresh):
    checkpoint, results_path = fresh

    def make_layer_0_the_highest(data):
        data["per_layer"][0]["agreement"]["grad_norm"]["kendall_tau_b_excess"].update(mean=0.9, ci95=[0.8, 0.95])
        data["per_layer"][-1]["agreement"]["grad_norm"]["kendall_tau_b_excess"].update(mean=0.1, ci95=[0.0, 0.2])

    results = _edit(results_path, make_layer_0_the_highest)
    card = ModelCard.load(render_card(checkpoint, results_path))
    layers = {r.metric_type: (r.metric_args or {}).get("layer") for r in card.data.eval_results}
    assert set(layers.values()) - {None} == {results["n_layers"] - 1}  # the last layer, fixed in advance
    assert not any("best" in kind for kind in layers)
    assert "best layer" not in card.text.lower() and "agrees best" not in card.text
    assert "fixed in advance" in card.text


def test_excess_equals_raw_is_explained_exactly_when_the_null_is_zero(fresh):
    checkpoint, results_path = fresh
    results = json.loads(results_path.read_text())
    null = results["summary"]["agreement"]["grad_norm"]["kendall_tau_b_null"]
    assert null["mean"] == 0 and null["std"] == 0  # grad_norm has no exact zeros: the null is 0 on every value
    body = _body(render_card(checkpoint, results_path))
    assert NULL_IS_ZERO in _first_screen(body)
    assert f"on all {null['n']} values" in _first_screen(body)

    def a_null_of_005(block):
        block["kendall_tau_b_null"].update(mean=0.05, std=0.01, ci95=[0.04, 0.06])
        raw = block["kendall_tau_b"]
        block["kendall_tau_b_excess"].update(mean=raw["mean"] - 0.05,
                                             ci95=[raw["ci95"][0] - 0.05, raw["ci95"][1] - 0.05])

    _edit(results_path, lambda data: a_null_of_005(data["per_layer"][0]["agreement"]["grad_norm"]))
    per_layer = section_of(_body(render_card(checkpoint, results_path)), "per-head")
    assert f"In layers {', '.join(str(i) for i in range(1, results['n_layers']))} {NULL_IS_ZERO}" in per_layer

    def everywhere(data):
        for layer in data["per_layer"]:
            a_null_of_005(layer["agreement"]["grad_norm"])
        a_null_of_005(data["summary"]["agreement"]["grad_norm"])

    _edit(results_path, everywhere)
    body = _body(render_card(checkpoint, results_path))
    assert NULL_IS_ZERO not in body
    assert "null 0.050" in _first_screen(body)  # the null it subtracted, said beside the excess


def test_usage_says_how_to_install_and_names_the_repository(fresh):
    checkpoint, results_path = fresh
    body = _body(render_card(checkpoint, results_path))
    usage = section_of(body, "usage")
    assert "pip install hf-sparse-attn" not in body  # not on a package index
    assert "not published on a package index" in usage and "trust_remote_code=True" in _first_screen(body)
    assert "ORG/NAME" in usage and "replace ORG/NAME" in usage  # a placeholder says it is one

    body = _body(render_card(checkpoint, results_path, repo_id="me/tiny-entmax15"))
    assert "ORG/NAME" not in body and body.count('"me/tiny-entmax15"') == 2


def test_the_scores_page_is_published_and_its_images_are_checked(fresh):
    from hub_cards import CardError
    from hub_cards.validation import files_to_publish, validate_folder

    checkpoint, results_path = fresh
    render_card(checkpoint, results_path)
    assert "interpretability/scores.md" in files_to_publish(checkpoint)
    validate_folder(checkpoint, load_check=False)
    image = next((checkpoint / "interpretability" / "plots").glob("*.png"))
    image.unlink()
    with pytest.raises(CardError, match=f"interpretability/scores.md shows image plots/{image.name}, which is not in"):
        validate_folder(checkpoint, load_check=False)
