"""hf_sparse_attn.output_dir and public_names: the lock, the folder swap (and its crash recovery), published names."""

from __future__ import annotations

import os

import pytest

import hf_sparse_attn.output_dir as output_dir
from hf_sparse_attn.output_dir import (LOCK_FILE, OutputDirError, OutputLock, check_output_dir,
                                       recover_interrupted_replace, replace_folder)
from hf_sparse_attn.public_names import MINILM_HUB_ID, absolute_paths_in, local_name, public_name


def _folder(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_held_lock_names_its_holder_and_a_released_one_is_free(tmp_path):
    first = OutputLock(tmp_path / "out").acquire()
    with pytest.raises(OutputDirError, match=f"in use by another run \\(pid {os.getpid()} on "):
        OutputLock(tmp_path / "out").acquire()  # a second open file: flock refuses it even in one process
    first.release()
    with OutputLock(tmp_path / "out"):
        pass


def test_a_lock_removes_the_folders_it_created_when_nothing_was_written(tmp_path):
    OutputLock(tmp_path / "a" / "b").acquire().release()
    assert list(tmp_path.iterdir()) == []
    lock = OutputLock(tmp_path / "kept").acquire()
    (tmp_path / "kept" / "results.json").write_text("{}")
    lock.release()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [LOCK_FILE, "results.json"]


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "f").write_text("x") and d / "f", "is a file"),
    (lambda d: (d / "f").write_text("x") and d / "f" / "sub", "lies under the file"),
])
def test_unusable_folders_are_refused_without_creating_anything(tmp_path, make, message):
    with pytest.raises(OutputDirError, match=message):
        check_output_dir(make(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("atomic", [True, False])
def test_replace_folder_leaves_only_the_new_folder(tmp_path, monkeypatch, atomic):
    if not atomic:
        monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    old = _folder(tmp_path / "target", stale="old")
    new = _folder(tmp_path / ".target.new", fresh="new")
    replace_folder(new, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["fresh"]


def test_a_crash_between_the_two_renames_is_undone(tmp_path, monkeypatch):
    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    old = _folder(tmp_path / "target", model="old")
    new = _folder(tmp_path / ".target.new", model="new")
    real_replace, calls = os.replace, []

    def dies_on_second_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(output_dir.os, "replace", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(new, old)
    monkeypatch.setattr(output_dir.os, "replace", real_replace)
    assert not old.exists()
    recover_interrupted_replace(old)
    assert (old / "model").read_text() == "old"


@pytest.mark.parametrize("value, published", [
    ("mr", "mr"), ("org/name", "org/name"), ("tiny-bert", "tiny-bert"), (None, None), (3, 3),
    ("{tmp}/data/reviews.csv", "reviews.csv (local file)"),
    ("{tmp}/data", "data (local folder)"),
    ("{tmp}/run-3/final", "run-3/final (local folder)"),
])
def test_public_names_hide_the_local_layout(tmp_path, value, published):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.csv").write_text("text,label\n")
    (tmp_path / "run-3" / "final").mkdir(parents=True)
    value = value.format(tmp=tmp_path) if isinstance(value, str) else value
    assert public_name(value) == published
    assert public_name(published) == published  # idempotent
    assert absolute_paths_in({"k": [published]}) == []
    if isinstance(published, str) and "(local" in published:
        assert local_name(published) == published.rsplit(" (", 1)[0]


def test_the_embedded_minilm_is_published_by_its_hub_id(minilm_path):
    assert public_name(minilm_path) == MINILM_HUB_ID


def test_absolute_paths_are_found_anywhere_in_a_record():
    record = {"a": "/home/me/x", "b": [{"c": "C:\\data"}, "~/y"], "d": "http://host/p", "e": "/", "f": "rel/p"}
    assert absolute_paths_in(record) == [("a", "/home/me/x"), ("b[0].c", "C:\\data"), ("b[1]", "~/y")]
