"""``python -m hf_sparse_attn.training --help``: one spelling per option (hyphens, as the docs write them), each
default said once, options in sections, and nothing heavy imported to print it (underscores still accepted)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_sparse_attn.training import TrainConfig
from hf_sparse_attn.training import cli as train_cli

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "transformers", "datasets", "accelerate", "numpy")


@pytest.fixture(scope="module")
def help_run():
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "hf_sparse_attn.training", "--help"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"python -m hf_sparse_attn.training --help: {seconds:.2f} s wall, {len(done.stdout.splitlines())} lines")
    return done.stdout, done.stderr


def test_help_imports_nothing_heavy(help_run):
    _, importtime = help_run
    imported = {line.split("|")[-1].strip() for line in importtime.splitlines() if line.startswith("import time:")}
    heavy = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert not heavy, f"--help imported {heavy[:5]}"


def test_help_lists_each_option_once_with_hyphens_and_each_default_once(help_run):
    text, _ = help_run
    listed = re.findall(r"^\s+(--[a-z][\w-]*)", text, re.M)
    assert not [flag for flag in listed if "_" in flag], listed
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert listed.count(flag) == 1, flag
    entries = re.split(r"\n(?=\s{2}--)", text)
    for entry in entries:
        assert entry.count("default") <= 1, entry
    assert "(default: None)" not in text and "(default: False)" not in text
    alpha_lr = next(entry for entry in entries if entry.lstrip().startswith("--alpha-lr"))
    assert "(default: 0.01)" in alpha_lr  # a default the field's help does not give is added


def test_help_groups_the_options_in_sections(help_run):
    text, _ = help_run
    headers = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[a-z][a-z ,]*:", line)]
    assert headers[:5] == ["options", "model", "data", "optimisation", "evaluation, checkpoints and output"]
    grouped = [name for names in train_cli.OPTION_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(field.name for field in dataclasses.fields(TrainConfig)), \
        "every TrainConfig field belongs to exactly one section of --help"


def test_underscore_spellings_are_still_accepted():
    parser = train_cli.build_parser()
    hyphens = parser.parse_args(["--output-dir", "x", "--max-steps", "3", "--keep-checkpoints", "--attn-impl",
                                 "sparsemax"])
    underscores = parser.parse_args(["--output_dir", "x", "--max_steps", "3", "--keep_checkpoints", "--attn_impl",
                                     "sparsemax"])
    assert vars(hyphens) == vars(underscores)
    assert hyphens.max_steps == 3 and hyphens.keep_checkpoints is True and hyphens.lr == 1e-4


def test_a_missing_output_dir_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--dataset", "mr"])
    assert exit_info.value.code == 2
    assert "required: --output-dir" in capsys.readouterr().err


@pytest.mark.parametrize("argv, light", [
    (["-m", "--help"], True),  # python -m hf_sparse_attn.training --help, while Python locates the module
    (["/site/eval_suite/__main__.py", "--dataset", "mr", "-h"], True),  # python -m eval_suite ... -h
    (["-m", "--output-dir", "out"], False),  # a real run registers everything at import
    (["train.py", "--help"], False),  # a user's script: its imports must behave as always
    ([], False),
])
def test_only_a_help_request_of_a_python_m_command_keeps_the_import_light(argv, light):
    import hf_sparse_attn

    assert hf_sparse_attn.printing_help_only(argv) is light
