"""hub_cards push: exactly the published files go up in one commit to a local Hub; nothing goes up on failure.

The Hub is ``tests.helpers.fake_hub.FakeHub``: a loopback HTTP server speaking the routes huggingface_hub calls for
create_repo, create_branch and create_commit (validate-yaml, preupload, commit), reached through HF_ENDPOINT.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants

import hub_cards.validation as validation
from hub_cards import CardError, PushError
from hub_cards.cli import main as cli_main
from hub_cards.push import push_folder, validate_folder
from hub_cards.render import render_card
from hf_sparse_attn import weights_fingerprint
from tests.helpers.fake_hub import FakeHub
from tests.helpers.tiny_models import make_checkpoint, make_results

TOKEN = "hf_test_token"
PUBLISHED_FILES = {
    "README.md", "config.json", "model.safetensors", "results.json", "sparse_attn_mappings.py", "sparse_attn_pooling.py",
    "sparse_attn_modeling.py", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "training_args.json",
    "final_metrics.json", "train_log.jsonl", "report.html",
}


def published(folder: Path) -> set[str]:
    """The files a push of ``folder`` must upload: PUBLISHED_FILES, the card's images and its scores page."""
    images = {p.relative_to(folder).as_posix() for p in (folder / "interpretability").rglob("*.png")}
    assert images, "the card has images"
    return PUBLISHED_FILES | images | {"interpretability/scores.md"}


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; pushing to the loopback Hub needs it off."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def hub(online, monkeypatch):
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.fixture
def carded(tmp_path) -> Path:
    """A checkpoint with its card rendered, plus files that must not be published."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", attn_impl="entmax_learned")
    render_card(checkpoint, make_results(checkpoint, tmp_path / "eval"))
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    (checkpoint / "notes.txt").write_text("private notes")
    (checkpoint / "checkpoint-10").mkdir()
    (checkpoint / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    return checkpoint


@pytest.fixture
def skip_load_check(monkeypatch):
    """For tests about the network side: the clean-process load is covered by the tests that run it."""
    monkeypatch.setattr(validation, "check_loads_without_package", lambda folder, **kw: {})


@pytest.mark.slow
def test_push_uploads_exactly_the_published_files_in_one_commit(carded, hub):
    url = push_folder(carded, "org/tiny-entmax", private=True, revision="exp-1", commit_message="first upload",
                      token=TOKEN)

    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert url.startswith(hub.endpoint + "/org/tiny-entmax/commit/")
    assert commit["repo_id"] == "org/tiny-entmax" and commit["revision"] == "exp-1"
    assert commit["summary"] == "first upload"
    assert set(commit["files"]) == published(carded)
    for path, content in commit["files"].items():
        assert content == (carded / path).read_bytes(), path
    assert hub.repos["org/tiny-entmax"]["private"] is True
    assert "exp-1" in hub.repos["org/tiny-entmax"]["branches"]
    assert hub.unexpected == []
    # The card was refreshed to name the repository it went to, and still parses.
    card = ModelCard(commit["files"]["README.md"].decode())
    assert 'model_id = "org/tiny-entmax"' in card.text
    assert card.data.to_dict()["model-index"][0]["name"] == "tiny-entmax"


@pytest.mark.slow
def test_validation_loads_in_a_process_without_our_packages(carded):
    # The folder's remote code is rewritten to need hf_sparse_attn: the clean process must refuse it. The edited
    # code is not ours, so the load check runs it only when trusted. (The passing case runs, unmocked, in the push
    # test above.)
    modeling = carded / "sparse_attn_modeling.py"
    modeling.write_text("import hf_sparse_attn\n" + modeling.read_text())
    with pytest.raises(PushError, match="hf_sparse_attn") as info:
        validate_folder(carded, trust_remote_code=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("problem, error, match", [
    ("broken_model_index", CardError, "metadata"),
    ("broken_yaml", CardError, "YAML"),
    ("bin_weights", PushError, "safetensors"),
    ("weights_changed", CardError, "other weights"),
    ("image_missing", CardError, "missing"),
    ("remote_code_missing", PushError, "sparse_attn_modeling.py"),
])
def test_nothing_goes_up_after_a_failed_validation(problem, error, match, carded, hub, tmp_path, skip_load_check):
    card = carded / "README.md"
    if problem == "broken_model_index":  # a hand-written card (push does not re-render it) with a bad model-index
        card.write_text("---\nmodel-index:\n- name: x\n  results:\n  - task: {}\n---\n# My model\n")
    elif problem == "broken_yaml":  # our card, with YAML the user broke: the refresh refuses, card untouched
        card.write_text(card.read_text().replace("library_name: transformers", "library_name: [oops"))
    elif problem == "bin_weights":
        (carded / "model.safetensors").rename(carded / "pytorch_model.bin")
    elif problem == "weights_changed":
        make_checkpoint(tmp_path / "retrained", seed=9, tokenizer=False, training_files=False)
        (tmp_path / "retrained" / "model.safetensors").replace(carded / "model.safetensors")
    elif problem == "image_missing":
        next((carded / "interpretability" / "plots").glob("*.png")).unlink()
    elif problem == "remote_code_missing":
        (carded / "sparse_attn_modeling.py").unlink()
    with pytest.raises(error, match=match) as info:
        push_folder(carded, "org/tiny", token=TOKEN)
    assert "\n" not in str(info.value)
    assert hub.requests == [] and hub.commits == []


def test_missing_token_is_one_line_and_offline(carded, hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no stored login either
    with pytest.raises(PushError, match="HF_TOKEN") as info:
        push_folder(carded, "org/tiny")
    assert "\n" not in str(info.value)
    assert hub.requests == []


@pytest.mark.parametrize("explicit, env, accepted", [
    (TOKEN, "hf_wrong", True),     # an explicit token wins over HF_TOKEN
    (None, TOKEN, True),           # HF_TOKEN is used when no token is passed
    (None, "hf_wrong", False),     # a token the Hub rejects: one line, no commit
])
def test_token_precedence(explicit, env, accepted, carded, hub, monkeypatch, skip_load_check):
    monkeypatch.setenv("HF_TOKEN", env)
    if accepted:
        push_folder(carded, "org/tiny", token=explicit)
        assert {r["authorization"] for r in hub.requests} == {f"Bearer {TOKEN}"}
        assert set(hub.commits[0]["files"]) == published(carded)
    else:
        with pytest.raises(PushError, match="401") as info:
            push_folder(carded, "org/tiny", token=explicit)
        assert "\n" not in str(info.value)
        assert hub.commits == []


def test_unreachable_endpoint_is_one_line(carded, online, monkeypatch, skip_load_check):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(PushError, match="cannot reach") as info:
        push_folder(carded, "org/tiny", token=TOKEN)
    assert "\n" not in str(info.value) and str(port) in str(info.value)


def test_offline_mode_and_bad_repo_id_refused_before_any_request(carded, hub, monkeypatch):
    with pytest.raises(PushError, match="ORG/NAME"):
        push_folder(carded, "no-namespace", token=TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_folder(carded, "org/tiny", token=TOKEN)
    assert hub.requests == []


def test_pushing_twice_reuses_the_repository(carded, hub, skip_load_check, capsys):
    assert cli_main(["push", str(carded), "--repo-id", "org/again", "--token", TOKEN]) == 0
    first_url = capsys.readouterr().out.strip()
    assert cli_main(["push", str(carded), "--repo-id", "org/again", "--token", TOKEN,
                     "--commit-message", "second"]) == 0
    assert first_url.startswith(hub.endpoint)
    assert [c["summary"] for c in hub.commits][1] == "second"
    assert len(hub.repos) == 1 and len(hub.commits) == 2
    card = json.loads((carded / "results.json").read_text())
    assert card["weights_fingerprint"].startswith("sha256:")


def test_cli_validate_lists_files_and_errors_in_one_line(carded, tmp_path, skip_load_check, capsys):
    assert cli_main(["validate", str(carded)]) == 0
    assert set(capsys.readouterr().out.split()) == published(carded)
    assert cli_main(["validate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_real_minilm_checkpoint_renders_validates_and_publishes_its_tokenizer(minilm_path, tmp_path):
    import hf_sparse_attn
    from hf_sparse_attn.public_names import public_name
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "minilm-entmax15"
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2, attn_impl="entmax15")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    # What training records for the embedded copy (published files name no local path).
    (folder / "training_args.json").write_text(json.dumps({"model_name_or_path": public_name(minilm_path),
                                                           "dataset": "mr"}))
    assert hf_sparse_attn.get_spec(model).attn_impl == "entmax15"

    render_card(folder, make_results(folder, tmp_path / "eval", plots=False))
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # the bundled copy's Hub id
    assert "entmax15" in card.data.tags
    files = validate_folder(folder)  # includes the clean-process load with the real tokenizer
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
            "results.json", "training_args.json"} <= set(files)
    assert [f for f in files if f.startswith("interpretability/")] == [
        "interpretability/attention_sparsity_heatmap.png", "interpretability/kendall_tau_b_excess_grad_norm_heatmap.png",
        "interpretability/scores.md"]


def test_push_options_for_training_and_eval_commands(carded, hub, skip_load_check):
    import argparse

    from hub_cards.cli import add_push_arguments, push_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--revision")  # a command's own option must not clash with ours
    add_push_arguments(parser, flag="--push")
    assert push_from_args(carded, parser.parse_args([])) is None
    args = parser.parse_args(["--push", "org/from-eval", "--hub-token", TOKEN, "--hub-revision", "eval-run",
                              "--revision", "ignored-here"])
    url = push_from_args(carded, args)
    assert url.startswith(hub.endpoint + "/org/from-eval/commit/")
    assert hub.commits[0]["revision"] == "eval-run" and set(hub.commits[0]["files"]) == published(carded)


def test_push_right_after_training_writes_a_card_first(tmp_path, hub, skip_load_check):
    checkpoint = make_checkpoint(tmp_path / "run" / "final")
    assert not (checkpoint / "README.md").exists()
    push_folder(checkpoint, "org/trained", token=TOKEN)
    files = hub.commits[0]["files"]
    assert "README.md" in files and "results.json" not in files
    card = ModelCard(files["README.md"].decode())
    assert card.data.to_dict()["model-index"][0]["name"] == "trained"
    assert 'model_id = "org/trained"' in card.text


def test_stale_results_file_blocks_the_push(carded, hub, tmp_path, skip_load_check):
    other = make_checkpoint(tmp_path / "other", seed=4, tokenizer=False, training_files=False)
    stale = json.loads((carded / "results.json").read_text())
    stale["weights_fingerprint"] = weights_fingerprint(other)
    (carded / "results.json").write_text(json.dumps(stale))
    with pytest.raises(CardError, match="results.json") as info:
        push_folder(carded, "org/tiny", token=TOKEN)
    assert "\n" not in str(info.value)
    assert hub.requests == []


def test_push_without_card_renders_one_from_the_results_in_the_folder(carded, hub, skip_load_check):
    (carded / "README.md").unlink()
    push_folder(carded, "org/tiny", token=TOKEN)
    card = ModelCard(hub.commits[0]["files"]["README.md"].decode())
    assert "attention_sparsity_content" in {r.metric_type for r in card.data.eval_results}
    assert set(hub.commits[0]["files"]) == published(carded)
