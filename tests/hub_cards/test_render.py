"""hub_cards rendering: the card round-trips through huggingface_hub, re-renders merge, bad input is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hub_cards import CardError
from hub_cards.cli import main as cli_main
from hub_cards.render import render_card
from hub_cards.sections import parse_sections
from tests.helpers.tiny_models import make_checkpoint, make_results


def folder_state(folder: Path) -> dict:
    """Relative path -> bytes of every file under the folder (to prove a refused render changed nothing)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def section(text: str, name: str) -> str:
    start, end = parse_sections(text)[name]
    return text[start:end]


def table_rows(markdown: str) -> list[list[str]]:
    """Data rows of the markdown tables in a piece of text (header and rule rows dropped)."""
    rows, previous_was_rule = [], False
    lines = [line.strip() for line in markdown.splitlines()]
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        is_rule = all(set(c) <= {"-"} and c for c in cells)
        next_is_rule = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if not is_rule and not next_is_rule:
            rows.append(cells)
    return rows


def expected_scores(results: dict, final_metrics: dict | None = None) -> dict:
    """The card's model-index values: the evaluation's own pooled aggregates, and the model's test accuracy from the
    training run when the evaluation covered only a subset of the split."""
    excess = [layer["agreement"]["grad_norm"]["kendall_tau_b_excess"]["mean"] for layer in results["per_layer"]]
    subset = results["n_examples"] < results["n_split"]
    quality = final_metrics["test"] if subset and final_metrics else results
    return {
        "accuracy": quality["accuracy"],
        "f1": quality["macro_f1"],
        "attention_sparsity_content": results["summary"]["attention_sparsity"]["mean"],
        "kendall_tau_b_excess_grad_all_layers": results["summary"]["agreement"]["grad_norm"]["kendall_tau_b_excess"]["mean"],
        "kendall_tau_b_excess_grad_last_layer": excess[-1],
        "input_to_repr_entropy": results["summary"]["input_to_repr_entropy"]["mean"],
    }


def first_number(cell: str) -> float:
    return float(cell.split()[0])


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "ckpt", attn_impl="entmax_learned", seed=0)


@pytest.fixture
def results_path(checkpoint, tmp_path) -> Path:
    return make_results(checkpoint, tmp_path / "eval", seed=0)


def test_card_round_trips_through_huggingface_hub(checkpoint, results_path):
    card_path = render_card(checkpoint, results_path)
    assert card_path == checkpoint / "README.md"
    card = ModelCard.load(card_path)
    results = json.loads(results_path.read_text())
    expected = expected_scores(results, json.loads((checkpoint / "final_metrics.json").read_text()))

    data = card.data
    assert data.library_name == "transformers"
    assert "sparse-attention" in data.tags and "entmax-learned" in data.tags
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # from training_args.json
    assert data.datasets is None  # the embedded MR is our own re-split, not a Hub dataset's split
    assert all(r.dataset_type == "mr" and "re-split" in r.dataset_name for r in data.eval_results)
    assert data.hf_sparse_attn["weights_fingerprint"] == results["weights_fingerprint"]
    values = {r.metric_type: r for r in data.eval_results}
    assert set(values) == set(expected)
    for key, result in values.items():
        assert result.metric_value == pytest.approx(expected[key], abs=1e-4), key
        assert result.task_type == "text-classification" and result.dataset_split == "test"
    assert values["kendall_tau_b_excess_grad_last_layer"].metric_args["layer"] == results["n_layers"] - 1
    assert values["f1"].metric_args["average"] == "macro"

    # Saving and loading again keeps metadata and model-index as they are.
    again = checkpoint / "again.md"
    card.save(again)
    reloaded = ModelCard.load(again)
    assert reloaded.data.to_dict() == card.data.to_dict()


