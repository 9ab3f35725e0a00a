"""The publishing commands' fault table: exit status, the error's one line, and nothing written, run or uploaded.

New findings first: folder code that validate/push would have run without consent (auto_map, edited remote
code, a remote tokenizer, stdin), symbolic links, absolute local paths in published files, a failed push that
left the card re-rendered, a card rendered on truncated weights, a section marker inside the dataset name; then
the bad inputs that were already refused well (``HANDLED``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants

import hub_cards.validation as validation
from hub_cards import PushError
from hub_cards.cli import main as cli_main
from hub_cards.render import render_card
from hf_sparse_attn import weights_fingerprint
from hub_cards.sections import parse_sections
from tests.helpers.fake_hub import FakeHub
from tests.helpers.faults import REPO_ROOT, assert_one_line_error, run_command, snapshot, subprocess_env
from tests.helpers.limited import run_limited
from tests.helpers.tiny_models import make_checkpoint, make_results

TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def carded_once(tmp_path_factory) -> Path:
    """ckpt/ with its card rendered and eval/, the evaluation it was rendered from (built once per module)."""
    root = tmp_path_factory.mktemp("carded")
    checkpoint = make_checkpoint(root / "ckpt", attn_impl="entmax15")
    render_card(checkpoint, make_results(checkpoint, root / "eval"))
    return root


@pytest.fixture
def carded(carded_once, tmp_path) -> Path:
    """This test's own copy of ``carded_once``: tmp_path/ckpt (returned) and tmp_path/eval."""
    for name in ("ckpt", "eval"):
        shutil.copytree(carded_once / name, tmp_path / name, symlinks=True)
    return tmp_path / "ckpt"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake Hub speaks LFS, not Xet
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.fixture
def skip_load_check(monkeypatch):
    monkeypatch.setattr(validation, "check_loads_without_package", lambda folder, **kw: {})


def _cli(capsys, *argv):
    return run_command(cli_main, list(argv), capsys)


def _writes_marker(marker: Path, what: str = "'ran'") -> str:
    return f"\nopen({str(marker)!r}, 'w').write({what})\n"


# ------------------------------------------------------------------------------------------ finding 5


def test_validate_does_not_run_a_module_auto_map_names(carded, tmp_path, hub, capsys):
    marker = tmp_path / "code_ran"
    (carded / "evil.py").write_text(_writes_marker(marker) + "class Evil: pass\n")
    config = json.loads((carded / "config.json").read_text())
    config["auto_map"]["AutoModelForSequenceClassification"] = "evil.Evil"
    (carded / "config.json").write_text(json.dumps(config))
    for command in (["validate", carded], ["push", carded, "--repo-id", "org/x", "--token", TOKEN]):
        code, err = _cli(capsys, *command)
        assert not marker.exists()
        assert_one_line_error(code, err, "the load check would run code from")
        assert "evil.py is not one of the remote-code files" in err and "--trust-remote-code" in err
    assert hub.requests == []


