"""The evaluation command's fault table: exit status, the error's one line, and nothing written or lost.

New findings first: two evaluations into one folder (at once, or one after the other), row files of another
checkpoint under --resume, an --overwrite that dies half-way, truncated weights, unusable output folders, local
paths in results.json, label gaps; then the bad inputs that were already refused well (``HANDLED``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from eval_suite.cli import main
from eval_suite.runner import shard_plan_id
from hf_sparse_attn.constants import PLAN_FILE
from tests.helpers.crash import CRASH_EXIT_STATUS
from tests.helpers.faults import (assert_one_line_error, free_space, leave_free, leftovers, run_command, small_disk,
                                  snapshot, start_paused)
from tests.helpers.limited import run_limited
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_faults")
    truncated = Path(make_tiny_checkpoint(root / "truncated"))
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    gap = root / "labels_0_5.csv"
    gap.write_text("text,label\n" + "".join(f"w{i} w{i + 1} w{i + 2},{5 if i % 2 else 0}\n" for i in range(40)))
    (root / "a_file").write_text("not a folder")
    return {"root": root, "a": make_tiny_checkpoint(root / "ckpt_a"), "b": make_tiny_checkpoint(root / "ckpt_b", seed=1),
            "data": make_text_csv(root / "data.csv", n=40), "truncated": str(truncated), "gap": str(gap)}


def _args(ws, checkpoint, out, *extra):
    return [ws[checkpoint], "--dataset", ws["data"], "--split", "train", "--limit", "8", "--batch-size", "4",
            "--ig-steps", "2", "--output-dir", str(out), *extra]


def _eval(capsys, argv):
    return run_command(main, argv, capsys)


@pytest.fixture(scope="module")
def evaluated(ws):
    """Checkpoint a evaluated into its own folder (copied by the tests that change it)."""
    out = ws["root"] / "evaluated_a"
    assert main(_args(ws, "a", out)) == 0
    return out


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _token_plots(folder: Path) -> set[str]:
    return {p.name for p in (folder / "plots").glob("tokens_*.png")}


# ------------------------------------------------------------------------------------------ finding 1


def test_another_evaluation_into_a_used_folder_needs_overwrite_which_leaves_no_stale_file(ws, evaluated, tmp_path,
                                                                                          capsys):
    out = _copy(evaluated, tmp_path / "out")
    before = snapshot(out)
    code, err = _eval(capsys, _args(ws, "b", out, "--seed", "3"))
    assert_one_line_error(code, err, "holds the results of another checkpoint, dataset or setting; pass --overwrite")
    assert snapshot(out) == before

    code, err = _eval(capsys, _args(ws, "b", out, "--seed", "3", "--overwrite"))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["weights_fingerprint"] != json.loads((evaluated / "results.json").read_text())["weights_fingerprint"]
    assert _token_plots(out) != _token_plots(evaluated)  # other examples, other token plots ...
    assert {f"plots/{p.name}" for p in (out / "plots").iterdir()} == set(results["plots"])  # ... and no stale ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder went with the swap
    plan = json.loads((out / "rows" / PLAN_FILE).read_text())
    shards = sorted((out / "rows").glob("batch_*.npz"))
    assert len(shards) == plan["n_batches"] and {shard_plan_id(s) for s in shards} == {plan["plan_id"]}


def test_resume_refuses_row_files_of_another_checkpoint(ws, evaluated, tmp_path, capsys):
    out = _copy(evaluated, tmp_path / "out")
    other = tmp_path / "other"
    assert main(_args(ws, "b", other)) == 0  # the same plan for another checkpoint: same batch names
    shutil.copyfile(other / "rows" / "batch_00001.npz", out / "rows" / "batch_00001.npz")
    (out / "results.json").unlink()  # as after a crash: --resume must rebuild it from the rows
    before = snapshot(out)
    code, err = _eval(capsys, _args(ws, "a", out, "--resume"))
    assert_one_line_error(code, err, "batch_00001.npz was computed for another checkpoint")
    assert snapshot(out) == before
    code, err = _eval(capsys, _args(ws, "a", out))  # without --resume every batch is recomputed
    assert code == 0, err
    assert (out / "results.json").read_bytes() == (evaluated / "results.json").read_bytes()


@pytest.mark.slow
def test_a_second_evaluation_into_a_busy_folder_exits_and_a_dying_overwrite_loses_nothing(ws, evaluated, tmp_path,
                                                                                         capsys):
    out = _copy(evaluated, tmp_path / "out")
    before = snapshot(out)
    holder, _, go = start_paused("eval", 1, tmp_path, _args(ws, "b", out, "--seed", "3", "--overwrite"))
    try:
        code, err = _eval(capsys, _args(ws, "a", out, "--resume"))
        assert_one_line_error(code, err, f"is in use by another run (pid {holder.pid} on ")
    finally:
        go.write_text("crash")  # the overwriting run dies after its first batch
    assert holder.wait(timeout=300) == CRASH_EXIT_STATUS
    after_crash = snapshot(out)
    holder_files = {".hf-sparse-attn.lock.holder.json"}  # the dead holder's note; the kernel dropped its lock
    assert {k: v for k, v in after_crash.items() if k not in holder_files} == before

    code, err = _eval(capsys, _args(ws, "b", out, "--seed", "3", "--overwrite"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # staging cleared


# ------------------------------------------------------------------------------------------ findings 7, 9, 10, 11


def test_results_name_no_local_path(ws, evaluated):
    text = (evaluated / "results.json").read_text()
    assert str(ws["root"]) not in text  # results.json is published as it is
    results = json.loads(text)
    assert results["dataset"] == "data.csv (local file)" and results["checkpoint"] == "ckpt_a (local folder)"


NEW_FAULTS = [
    ("truncated_weights", lambda ws, a: a.__setitem__(0, ws["truncated"]), "not a readable safetensors file"),
    ("label_gap", lambda ws, a: a.__setitem__(2, ws["gap"]), "not 0..K-1 (class 1 never occurs)"),
    ("resume_and_overwrite", lambda ws, a: a.extend(["--resume", "--overwrite"]), "contradict"),
    ("bad_label_map", lambda ws, a: a.extend(["--label-map", "0"]), "needs at least two entries"),
]


@pytest.mark.parametrize("name, change, message", NEW_FAULTS, ids=[c[0] for c in NEW_FAULTS])
def test_new_faults_are_one_line_errors_and_write_nothing(ws, tmp_path, capsys, name, change, message):
    _assert_refused_writing_nothing(ws, tmp_path, capsys, change, message)


def _assert_refused_writing_nothing(ws, tmp_path, capsys, change, message):
    out = tmp_path / "never"
    argv = _args(ws, "a", out)
    change(ws, argv)
    code, err = _eval(capsys, argv)
    assert_one_line_error(code, err, message)
    assert not out.exists()


@pytest.mark.parametrize("where, message", [
    ("{root}/a_file", "is a file"),
    ("{root}/a_file/eval", "lies under the file"),
    ("/proc/hf_sparse_attn_test_eval", "cannot be created"),
])
def test_unusable_output_folder_is_refused_before_anything_loads(ws, capsys, monkeypatch, where, message):
    import eval_suite.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("data or model loaded before the output folder was checked")

    monkeypatch.setattr(runner, "plan_evaluation", refuse)
    before = snapshot(ws["root"])
    code, err = _eval(capsys, _args(ws, "a", where.format(**ws)))
    assert_one_line_error(code, err, message)
    assert snapshot(ws["root"]) == before


def test_overwrite_refuses_a_folder_holding_files_it_did_not_write(ws, evaluated, tmp_path, capsys):
    out = _copy(evaluated, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, err = _eval(capsys, _args(ws, "b", out, "--overwrite"))
    assert_one_line_error(code, err, "holds files no evaluation wrote (notes.txt)")
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------ hostile values

HOSTILE_VALUES = [
    ("seed_negative", lambda ws, a: a.extend(["--seed", "-1"]), "--seed must be an integer in [0, 4294967295]"),
    ("seed_too_large", lambda ws, a: a.extend(["--seed", str(2 ** 32)]), "got 4294967296"),
]


@pytest.mark.parametrize("name, change, message", HOSTILE_VALUES, ids=[c[0] for c in HOSTILE_VALUES])
def test_hostile_values_are_one_line_errors_and_write_nothing(ws, tmp_path, capsys, name, change, message):
    _assert_refused_writing_nothing(ws, tmp_path, capsys, change, message)


# Absurd config.json values, each refused before the model is allocated; one child process under an
# address-space limit runs them all (tests/helpers/limited.py).
CONFIG_EDITS = {
    "layers_1e7": ({"num_hidden_layers": 10 ** 7}, "num_hidden_layers 10000000"),
    "hidden_negative": ({"hidden_size": -5}, "hidden_size must be a positive integer, got -5"),
    "heads_zero": ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    "vocab_1e12": ({"vocab_size": 10 ** 12}, "vocab_size 1000000000000"),
    "hidden_not_multiple_of_heads": ({"num_attention_heads": 3}, "hidden_size 32 is not a multiple of "
                                                                 "num_attention_heads 3"),
}


def _long_context_case(ws, root: Path) -> list:
    """A checkpoint with 8192 positions and 64 texts of 2048 tokens measured in one batch: 4 GiB of attention maps
    per layer."""
    from transformers import BertConfig, BertForSequenceClassification

    from tests.helpers.tiny_models import TINY

    folder = _copy(Path(ws["a"]), root / "long_context")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**{**TINY, "max_position_embeddings": 8192})).save_pretrained(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "model_max_length": 8192}))
    data = root / "long.csv"
    data.write_text("text,label\n" + "".join(f"{' '.join(f'w{(i + j) % 90}' for j in range(2100))},{i % 2}\n"
                                             for i in range(80)))
    return [folder, "--dataset", data, "--split", "train", "--limit", "64", "--batch-size", "64", "--max-batch-tokens",
            "1000000", "--max-length", "2048", "--ig-steps", "2", "--output-dir", root / "out" / "batch_by_length"]


SIZE_MESSAGES = {**{name: message for name, (_, message) in CONFIG_EDITS.items()},
                 "batch_by_length": "lower --batch-size, --max-batch-tokens or --max-length"}


@pytest.fixture(scope="module")
def size_runs(ws):
    root = ws["root"] / "sizes"
    cases = []
    for name, (edit, _) in CONFIG_EDITS.items():
        folder = _copy(Path(ws["a"]), root / name)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **edit}))
        cases.append((name, "eval_suite.cli:main", [folder, *_args(ws, "a", root / "out" / name)[1:]]))
    cases.append(("batch_by_length", "eval_suite.cli:main", _long_context_case(ws, root)))
    return root, run_limited(cases, root / "child", preload=("eval_suite.runner", "eval_suite.model_access"))


@pytest.mark.parametrize("name", list(SIZE_MESSAGES))
def test_absurd_sizes_are_refused_before_allocation(size_runs, name):
    root, runs = size_runs
    code, err = runs[name]
    assert_one_line_error(code, err, SIZE_MESSAGES[name])
    assert not (root / "out" / name).exists()


# ------------------------------------------------------------------------------------------ full disks
# A small tmpfs filled up: one line naming the folder, no temporary file or staging folder left, the old results
# as they were, and the same command succeeds once space is freed.


@pytest.mark.parametrize("free_kib, stage", [(12, "rows"), (64, "plots")])
def test_a_full_disk_during_evaluation_is_one_line_and_the_rerun_succeeds(ws, evaluated, tmp_path, capsys, free_kib,
                                                                        stage):
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        leave_free(disk, free_kib * 1024)
        code, err = _eval(capsys, _args(ws, "a", out))
        assert_one_line_error(code, err, f"no space left on the device of '{out}'")
        assert "needs more than" in err
        assert leftovers(out) == [] and not (out / "results.json").exists()
        if stage == "plots":
            assert len(list((out / "rows").glob("batch_*.npz"))) == 2  # the rows were written, the plots not
        free_space(disk)
        code, err = _eval(capsys, _args(ws, "a", out, *(["--resume"] if stage == "plots" else [])))
        assert code == 0, err
        assert (out / "results.json").read_bytes() == (evaluated / "results.json").read_bytes()
        assert leftovers(out) == []


def test_a_full_disk_during_overwrite_keeps_the_old_results(ws, evaluated, tmp_path, capsys):
    with small_disk(tmp_path / "disk") as disk:
        out = _copy(evaluated, disk / "out")
        before = snapshot(out)
        leave_free(disk, 200 * 1024)
        code, err = _eval(capsys, _args(ws, "b", out, "--seed", "3", "--overwrite"))
        assert_one_line_error(code, err, "no space left on the device of")
        assert snapshot(out) == before
        assert leftovers(disk) == []  # no .out.overwrite
        free_space(disk)
        code, err = _eval(capsys, _args(ws, "b", out, "--seed", "3", "--overwrite"))
        assert code == 0, err
        assert json.loads((out / "results.json").read_text())["weights_fingerprint"] != \
            json.loads((evaluated / "results.json").read_text())["weights_fingerprint"]
        assert leftovers(disk) == []


# ------------------------------------------------------------------------------------------ already handled

HANDLED = [
    (lambda ws, a: a.__setitem__(a.index("--limit") + 1, "0"), "--limit must be a positive"),
    (lambda ws, a: a.__setitem__(a.index("--batch-size") + 1, "0"), "--batch-size must be >= 1"),
    (lambda ws, a: a.__setitem__(a.index("--ig-steps") + 1, "0"), "--ig-steps must be >= 1"),
    (lambda ws, a: a.extend(["--max-length", "2"]), "--max-length must be >= 3"),
    (lambda ws, a: a.extend(["--max-padding", "-0.5"]), "--max-padding must be a number >= 0"),
    (lambda ws, a: a.extend(["--max-padding", "nan"]), "--max-padding must be a number >= 0"),
    (lambda ws, a: a.extend(["--fractions", "0,0.5"]), "--fractions must be numbers in (0, 1]"),
    (lambda ws, a: a.extend(["--fractions", "1.5"]), "--fractions must be numbers in (0, 1]"),
    (lambda ws, a: a.extend(["--plot-examples", "-1"]), "--plot-examples must be >= 0"),
    (lambda ws, a: a.__setitem__(2, "no_such_corpus_xyz"), "no_such_corpus_xyz"),
    (lambda ws, a: a.__setitem__(2, str(ws["root"] / "missing.csv")), "does not exist"),
    (lambda ws, a: a.extend(["--text-column", "sentence"]), "no column 'sentence'"),
    (lambda ws, a: a.extend(["--label-column", "stars"]), "no column 'stars'"),
    (lambda ws, a: a.__setitem__(a.index("--split") + 1, "dev"), "no split 'dev'"),
    (lambda ws, a: a.__setitem__(0, str(ws["root"] / "missing")), "cannot read a transformers config"),
    (lambda ws, a: a.extend(["--attn-impl", "bogus"]), "unknown attn_impl"),
]


@pytest.mark.parametrize("change, message", HANDLED, ids=[f"handled-{i}" for i in range(len(HANDLED))])
def test_already_handled_bad_input(ws, tmp_path, capsys, change, message):
    _assert_refused_writing_nothing(ws, tmp_path, capsys, change, message)


def test_resume_with_other_settings_loses_nothing(ws, evaluated, tmp_path, capsys):
    out = _copy(evaluated, tmp_path / "out")
    before = snapshot(out)
    code, err = _eval(capsys, _args(ws, "a", out, "--resume", "--ig-steps", "3"))
    assert_one_line_error(code, err, "checkpoint, dataset or setting")
    assert snapshot(out) == before