def test_card_body_shows_alphas_heatmaps_tables_and_caution(checkpoint, results_path):
    import hf_sparse_attn  # noqa: F401  (the learned alphas come from the model as loaded by the core)
    from transformers import AutoModelForSequenceClassification

    text = render_card(checkpoint, results_path).read_text()
    results = json.loads(results_path.read_text())

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    alphas = hf_sparse_attn.attention_alphas(model)
    alpha_rows = table_rows(section(text, "attention").split("Learned alpha")[1].split("</details>")[0])
    assert len(alpha_rows) == alphas.shape[0]
    for layer, row in enumerate(alpha_rows):
        assert [float(c) for c in row[1:-1]] == pytest.approx(alphas[layer].tolist(), abs=6e-4)
    assert len(set(alpha_rows[0][1:-1])) > 1  # heads differ, so the table is per head

    scores_page = (checkpoint / "interpretability" / "scores.md").read_text()
    head_rows = table_rows(scores_page.split("## Per layer x head")[1].split("## Heatmaps")[0])
    assert len(head_rows) == results["n_layers"] * results["n_heads"]
    by_pair = {(int(r[0]), int(r[1])): r for r in head_rows}
    for rec in results["per_layer_head"]:
        row = by_pair[(rec["layer"], rec["head"])]
        assert first_number(row[4]) == pytest.approx(rec["attention_sparsity"]["mean"], abs=6e-4)

    # The evaluation's plots are copied into the folder and shown; results.json is copied and points at them.
    copied = json.loads((checkpoint / "results.json").read_text())
    assert copied["weights_fingerprint"] == results["weights_fingerprint"]
    assert len(copied["plots"]) == len(results["plots"]) > 2
    for rel in copied["plots"]:
        assert rel.startswith("interpretability/")
        assert (checkpoint / rel).read_bytes() == (results_path.parent / rel.split("/", 1)[1]).read_bytes()
        assert f"]({rel.split('/', 1)[1]})" in scores_page  # relative to the page, which lies in interpretability/

    scores = section(text, "scores")
    assert "not by" in scores and "faithful explanation" in scores and "2106.01087" in scores
    assert "Meister et al., 2021" in scores
    training = section(text, "training")
    assert "best validation accuracy 0.900 at step 40" in training
    assert "`learning_rate`" in training
    assert 'trust_remote_code=True' in section(text, "usage")


def test_rerender_replaces_generated_sections_and_keeps_user_text(checkpoint, results_path, tmp_path):
    card_path = render_card(checkpoint, results_path)
    text = card_path.read_text()
    head, _, body = text.partition("\n---\n")
    head = head + "\nlicense: mit\nlanguage: en\nwidget:\n- text: a fine film\n"
    head = head.replace("tags:\n", "tags:\n- my-own-tag\n", 1)
    body = "\nIntro the user wrote.\n" + body
    body = body.replace("<!-- hf-sparse-attn:begin:usage -->", "A note between sections.\n\n<!-- hf-sparse-attn:begin:usage -->")
    body = body.replace("**What the numbers say.**", "**What the numbers say.**\n\nTEXT THE USER PUT INSIDE A SECTION")
    assert "TEXT THE USER PUT INSIDE A SECTION" in body
    body += "\n## Limitations\n\nThe user's closing words.\n"
    card_path.write_text(head + "\n---\n" + body)

    new_results = make_results(checkpoint, tmp_path / "eval2", seed=7)
    render_card(checkpoint, new_results)
    merged = card_path.read_text()
    card = ModelCard.load(card_path)

    for kept in ("Intro the user wrote.", "A note between sections.", "## Limitations\n\nThe user's closing words."):
        assert merged.count(kept) == 1
    assert "TEXT THE USER PUT INSIDE A SECTION" not in merged
    assert merged.index("Intro the user wrote.") < merged.index("hf-sparse-attn:begin:header")
    assert merged.index("A note between sections.") < merged.index("hf-sparse-attn:begin:usage")
    assert merged.index("hf-sparse-attn:end:citation") < merged.index("The user's closing words.")
    assert list(parse_sections(merged)) == list(parse_sections(text))

    assert card.data.license == "mit" and card.data.language == "en" and card.data.widget == [{"text": "a fine film"}]
    assert "my-own-tag" in card.data.tags and "sparse-attention" in card.data.tags
    new = json.loads(new_results.read_text())
    expected = expected_scores(new, json.loads((checkpoint / "final_metrics.json").read_text()))
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-4)
    assert values["attention_sparsity_content"] == pytest.approx(expected["attention_sparsity_content"], abs=1e-4)
    assert json.loads((checkpoint / "results.json").read_text())["accuracy"] == new["accuracy"]


