"""The training command's fault table: every bad input and fault it must survive, each asserting the exit status,
the error's one line, and that nothing was written (a fresh folder) or lost (an existing run, byte for byte).

``NEW_FAULTS`` and the tests below them reproduce findings that finished "successfully" or crashed with a
traceback before (impossible numbers, label gaps, unusable output folders, truncated weights, concurrent runs,
--overwrite, pickles on --resume, local paths in published files); ``HANDLED`` keeps the bad inputs that were
already refused well.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from hf_sparse_attn.training import TrainingCallback, train
from hf_sparse_attn.training import cli as train_cli
from hf_sparse_attn.training.config import TrainConfig
from tests.helpers.faults import (assert_one_line_error, free_space, leave_free, leftovers, run_command, small_disk,
                                  snapshot, start_paused)
from tests.helpers.limited import run_limited
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint

TINY = ["--from-scratch", "tiny-bert", "--max-length", "32", "--batch-size", "8", "--eval-batch-size", "64",
        "--max-eval-examples", "16", "--cpu"]
SHORT = ["--dataset", "mr", "--max-train-examples", "24", "--max-steps", "3", "--eval-every", "2", "--save-every", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_faults")
    gap = root / "labels_0_5.csv"
    gap.write_text("text,label\n" + "".join(f"w{i} w{i + 1} w{i + 2},{5 if i % 2 else 0}\n" for i in range(40)))
    (root / "a_file").write_text("not a folder")
    truncated = Path(make_tiny_checkpoint(root / "truncated"))
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return {"root": root, "gap": gap, "csv": make_text_csv(root / "data.csv", n=40), "truncated": truncated}


def _train(capsys, argv, tiny=True):
    return run_command(train_cli.main, [*(TINY if tiny else []), *argv], capsys)


def _no_loading(monkeypatch):
    """Fail the test if data or a model is loaded: these errors must come before any loading."""
    import hf_sparse_attn.training.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("data or model loaded before the output folder was checked")

    monkeypatch.setattr(loop, "_load_splits", refuse)
    monkeypatch.setattr(loop, "load_tokenizer_and_model", refuse)


# ------------------------------------------------------------------------------------------ findings 8, 9, 10, 11

NEW_FAULTS = [
    ("lr_inf", ["--dataset", "mr", "--lr", "inf"], "--lr must be a finite number"),
    ("lr_nan", ["--dataset", "mr", "--lr", "nan"], "--lr must be a finite number"),
    ("alpha_lr_inf", ["--dataset", "mr", "--alpha-lr", "inf"], "--alpha-lr must be a finite number"),
    ("weight_decay_nan", ["--dataset", "mr", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    ("max_grad_norm_nan", ["--dataset", "mr", "--max-grad-norm", "nan"], "--max-grad-norm must be a finite number"),
    ("max_grad_norm_negative", ["--dataset", "mr", "--max-grad-norm", "-1"], "--max-grad-norm must be >= 0"),
    ("label_gap", ["--dataset", "{gap}"], "not 0..K-1 (class 1 never occurs)"),
    ("label_map_unknown_value", ["--dataset", "{gap}", "--label-map", "0,4"], "label 5"),
    ("label_map_repeated", ["--dataset", "{gap}", "--label-map", "0=a,5=a"], "lists the name 'a' twice"),
    ("label_map_embedded", ["--dataset", "mr", "--label-map", "0,1"], "fixed labels"),
    ("truncated_weights", ["--model", "{truncated}", "--dataset", "{csv}", "--max-steps", "1", "--max-length", "32",
                           "--cpu"], "not a readable safetensors file"),
]


@pytest.mark.parametrize("name, argv, message", NEW_FAULTS, ids=[case[0] for case in NEW_FAULTS])
def test_new_faults_are_one_line_errors_and_write_nothing(files, capsys, tmp_path, name, argv, message):
    _assert_refused_writing_nothing(files, capsys, tmp_path, argv, message, tiny=name != "truncated_weights")


def _assert_refused_writing_nothing(files, capsys, tmp_path, argv, message, tiny=True):
    out = tmp_path / "never"
    code, err = _train(capsys, [*(a.format(**files) for a in argv), "--output-dir", out], tiny=tiny)
    assert_one_line_error(code, err, message)
    assert not out.exists()


@pytest.mark.parametrize("where, message", [
    ("{root}/a_file", "is a file"),
    ("{root}/a_file/run", "lies under the file"),
    ("/proc/hf_sparse_attn_test_run", "cannot be created"),
])
def test_unusable_output_folder_is_refused_before_anything_loads(files, capsys, monkeypatch, where, message):
    _no_loading(monkeypatch)
    before = snapshot(files["root"])
    code, err = _train(capsys, [*SHORT, "--output-dir", where.format(**files)])
    assert_one_line_error(code, err, message)
    assert snapshot(files["root"]) == before


def test_a_label_gap_trains_with_label_map(files, tmp_path, capsys):
    out = tmp_path / "mapped"
    code, err = _train(capsys, ["--dataset", files["gap"], "--label-map", "0=even,5=odd", "--max-steps", "1",
                                "--output-dir", out])
    assert code == 0, err
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "even", "1": "odd"}


def test_a_non_finite_step_stops_training_with_no_final_folder(tmp_path, capsys):
    """A finite but absurd learning rate blows the weights up at step 1: step 2's loss is NaN."""
    out = tmp_path / "diverged"
    code, err = _train(capsys, [*SHORT, "--lr", "1e30", "--warmup-ratio", "0", "--output-dir", out])
    assert_one_line_error(code, err, "step 2: the loss")
    assert "not finite" in err
    assert not (out / "final").exists()


