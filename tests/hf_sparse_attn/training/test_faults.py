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
from tests.helpers.faults import assert_one_line_error, run_command, snapshot, start_paused
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
    ("truncated_weights", ["--model", "{truncated}", "--dataset", "{csv}", "--max-steps", "1", "--cpu"],
     "not a readable safetensors file"),
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

    # accelerate loads its RNG states with weights_only=True: the planted pickle is ignored, the run resumes.
    out = edited("rng", "random_states_0.pkl")
    code, err = _train(capsys, [*SHORT, "--output-dir", out, "--resume"])
    assert code == 0, err
    assert not marker.exists() and (out / "final" / "final_metrics.json").is_file()
    # accelerate's custom-state file (weights_only=False there) and a planted optimizer state: refused in one line.
    for name, planted in (("custom", "custom_checkpoint_0.pkl"), ("optimizer", "optimizer.bin")):
        out = edited(name, planted)
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