def test_validate_does_not_run_edited_remote_code(carded, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    mappings = carded / "sparse_attn_mappings.py"
    mappings.write_text(mappings.read_text() + _writes_marker(marker))
    code, err = _cli(capsys, "validate", carded)
    assert not marker.exists()
    assert_one_line_error(code, err, "sparse_attn_mappings.py differs from the one this version of hf_sparse_attn")


def test_a_remote_tokenizer_is_refused_without_a_prompt(carded, capsys):
    tokenizer_config = json.loads((carded / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (carded / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    code, err = _cli(capsys, "validate", carded)
    assert_one_line_error(code, err, "tokenizer_config.json names a tokenizer class in remote code")


@pytest.mark.slow
def test_trusted_code_runs_with_stdin_closed(carded, tmp_path):
    """With --trust-remote-code the load check runs the folder's code, but never reads the user's terminal."""
    marker = tmp_path / "stdin_seen"
    mappings = carded / "sparse_attn_mappings.py"
    mappings.write_text(mappings.read_text() + "\nimport sys" + _writes_marker(marker, "repr(sys.stdin.read())"))
    done = subprocess.run([sys.executable, "-m", "hub_cards", "validate", str(carded), "--trust-remote-code"],
                          input="y\n", cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.read_text() == "''"  # the code ran, and found stdin closed, not the "y" we typed


# ------------------------------------------------------------------------------------------ finding 7


@pytest.mark.parametrize("linked", ["tokenizer.json", "a card image"])
def test_symbolic_links_are_refused_and_nothing_is_uploaded(carded, tmp_path, hub, skip_load_check, capsys, linked):
    if linked == "a card image":
        linked = min(p.relative_to(carded).as_posix() for p in (carded / "interpretability").rglob("*.png"))
    target = tmp_path / "private" / Path(linked).name
    target.parent.mkdir()
    (carded / linked).replace(target)
    (carded / linked).symlink_to(target)
    code, err = _cli(capsys, "validate", carded)
    assert_one_line_error(code, err, f"{linked} in {carded} is a symbolic link")
    code, err = _cli(capsys, "push", carded, "--repo-id", "org/tiny", "--token", TOKEN)
    assert_one_line_error(code, err, "is a symbolic link")
    assert hub.commits == []


def test_a_published_file_naming_a_local_path_is_refused(carded, hub, skip_load_check, capsys):
    args = json.loads((carded / "training_args.json").read_text())
    args["dataset"] = "/home/someone/data/reviews.csv"
    (carded / "training_args.json").write_text(json.dumps(args))
    code, err = _cli(capsys, "push", carded, "--repo-id", "org/tiny", "--token", TOKEN)
    assert_one_line_error(code, err, "training_args.json names the local path '/home/someone/data/reviews.csv'")
    assert hub.requests == []


def test_a_failed_push_leaves_the_folder_as_it_was(carded, monkeypatch, skip_load_check, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    before = snapshot(carded)
    code, err = _cli(capsys, "push", carded, "--repo-id", "org/never-written", "--token", TOKEN)
    assert_one_line_error(code, err, "cannot reach the Hub")
    assert snapshot(carded) == before  # the card still names no repository
    assert sorted(p.name for p in carded.iterdir() if p.name.startswith(".")) == []


def test_a_failed_check_after_the_card_refresh_leaves_the_folder_as_it_was(carded, hub, monkeypatch, capsys):
    def fails(folder, **kwargs):
        raise validation.PushError("the load check failed")

    monkeypatch.setattr(validation, "check_loads_without_package", fails)
    before = snapshot(carded)
    code, err = _cli(capsys, "push", carded, "--repo-id", "org/refused", "--token", TOKEN)
    assert_one_line_error(code, err, "the load check failed")
    assert snapshot(carded) == before and hub.requests == []


@pytest.mark.slow
def test_a_trained_and_evaluated_folder_publishes_no_local_path(tmp_path, hub):
    from eval_suite.cli import main as eval_main
    from hf_sparse_attn.training import cli as train_cli
    from hub_cards.push import push_folder
    from tests.helpers.tiny_models import make_text_csv

    data = make_text_csv(tmp_path / "reviews.csv", n=40)
    assert train_cli.main(["--from-scratch", "tiny-bert", "--dataset", data, "--max-steps", "2", "--batch-size", "8",
                           "--max-length", "32", "--cpu", "--output-dir", str(tmp_path / "run")]) == 0
    final = tmp_path / "run" / "final"
    assert eval_main([str(final), "--dataset", data, "--limit", "6", "--ig-steps", "2", "--batch-size", "6",
                      "--output-dir", str(tmp_path / "eval"), "--card"]) == 0
    push_folder(final, "org/published", token=TOKEN)  # with the real clean-process load check
    uploaded = hub.commits[0]["files"]
    for name, content in uploaded.items():
        if name.endswith((".json", ".jsonl", ".md")):
            assert str(tmp_path) not in content.decode(), name  # no path of this machine in a published file
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.eval_results[0].dataset_type == "custom"
    assert card.data.eval_results[0].dataset_name == "local file reviews.csv"


# ------------------------------------------------------------------------------------------ finding 11


def test_render_refuses_truncated_weights(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt", attn_impl="entmax15")  # no learned alphas to read
    results = make_results(checkpoint, tmp_path / "eval")
    weights = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    record = json.loads(results.read_text())
    record["weights_fingerprint"] = weights_fingerprint(checkpoint)  # it matches the truncated bytes
    results.write_text(json.dumps(record))
    for argv in (["render", checkpoint, "--results", results], ["render", checkpoint]):
        code, err = _cli(capsys, *argv)
        assert_one_line_error(code, err, "model.safetensors (SafetensorError) in")
        assert not (checkpoint / "README.md").exists()


def test_a_marker_inside_the_dataset_name_cannot_break_the_card(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt", attn_impl="entmax15")
    name = "my <!-- hf-sparse-attn:end:scores --> data"
    results = make_results(checkpoint, tmp_path / "eval")
    record = json.loads(results.read_text())
    record["dataset"] = name
    results.write_text(json.dumps(record))
    for _ in range(2):  # and a re-render merges into it
        code, err = _cli(capsys, "render", checkpoint, "--results", results)
        assert code == 0, err
    card = ModelCard.load(checkpoint / "README.md")
    assert "scores" in parse_sections(card.text)
    assert "my &lt;!-- hf-sparse-attn:end:scores --&gt; data" in card.text
    assert card.data.eval_results[0].dataset_name == name  # the metadata keeps the name as it is


# ------------------------------------------------------------------------------------------ hostile sizes


@pytest.mark.slow
def test_absurd_layer_and_head_counts_in_results_are_refused_before_allocation(tmp_path):
    """n_layers / n_heads 1e9 made render build 1e18 (layer, head) pairs until the kernel killed it at 22 GB; the
    rows run in one child process under an address-space limit (tests/helpers/limited.py)."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", attn_impl="entmax15")
    # The top-level fields of a results.json of this 2 x 4 checkpoint; the counts are checked before any record is.
    record = {"weights_fingerprint": weights_fingerprint(checkpoint), "attn_impl": "entmax15", "dataset": "mr",
              "split": "test", "n_examples": 16, "accuracy": 0.5, "macro_f1": 0.5, "n_layers": 2, "n_heads": 4,
              "importance_methods": ["grad_norm"], "per_layer_head": [{} for _ in range(8)], "per_layer": [],
              "summary": {}, "plots": []}
    cases, messages = [], {}
    for field in ("n_layers", "n_heads"):
        edited = tmp_path / f"{field}.json"
        edited.write_text(json.dumps({**record, field: 10 ** 9}))
        cases.append((field, "hub_cards.cli:main", ["render", checkpoint, "--results", edited]))
        messages[field] = f"{field} 1000000000"
    runs = run_limited(cases, tmp_path / "child", preload=("hub_cards.render",))
    for field, (code, err) in runs.items():
        assert_one_line_error(code, err, messages[field])
        assert "per_layer_head" in err
    assert not (checkpoint / "README.md").exists()


# ------------------------------------------------------------------------------------------ hostile numbers and text

# Markup a card may hold: our section markers and the note beside them, and the folding of details.
_OUR_HTML = re.compile(r"<!-- hf-sparse-attn:(begin|end):[\w-]+ -->|<!-- Text between hf-sparse-attn:begin [^<>]*-->|"
                       r"</?details>|</?summary>|</?b>")
_HOSTILE = "<img src=x onerror=alert(1)>\n# Injected heading\n[click](javascript:alert(1)) <!-- x --> *em* `c` | p"


def _set(path: Path, **fields) -> None:
    record = json.loads(path.read_text())
    record.update(fields)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("field, value", [("accuracy", float("nan")), ("accuracy", float("inf")),
                                          ("accuracy", 12345.0), ("macro_f1", -0.5)])
def test_render_refuses_a_score_that_is_not_a_fraction(fresh, capsys, field, value):
    checkpoint, results = fresh
    render_card(checkpoint, results)  # a good card first: the refused render must leave it as it is
    _set(results, **{field: value})
    before = snapshot(checkpoint)
    code, err = _cli(capsys, "render", checkpoint, "--results", results)
    assert_one_line_error(code, err, f"field {field!r} is {value!r}")
    assert "[0, 1]" in err
    assert snapshot(checkpoint) == before


def _markdown_tokens(text: str):
    markdown_it = pytest.importorskip("markdown_it")
    parser = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    tokens = parser.parse(text)
    while tokens:  # depth first, children (inline text, an image's alt text) after their parent
        token, tokens = tokens[0], (tokens[0].children or []) + tokens[1:]
        yield token


@pytest.mark.parametrize("where", ["dataset", "local file name", "plot file name"])
def test_text_from_results_and_file_names_is_inert_in_the_card(fresh, capsys, where):
    checkpoint, results = fresh
    if where == "dataset":
        _set(results, dataset=_HOSTILE)
    elif where == "local file name":
        _set(results, dataset="<b>x</b>[y](javascript:alert(1)) # z.csv (local file)")
    else:
        record = json.loads(results.read_text())
        hostile_name = "plots/<img src=x onerror=alert(1)> [a](javascript:b) # h.png"
        (results.parent / record["plots"][0]).rename(results.parent / hostile_name)
        record["plots"][0] = hostile_name
        results.write_text(json.dumps(record))
    code, err = _cli(capsys, "render", checkpoint, "--results", results)
    assert code == 0, err
    pages = []
    for path in (checkpoint / "README.md", checkpoint / "interpretability" / "scores.md"):
        page = path.read_text()
        pages.append(page)
        body = page.split("\n---\n", 1)[-1] if page.startswith("---") else page
        tokens = list(_markdown_tokens(body))
        markup = [t.content.strip() for t in tokens if t.type in ("html_block", "html_inline")]
        assert not [m for m in markup if "<" in _OUR_HTML.sub("", m)], markup  # no other tag, no other comment
        links = [t.attrGet("href") or t.attrGet("src") or "" for t in tokens if t.type in ("link_open", "image")]
        assert not any(link.startswith("javascript:") for link in links), links
        headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
        assert not any("Injected" in h or h.endswith(" z.csv") for h in headings), headings
    shown = " ".join(t.content for page in pages for t in _markdown_tokens(page) if t.type == "text")
    assert {"dataset": "<img src=x onerror=alert(1)> # Injected heading [click](javascript:alert(1))",
            "local file name": "<b>x</b>[y](javascript:alert(1)) # z.csv",
            "plot file name": "<img src=x onerror=alert(1)> [a](javascript:b) # h"}[where] in shown  # as typed
    assert list(parse_sections(pages[0])) == ["header", "usage", "attention", "scores", "per-head", "training",
                                              "evaluation", "citation"]


@pytest.mark.parametrize("repo_id", ["../x", 'org/x"); import os; ("', "no-namespace"])
def test_render_checks_the_repo_id_as_push_does(fresh, capsys, repo_id):
    from hub_cards.push import check_repo_id

    checkpoint, results = fresh
    before = snapshot(checkpoint)
    with pytest.raises(PushError) as refused_by_push:
        check_repo_id(repo_id)
    code, err = _cli(capsys, "render", checkpoint, "--results", results, "--repo-id", repo_id)
    assert_one_line_error(code, err, str(refused_by_push.value))
    assert snapshot(checkpoint) == before


# ------------------------------------------------------------------------------------------ already handled


def _case_folder(carded: Path, tmp_path: Path, problem: str) -> list:
    def other():
        return make_checkpoint(tmp_path / "other", seed=3, training_files=False)

    results = tmp_path / "eval" / "results.json"
    if problem == "no_folder":
        return ["render", tmp_path / "nowhere", "--results", results]
    if problem == "no_config":
        (carded / "config.json").unlink()
        return ["render", carded, "--results", results]
    if problem == "no_results":
        return ["render", carded, "--results", tmp_path / "none.json"]
    if problem == "other_weights":
        return ["render", carded, "--results", make_results(other(), tmp_path / "other_eval")]
    if problem == "results_not_json":
        results.write_text("{oops")
        return ["render", carded, "--results", results]
    if problem == "train_log_missing":
        return ["render", carded, "--results", results, "--train-log", tmp_path / "none.jsonl"]
    if problem == "validate_nowhere":
        return ["validate", tmp_path / "nowhere"]
    if problem == "bin_weights":
        (carded / "model.safetensors").rename(carded / "pytorch_model.bin")
        return ["validate", carded]
    if problem == "no_card":
        (carded / "README.md").unlink()
        return ["validate", carded]
    if problem == "remote_code_missing":
        (carded / "sparse_attn_modeling.py").unlink()
        return ["validate", carded]
    if problem == "stale_results":
        (other() / "model.safetensors").replace(carded / "model.safetensors")
        return ["validate", carded]
    if problem == "bad_repo_id":
        return ["push", carded, "--repo-id", "no-namespace", "--token", TOKEN]
    if problem == "offline":
        return ["push", carded, "--repo-id", "org/tiny", "--token", TOKEN]
    raise AssertionError(problem)


HANDLED = [
    ("no_folder", "does not exist"),
    ("no_config", "has no config.json"),
    ("no_results", "does not exist"),
    ("other_weights", "other weights"),
    ("results_not_json", "not valid JSON"),
    ("train_log_missing", "does not exist"),
    ("validate_nowhere", "is not a folder"),
    ("bin_weights", "no *.safetensors weights"),
    ("no_card", "has no README.md"),
    ("remote_code_missing", "lacks it"),
    ("stale_results", "other weights"),
    ("bad_repo_id", "ORG/NAME"),
    ("offline", "HF_HUB_OFFLINE"),
]


@pytest.mark.parametrize("problem, message", HANDLED, ids=[case[0] for case in HANDLED])
def test_already_handled_bad_input(carded, tmp_path, capsys, skip_load_check, problem, message):
    argv = _case_folder(carded, tmp_path, problem)
    before = snapshot(carded)
    code, err = _cli(capsys, *argv)
    assert_one_line_error(code, err, message)
    assert snapshot(carded) == before
    assert not (tmp_path / "nowhere").exists()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing here may reach a network