def test_a_published_training_args_names_no_local_path(files, tmp_path, capsys):
    out = tmp_path / "published"
    code, err = _train(capsys, ["--dataset", files["csv"], "--max-steps", "1", "--output-dir", out])
    assert code == 0, err
    text = (out / "final" / "training_args.json").read_text()
    assert str(files["root"]) not in text and str(tmp_path) not in text  # uploaded as it is
    published = json.loads(text)
    assert published["dataset"] == "data.csv (local file)" and published["output_dir"] == "published (local folder)"
    live = json.loads((out / "training_args.json").read_text())  # the unpublished copy --resume checks against
    assert live["dataset"] == files["csv"]


# ------------------------------------------------------------------------------------------ findings 2 and 4


@pytest.fixture
def finished(tmp_path, capsys):
    out = tmp_path / "finished"
    code, err = _train(capsys, [*SHORT, "--output-dir", out])
    assert code == 0, err
    return out


def test_resume_with_other_evaluation_settings_is_refused(finished, capsys):
    before = snapshot(finished)
    code, err = _train(capsys, [*SHORT, "--output-dir", finished, "--resume", "--max-eval-examples", "8"])
    assert_one_line_error(code, err, "--resume must repeat the interrupted run's arguments")
    assert "--max-eval-examples 16 (now 8)" in err
    assert snapshot(finished) == before


class Interrupt(Exception):
    pass


class InterruptAfterStep(TrainingCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, step):
        if step == self.step:
            raise Interrupt(step)


def _config(out, *argv) -> TrainConfig:
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(TrainConfig).parse_args_into_dataclasses(args=[*TINY, *SHORT, *argv,
                                                                               "--output-dir", str(out)])
    return config


def test_overwrite_keeps_the_old_final_folder_until_the_new_one_is_complete(finished, capsys):
    old_final = snapshot(finished / "final")
    with pytest.raises(Interrupt):  # the overwriting run dies at step 3, after its checkpoint at step 2
        train(_config(finished, "--overwrite", "--seed", "7"), callbacks=[InterruptAfterStep(3)])
    assert snapshot(finished / "final") == old_final

    code, err = _train(capsys, [*SHORT, "--output-dir", finished])  # neither finished nor silently overwritten
    assert_one_line_error(code, err, "holds an unfinished run")
    code, err = _train(capsys, [*SHORT, "--seed", "7", "--output-dir", finished, "--resume"])
    assert code == 0, err
    new_final = snapshot(finished / "final")
    assert new_final["model.safetensors"] != old_final["model.safetensors"]
    assert json.loads((finished / "final" / "training_args.json").read_text())["seed"] == 7
    assert sorted(p.name for p in finished.iterdir() if p.name.startswith(".final")) == []