def test_render_into_a_readme_without_markers_keeps_it_below(checkpoint, results_path):
    (checkpoint / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# Notes from training\n\nKeep me.\n")
    text = render_card(checkpoint, results_path).read_text()
    assert text.count("Keep me.") == 1
    assert text.index("hf-sparse-attn:end:citation") < text.index("# Notes from training")
    assert ModelCard.load(checkpoint / "README.md").data.license == "apache-2.0"


def test_a_deleted_section_comes_back_in_template_order(checkpoint, results_path):
    card_path = render_card(checkpoint, results_path)
    text = card_path.read_text()
    start, end = parse_sections(text)["training"]
    card_path.write_text(text[:start] + "User text where training was.\n" + text[end:])
    merged = render_card(checkpoint, results_path).read_text()
    order = list(parse_sections(merged))
    assert order == list(parse_sections(text))
    assert "User text where training was." in merged


def test_rendering_is_deterministic_and_draws_heatmaps_when_results_have_none(checkpoint, tmp_path):
    results = make_results(checkpoint, tmp_path / "noplots", plots=False)
    first = render_card(checkpoint, results).read_bytes()
    images = sorted((checkpoint / "interpretability").glob("*.png"))
    assert len(images) == 2
    first_images = [p.read_bytes() for p in images]
    second = render_card(checkpoint, results).read_bytes()
    assert first == second
    assert [p.read_bytes() for p in images] == first_images
    scores_page = (checkpoint / "interpretability" / "scores.md").read_text()
    for image in images:
        assert f"]({image.name})" in scores_page
    assert not list(checkpoint.glob(".hub_cards-*"))


def test_stock_checkpoint_card(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "stock", attn_impl=None, training_files=False)
    results = make_results(checkpoint, tmp_path / "eval")
    text = render_card(checkpoint, results).read_text()
    card = ModelCard.load(checkpoint / "README.md")
    assert "softmax" in card.data.tags and card.data.base_model is None
    assert "without remote code" in section(text, "usage")
    assert "Learned alpha" not in text
    assert "No `training_args.json`" in section(text, "training")


def _drop_field(path: Path, mutate) -> None:
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("problem, match", [
    ("other_checkpoint", "other weights"),
    ("no_macro_f1", "macro_f1"),
    ("missing_head", "layer/head pairs"),
    ("no_gradient_tau", "grad_norm"),
    ("missing_plot", "plot"),
    ("other_attn_impl", "attn_impl"),
    ("broken_marker", "end:scores"),
    ("broken_yaml", "YAML"),
    ("not_json", "not valid JSON"),
])
def test_refusals_leave_the_folder_untouched(problem, match, checkpoint, results_path, tmp_path):
    render_card(checkpoint, results_path)  # a good card first: the refused render must not touch it
    bad = make_results(checkpoint, tmp_path / "bad", seed=3)
    card_path = checkpoint / "README.md"
    if problem == "other_checkpoint":
        other = make_checkpoint(tmp_path / "other", seed=1)
        bad = make_results(other, tmp_path / "bad_other")
    elif problem == "no_macro_f1":
        _drop_field(bad, lambda d: d.pop("macro_f1"))
    elif problem == "missing_head":
        _drop_field(bad, lambda d: d["per_layer_head"].pop())
    elif problem == "no_gradient_tau":
        _drop_field(bad, lambda d: [r["kendall_tau_b"].pop("grad_norm") for r in d["per_layer_head"]])
    elif problem == "missing_plot":
        (bad.parent / json.loads(bad.read_text())["plots"][0]).unlink()
    elif problem == "other_attn_impl":
        _drop_field(bad, lambda d: d.update(attn_impl="sparsemax", sparse_attention={"attn_impl": "sparsemax"}))
    elif problem == "broken_marker":
        card_path.write_text(card_path.read_text().replace("<!-- hf-sparse-attn:end:scores -->", ""))
    elif problem == "broken_yaml":
        card_path.write_text(card_path.read_text().replace("library_name: transformers", "library_name: [oops"))
    elif problem == "not_json":
        bad.write_text("{not json")
    before = folder_state(checkpoint)
    with pytest.raises(CardError, match=match) as info:
        render_card(checkpoint, bad)
    assert "\n" not in str(info.value)
    assert folder_state(checkpoint) == before


def test_cli_render_and_one_line_error(checkpoint, results_path, tmp_path, capsys):
    assert cli_main(["render", str(checkpoint), "--results", str(results_path), "--repo-id", "me/tiny-entmax"]) == 0
    assert capsys.readouterr().out.strip() == str(checkpoint / "README.md")
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.eval_results[0].dataset_name and card.data.to_dict()["model-index"][0]["name"] == "tiny-entmax"
    assert 'model_id = "me/tiny-entmax"' in card.text

    other = make_checkpoint(tmp_path / "other", seed=5)
    capsys.readouterr()
    assert cli_main(["render", str(other), "--results", str(results_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (other / "README.md").exists()


def test_scores_leave_undefined_layers_out(checkpoint, results_path):
    # A layer whose heads are all undefined has no excess: the last layer's gets no model-index entry, and its row
    # in the per-layer table says undefined, with the reason.
    data = json.loads(results_path.read_text())
    data["per_layer"][-1]["agreement"]["grad_norm"]["kendall_tau_b_excess"].update(mean=None, defined=False,
                                                                                  reason="no defined value to pool")
    results_path.write_text(json.dumps(data))
    card = ModelCard.load(render_card(checkpoint, results_path))
    values = {r.metric_type: r for r in card.data.eval_results}
    assert all(isinstance(r.metric_value, float) and math.isfinite(r.metric_value) for r in values.values())
    assert "kendall_tau_b_excess_grad_last_layer" not in values and "kendall_tau_b_excess_grad_all_layers" in values
    last_row = table_rows(section(card.text, "per-head"))[-1]
    assert last_row[0] == str(data["n_layers"] - 1) and last_row[2] == "undefined (no defined value to pool)"


def test_card_without_results_then_with_results(tmp_path):
    # A push straight after training renders from the training files; a later render fills in the scores.
    checkpoint = make_checkpoint(tmp_path / "run" / "final", seed=2)
    text = render_card(checkpoint, None).read_text()
    card = ModelCard.load(checkpoint / "README.md")
    final = json.loads((checkpoint / "final_metrics.json").read_text())["test"]
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"accuracy": final["accuracy"], "f1": final["macro_f1"]}
    assert card.data.to_dict()["model-index"][0]["name"] == "run"  # OUTDIR/final is named after OUTDIR
    assert "not measured yet" in section(text, "scores")
    assert not (checkpoint / "results.json").exists() and not (checkpoint / "interpretability").exists()

    (checkpoint / "README.md").write_text(text + "\nMy own closing note.\n")
    results = make_results(checkpoint, tmp_path / "eval")
    text = render_card(checkpoint, results).read_text()
    card = ModelCard.load(checkpoint / "README.md")
    assert "attention_sparsity_content" in {r.metric_type for r in card.data.eval_results}
    assert "not measured yet" not in text and text.count("My own closing note.") == 1
    assert (checkpoint / "results.json").is_file()


def test_card_accuracy_is_not_taken_from_a_tiny_subset(tmp_path):
    """An evaluation of 8 examples says nothing reliable about accuracy: the card reports the training run's
    test accuracy, and names a subset's accuracy as a subset of its size when that is all there is."""
    trained = make_checkpoint(tmp_path / "trained", seed=3)
    results = make_results(trained, tmp_path / "eval_trained", limit=8)
    final = json.loads((trained / "final_metrics.json").read_text())["test"]
    assert json.loads(results.read_text())["n_examples"] == 8
    card = ModelCard.load(render_card(trained, results))
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(final["accuracy"])
    assert "subset" not in accuracy.metric_name and accuracy.dataset_split == "test"

    untrained = make_checkpoint(tmp_path / "untrained", seed=3, training_files=False)
    results = make_results(untrained, tmp_path / "eval_untrained", limit=8)
    subset_accuracy = json.loads(results.read_text())["accuracy"]
    card = ModelCard.load(render_card(untrained, results))
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(subset_accuracy)
    assert "subset of 8 of the" in accuracy.metric_name
    assert "subset of 8 of the" in card.text


def test_card_links_the_report_drawn_from_the_published_results(checkpoint, results_path):
    from eval_suite.report import read_fingerprint
    from hub_cards.validation import check_card, files_to_publish
    from tests.helpers.report_data import embedded

    examples = {"4": {"tokens": ["a", "good", "film"], "label": 1, "prediction": 1, "probability": 0.91,
                      "maps": {"grad_norm": [0.2, 0.5, 0.3]}}}
    (results_path.parent / "token_examples.json").write_text(json.dumps(examples))
    text = render_card(checkpoint, results_path).read_text()
    results = json.loads(results_path.read_text())
    assert "[report.html](report.html)" in section(text, "header")  # on the first screen
    report = checkpoint / "report.html"
    data = embedded(report)
    assert data["meta"]["checkpoint"] == "."  # the published copy's: no local path goes to the Hub
    assert str(results_path.parent) not in report.read_text()
    assert read_fingerprint(report) == results["weights_fingerprint"]
    assert data["examples"][0]["tokens"] == ["a", "good", "film"]
    assert len(data["grid"]["values"]["kendall_tau_b"]["grad_norm"]) == results["n_layers"] * results["n_heads"]
    assert "report.html" in files_to_publish(checkpoint)
    check_card(checkpoint)

    # A report left from other weights stops the upload, like a stale results.json.
    report.write_text(report.read_text().replace(results["weights_fingerprint"], "sha256:" + "0" * 64))
    with pytest.raises(CardError, match="report.html was not drawn from these weights"):
        check_card(checkpoint)


def test_unreadable_token_examples_are_refused_before_any_write(checkpoint, results_path):
    (results_path.parent / "token_examples.json").write_text("{not json")
    before = folder_state(checkpoint)
    with pytest.raises(CardError, match="token_examples.json is not valid JSON"):
        render_card(checkpoint, results_path)
    assert folder_state(checkpoint) == before
