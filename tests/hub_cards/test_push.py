"""hub_cards push: exactly the published files go up in one commit to a local Hub; nothing goes up on failure.

The Hub is ``tests.helpers.fake_hub.FakeHub``: a loopback HTTP server speaking the routes huggingface_hub calls for
create_repo, create_branch and create_commit (validate-yaml, preupload, commit), reached through HF_ENDPOINT.
"""

from __future__ import annotations

import json
import shutil
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
    """The test session runs with HF_HUB_OFFLINE=1; pushing to the loopback Hub needs it off. Large files take the
    LFS path (the fake Hub does not speak Xet, the protocol huggingface_hub prefers when hf_xet is installed)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def hub(online, monkeypatch):
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.fixture(scope="module")
def carded_once(tmp_path_factory) -> Path:
    """A checkpoint with its card rendered, plus files that must not be published (built once per module: an
    evaluation takes seconds, a copy milliseconds)."""
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("carded") / "ckpt", attn_impl="entmax_learned")
    render_card(checkpoint, make_results(checkpoint, checkpoint.parent / "eval"))
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    (checkpoint / "notes.txt").write_text("private notes")
    (checkpoint / "checkpoint-10").mkdir()
    (checkpoint / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    return checkpoint


@pytest.fixture
def carded(carded_once, tmp_path) -> Path:
    """This test's own copy of ``carded_once`` (a test may change it)."""
    return Path(shutil.copytree(carded_once, tmp_path / carded_once.name, symlinks=True))


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
    # Weights and images went the Hub's LFS way (batch, upload to storage, verify), the text files inline.
    assert commit["lfs"] == {p for p in published(carded) if p.endswith((".safetensors", ".png"))}
    assert len(hub.calls("lfs-upload")) == len(hub.calls("lfs-verify")) == len(commit["lfs"])
    assert all(r["authorization"] is None for r in hub.calls("lfs-upload"))  # the token never goes to storage
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
        assert {r["authorization"] for r in hub.requests if r["route"] != "lfs-upload"} == {f"Bearer {TOKEN}"}
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
    # The second commit points at the LFS objects the first one stored: nothing is uploaded twice.
    assert hub.commits[1]["lfs"] == hub.commits[0]["lfs"] and len(hub.calls("lfs-batch")) == 2
    assert len(hub.calls("lfs-upload")) == len(hub.commits[0]["lfs"])
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

    # The quick tier: what the card shows of a real encoder (the tiers themselves are tested in eval_suite).
    render_card(folder, make_results(folder, tmp_path / "eval", plots=False, measures="quick"))
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


# ----------------------------------------------------------------------------------------------- the Hub says no


@pytest.mark.parametrize("route, status, step", [
    ("create", 403, "create the repository"),       # no write access to the namespace (and no such repo)
    ("create", 500, "create the repository"),
    ("branch", 403, "create branch 'exp'"),
    ("preupload", 404, "commit the files"),         # the repository vanished between create and commit
    ("lfs-batch", 403, "commit the files"),
    ("lfs-upload", 403, "commit the files"),        # the storage refused the signed upload
    ("lfs-verify", 404, "commit the files"),
    ("commit", 403, "commit the files"),
    ("commit", 404, "commit the files"),
    ("commit", 500, "commit the files"),
    ("commit", 503, "commit the files"),
])
def test_a_refusing_hub_is_one_line_and_leaves_the_folder_and_card_as_they_were(carded, hub, skip_load_check, capsys,
                                                                                route, status, step):
    from tests.helpers.faults import assert_one_line_error, run_command, snapshot

    hub.refuse[route] = status
    before = snapshot(carded)
    argv = ["push", carded, "--repo-id", "org/refused", "--token", TOKEN]
    code, err = run_command(cli_main, argv + (["--revision", "exp"] if route == "branch" else []), capsys)
    assert_one_line_error(code, err, f"{hub.endpoint} refused to {step} (HTTP {status})")
    assert hub.calls(route), "the refusal was reached"
    assert hub.commits == [] and snapshot(carded) == before  # the card still names no repository
    assert sorted(p.name for p in carded.iterdir() if p.name.startswith(".")) == []


def test_an_object_the_lfs_batch_api_refuses_is_a_push_error_not_a_card_error(carded, hub, skip_load_check):
    from tests.helpers.faults import snapshot

    hub.max_object_size = (carded / "model.safetensors").stat().st_size - 1
    before = snapshot(carded)
    with pytest.raises(PushError, match="refused to commit the files: LFS batch API returned errors") as info:
        push_folder(carded, "org/too-large", token=TOKEN)
    assert "exceeds the limit" in str(info.value) and "\n" not in str(info.value)
    assert hub.commits == [] and snapshot(carded) == before


def test_a_transient_storage_error_is_retried_and_the_push_completes(carded, hub, skip_load_check):
    hub.refuse_once["lfs-upload"] = 503
    push_folder(carded, "org/retried", token=TOKEN)
    assert len(hub.commits) == 1 and set(hub.commits[0]["files"]) == published(carded)
    assert len(hub.calls("lfs-upload")) == len(hub.commits[0]["lfs"]) + 1


@pytest.mark.parametrize("card, hub_rule, match", [
    ("license", None, '"license" must be one of'),   # valid YAML that huggingface_hub parses, a value the Hub refuses
    ("ours", "model-index: a rule this client cannot know", "a rule this client cannot know"),
])
def test_a_card_the_hub_refuses_stops_the_push_before_any_upload(carded, hub, skip_load_check, card, hub_rule, match):
    from tests.helpers.faults import snapshot

    if card == "license":  # a hand-written card: push leaves it as written
        (carded / "README.md").write_text("---\nlicense: my-own-licence\nlibrary_name: transformers\n---\n# Mine\n")
    if hub_rule:
        hub.card_errors.append(hub_rule)
    before = snapshot(carded)
    with pytest.raises(CardError, match="the Hub refused the card") as info:
        push_folder(carded, "org/refused-card", token=TOKEN)
    assert match in str(info.value) and "\n" not in str(info.value)
    assert hub.calls("validate-yaml") and not hub.calls("lfs-upload") and hub.commits == []
    assert snapshot(carded) == before


def test_a_rendered_card_passes_the_hubs_metadata_rules(carded):
    from tests.helpers.fake_hub import card_metadata_errors

    assert card_metadata_errors((carded / "README.md").read_text()) == []
    assert card_metadata_errors("---\nlicense: [mit, nope]\ntags: [1]\n---\n") == [
        '"license" must be one of [apache-2.0, bsd-3-clause, cc-by-4.0, cc-by-nc-4.0, cc-by-sa-4.0, gpl-3.0, '
        'lgpl-3.0, llama2, mit, openrail, other, unknown, ...]', '"tags" must be an array of strings']
    assert card_metadata_errors("---\nlicense: [oops\n---\n")[0].startswith("Invalid YAML")