class _RunsCode:
    """Unpickling this runs ``Path(marker).touch()``: what an edited checkpoint file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_unpickles_nothing_that_runs_code(tmp_path, capsys):
    interrupted, marker = tmp_path / "interrupted", tmp_path / "code_ran"
    with pytest.raises(Interrupt):
        train(_config(interrupted), callbacks=[InterruptAfterStep(3)])  # leaves checkpoints/step-2
    assert not list((interrupted / "checkpoints" / "step-2").glob("custom_checkpoint_*"))  # no pickled scheduler

    def edited(name: str, planted: str) -> Path:
        """A copy of the interrupted run whose checkpoint file ``planted`` runs code when unpickled."""
        copy = tmp_path / name
        shutil.copytree(interrupted, copy)
        (copy / "checkpoints" / "step-2" / planted).write_bytes(pickle.dumps(_RunsCode(marker)))
        return copy

    # The checkpoint's digests refuse every planted file before anything is unpickled: the RNG states (which
    # accelerate would load with weights_only=True), its custom-state file (weights_only=False there) and the
    # optimizer state.
    for name, planted in (("rng", "random_states_0.pkl"), ("custom", "custom_checkpoint_0.pkl"),
                          ("optimizer", "optimizer.bin")):
        out = edited(name, planted)
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])
        assert_one_line_error(code, err, "changed after it was written")
        assert not marker.exists() and not (out / "final").exists()
    # With the digests removed too (as a checkpoint of an older version), accelerate's loader still refuses the
    # pickles that would run code.
    for name, planted in (("custom_undigested", "custom_checkpoint_0.pkl"), ("optimizer_undigested", "optimizer.bin")):
        out = edited(name, planted)
        state_path = out / "checkpoints" / "step-2" / "trainer_state.json"
        state = json.loads(state_path.read_text())
        state_path.write_text(json.dumps({k: v for k, v in state.items() if k not in ("sha256", "files")}))
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])
        assert_one_line_error(code, err, "cannot resume from")
        assert not marker.exists() and not (out / "final").exists()


@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_exits_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "busy"
    holder, _, go = start_paused("train", 1, tmp_path, [*TINY, *SHORT, "--output-dir", out])
    try:
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])
        assert_one_line_error(code, err, f"is in use by another run (pid {holder.pid} on ")
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--overwrite"])
        assert_one_line_error(code, err, f"(pid {holder.pid} on ")
    finally:
        go.write_text("go")
    assert holder.wait(timeout=300) == 0, holder.stderr.read()[-3000:]
    log = [json.loads(line) for line in (out / "final" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in log] == [(2, "validation"), (3, "validation"), (3, "test")]
    assert json.loads((out / "final" / "training_args.json").read_text())["output_dir"] == "busy (local folder)"
    code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])  # the lock went with its holder
    assert code == 0, err


# ------------------------------------------------------------------------------------------ hostile values
# Seeds outside what numpy's seeding takes, labels that are not integers, a config.json that is not JSON, and a
# --max-length beyond the model's positions: one line each, before anything is written.


@pytest.fixture(scope="module")
def hostile(files):
    root = files["root"]
    rows = [f"w{i} w{i + 1} w{i + 2}" for i in range(40)]
    empty_and_nan = root / "labels_empty_nan.csv"  # pandas reads the column as strings: '0', '1', NaN, 'nan'
    empty_and_nan.write_text("text,label\n" + "".join(f"{t},{['0', '1', '', 'nan'][i % 4]}\n"
                                                      for i, t in enumerate(rows)))
    float_and_nan = root / "labels_float_nan.csv"
    float_and_nan.write_text("text,label\n" + "".join(f"{t},{['0.0', '1.0', '0.0', 'nan'][i % 4]}\n"
                                                      for i, t in enumerate(rows)))
    broken = Path(make_tiny_checkpoint(root / "broken_config"))
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": 32,')
    return {**files, "empty_nan": empty_and_nan, "float_nan": float_and_nan, "broken": broken,
            "tiny_model": make_tiny_checkpoint(root / "tiny_model")}


HOSTILE_VALUES = [
    ("seed_negative", ["--dataset", "mr", "--seed", "-1"], "--seed must be an integer in [0, 4294967295]", True),
    ("seed_too_large", ["--dataset", "mr", "--seed", str(2 ** 32)], "got 4294967296", True),
    ("labels_empty_and_nan", ["--dataset", "{empty_nan}"], "row 3 of column 'label' is empty", True),
    ("labels_float_and_nan", ["--dataset", "{float_nan}"], "label 'nan' in row 4 of column 'label'", True),
    ("config_not_json", ["--model", "{broken}", "--dataset", "{csv}", "--cpu"], "config.json of", False),
    ("max_length_beyond_positions", ["--model", "{tiny_model}", "--dataset", "{csv}", "--max-length", "1000", "--cpu"],
     "--max-length 1000 exceeds the 64 positions", False),
]


@pytest.mark.parametrize("name, argv, message, tiny", HOSTILE_VALUES, ids=[case[0] for case in HOSTILE_VALUES])
def test_hostile_values_are_one_line_errors_and_write_nothing(hostile, capsys, tmp_path, name, argv, message, tiny):
    _assert_refused_writing_nothing(hostile, capsys, tmp_path, [*argv, "--max-steps", "1"], message, tiny=tiny)


# Sizes: each row runs in one child process under an address-space limit (tests/helpers/limited.py), so that a
# regression fails with a MemoryError instead of waking the OOM killer; every one must be refused before the
# allocation, naming the field and the limit.
_CONFIG_EDITS = {
    "layers_1e7": ({"num_hidden_layers": 10 ** 7}, "num_hidden_layers 10000000"),
    "layers_as_float": ({"num_hidden_layers": 1e7}, "'num_hidden_layers' expected int, got float"),
    "hidden_negative": ({"hidden_size": -5}, "hidden_size must be a positive integer, got -5"),
    "heads_zero": ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    "vocab_1e12": ({"vocab_size": 10 ** 12}, "vocab_size 1000000000000"),
    "hidden_not_multiple_of_heads": ({"num_attention_heads": 3}, "hidden_size 32 is not a multiple of "
                                                                 "num_attention_heads 3"),
}
# In a --from-scratch JSON, vocab_size is replaced by the size of the vocabulary built from the data.
_FROM_SCRATCH_EDITS = [name for name in _CONFIG_EDITS if name != "vocab_1e12"]


def _long_texts_csv(path: Path, n: int = 80, words: int = 2100) -> Path:
    path.write_text("text,label\n" + "".join(f"{' '.join(f'w{(i + j) % 90}' for j in range(words))},{i % 2}\n"
                                             for i in range(n)))
    return path


def _size_cases(root: Path) -> list[tuple[str, list, str]]:
    csv_path = make_text_csv(root / "sizes.csv", n=40)
    cases = [("max_length_1e8", [*TINY, "--dataset", csv_path, "--max-length", "100000000"],
              "--max-length 100000000"),
             ("batch_by_length", [*TINY, "--dataset", _long_texts_csv(root / "long.csv"), "--max-length", "2048",
                                  "--batch-size", "64"], "lower --batch-size or --max-length")]
    for name, (edit, message) in _CONFIG_EDITS.items():
        folder = Path(make_tiny_checkpoint(root / f"model_{name}"))
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **edit}))
        cases.append((f"model_{name}", ["--model", folder, "--dataset", csv_path, "--max-length", "32", "--cpu"],
                      message))
    for name in _FROM_SCRATCH_EDITS:
        edit, message = _CONFIG_EDITS[name]
        spec = root / f"scratch_{name}.json"
        spec.write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "hidden_size": 32, "intermediate_size": 37, **edit}))
        cases.append((f"from_scratch_{name}", [*TINY, "--from-scratch", spec, "--dataset", csv_path], message))
    return cases


SIZE_CASE_NAMES = (["max_length_1e8", "batch_by_length"] + [f"model_{n}" for n in _CONFIG_EDITS]
                   + [f"from_scratch_{n}" for n in _FROM_SCRATCH_EDITS])


@pytest.fixture(scope="module")
def size_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_sizes")
    cases = _size_cases(root)
    assert [name for name, _, _ in cases] == SIZE_CASE_NAMES
    runs = run_limited([(name, "hf_sparse_attn.training.cli:main",
                         [*argv, "--max-steps", "1", "--output-dir", root / "out" / name]) for name, argv, _ in cases],
                       root / "child", preload=("hf_sparse_attn.training.loop",))
    return root, {name: (runs[name], message) for name, _, message in cases}


@pytest.mark.parametrize("name", SIZE_CASE_NAMES)
def test_absurd_sizes_are_refused_before_allocation(size_runs, name):
    root, runs = size_runs
    (code, err), message = runs[name]
    assert_one_line_error(code, err, message)
    assert not (root / "out" / name).exists()


# ------------------------------------------------------------------------------------------ tampered state


def _interrupted(tmp_path, name="interrupted", data=None) -> Path:
    out = tmp_path / name
    extra = ["--dataset", str(data)] if data else []
    with pytest.raises(Interrupt):
        train(_config(out, *extra), callbacks=[InterruptAfterStep(3)])  # leaves checkpoints/step-2
    return out


def test_resume_refuses_data_that_changed_at_the_same_path(files, tmp_path, capsys):
    data = tmp_path / "data.csv"
    shutil.copyfile(files["csv"], data)
    out = _interrupted(tmp_path, data=data)
    lines = data.read_text().splitlines()  # other labels, same path and words: the old code resumed silently
    data.write_text("\n".join([lines[0]] + [f"{t.rsplit(',', 1)[0]},{1 - int(t.rsplit(',', 1)[1])}"
                                             for t in lines[1:]]) + "\n")
    before = snapshot(out)
    code, err = _train(capsys, [*SHORT, "--dataset", data, "--output-dir", out, "--resume"])
    assert_one_line_error(code, err, f"the data of --dataset {data} changed since the interrupted run")
    assert "--overwrite" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("edit", ["step", "optimizer"])
def test_resume_refuses_a_checkpoint_changed_after_it_was_written(tmp_path, capsys, edit):
    out = _interrupted(tmp_path)
    checkpoint = out / "checkpoints" / "step-2"
    if edit == "step":  # resume printed "step 99 of 6" and wrote a final model claiming 99 steps
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        (checkpoint / "trainer_state.json").write_text(json.dumps({**state, "step": 99}))
    else:  # one byte of the optimizer's moments changed (the archive still loads)
        blob = bytearray((checkpoint / "optimizer.bin").read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (checkpoint / "optimizer.bin").write_bytes(bytes(blob))
    before = snapshot(out)
    code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])
    assert_one_line_error(code, err, f"{checkpoint} changed after it was written")
    assert "--overwrite" in err
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------ full disks
# A small tmpfs filled up to a few hundred kB: the save fails in one line naming the folder and the bytes it needs,
# leaves no staging folder, keeps what was there, and the same command succeeds once space is freed.

CHECKPOINT_PAGES, FINAL_PAGES = 67, 42  # the tiny run's step-2 checkpoint and final folder, in 4 KiB pages


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    config = _config(out)
    train(config)
    return out


def test_a_full_disk_at_the_final_save_keeps_the_checkpoint_and_resume_completes(reference, tmp_path, capsys):
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "run"
        leave_free(disk, (CHECKPOINT_PAGES + 8) * 4096 + FINAL_PAGES * 4096 // 2)  # the checkpoint fits, final/ not
        code, err = _train(capsys, [*SHORT, "--output-dir", out])
        assert_one_line_error(code, err, f"no space left on the device of '{out}' writing the final model")
        assert "needs about" in err and "--resume" in err
        assert leftovers(out) == [] and not (out / "final").exists()
        checkpoint = snapshot(out / "checkpoints" / "step-2")
        assert "optimizer.bin" in checkpoint

        free_space(disk)
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])
        assert code == 0, err
        assert snapshot(out / "final")["model.safetensors"] == snapshot(reference / "final")["model.safetensors"]
        assert leftovers(out) == []


def test_a_full_disk_during_overwrite_keeps_the_old_final_folder(tmp_path, capsys):
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "run"
        code, err = _train(capsys, [*SHORT, "--output-dir", out])
        assert code == 0, err
        old_final = snapshot(out / "final")
        leave_free(disk, CHECKPOINT_PAGES * 4096 // 2)  # the new run's first checkpoint does not fit
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--overwrite", "--seed", "7"])
        assert_one_line_error(code, err, f"no space left on the device of '{out / 'checkpoints'}' writing checkpoint "
                                         "step-2")
        assert leftovers(out) == [] and not list((out / "checkpoints").glob("step-*"))
        assert snapshot(out / "final") == old_final

        free_space(disk)
        code, err = _train(capsys, [*SHORT, "--output-dir", out, "--overwrite", "--seed", "7"])
        assert code == 0, err
        assert json.loads((out / "final" / "training_args.json").read_text())["seed"] == 7
        assert leftovers(out) == []


# ------------------------------------------------------------------------------------------ already handled

HANDLED = [
    (["--dataset", "no/such/file.csv"], "does not exist"),
    (["--dataset", "mr", "--attn-impl", "bogus"], "unknown attn_impl"),
    (["--dataset", "mr", "--attn-impl", "entmax:alpha=3"], "needs alpha in (1, 2], got alpha=3"),
    (["--dataset", "mr", "--attn-impl", "sparsegen_lin:lambda=1"], "lambda"),
    (["--dataset", "mr", "--max-steps", "0"], "--max-steps must be >= 1"),
    (["--dataset", "mr", "--epochs", "0"], "--epochs must be >= 1"),
    (["--dataset", "mr", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--dataset", "mr", "--eval-batch-size", "0"], "--eval-batch-size must be >= 1"),
    (["--dataset", "mr", "--eval-every", "0"], "--eval-every must be >= 1"),
    (["--dataset", "mr", "--save-every", "0"], "--save-every must be >= 1"),
    (["--dataset", "mr", "--max-train-examples", "0"], "--max-train-examples must be >= 1"),
    (["--dataset", "mr", "--max-length", "3"], "leaves no room for text"),
    (["--dataset", "mr", "--lr", "0"], "--lr and --alpha-lr must be > 0"),
    (["--dataset", "mr", "--lr", "-1"], "--lr and --alpha-lr must be > 0"),
    (["--dataset", "mr", "--weight-decay", "-0.1"], "--weight-decay >= 0"),
    (["--dataset", "mr", "--warmup-ratio", "1"], "--warmup-ratio in [0, 1)"),
    (["--dataset", "mr", "--save-total-limit", "0"], "--save-total-limit must be >= 1"),
    (["--dataset", "mr", "--resume", "--overwrite"], "contradict"),
    (["--dataset", "mr", "--from-scratch", "no-such-preset"], "neither a preset"),
    (["--dataset", "{csv}", "--text-column", "review"], "no column 'review'"),
    (["--dataset", "{csv}", "--label-column", "stars"], "no column 'stars'"),
    (["--dataset", "{root}/a_file.csv"], "does not exist"),
]


@pytest.mark.parametrize("argv, message", HANDLED, ids=[f"handled-{i}" for i in range(len(HANDLED))])
def test_already_handled_bad_input(files, capsys, tmp_path, argv, message):
    _assert_refused_writing_nothing(files, capsys, tmp_path, argv, message)


def test_model_options_refused_with_from_scratch_and_missing_model_folder(capsys, tmp_path):
    code, err = _train(capsys, ["--dataset", "mr", "--model", "x/y", "--output-dir", tmp_path / "o"])
    assert_one_line_error(code, err, "drop --model/--tokenizer")
    code, err = _train(capsys, ["--dataset", "mr", "--model", str(tmp_path / "missing"), "--output-dir",
                                tmp_path / "o"], tiny=False)
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "o").exists()


def test_a_finished_run_is_neither_redone_nor_lost(finished, capsys):
    before = snapshot(finished)
    code, err = _train(capsys, [*SHORT, "--output-dir", finished])
    assert_one_line_error(code, err, "already holds a finished run")
    code, err = _train(capsys, [*SHORT, "--output-dir", finished, "--resume", "--lr", "1e-3"])
    assert_one_line_error(code, err, "--resume must repeat")
    assert snapshot(finished) == before
