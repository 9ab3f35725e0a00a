"""Files written atomically get the permissions of any other new file: 0666 minus the process umask, not the
0600 of the temporary file they were written as."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import pytest

from hf_sparse_attn.files import atomic_path, atomic_write_json, atomic_write_text


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002], ids=oct)
def test_atomic_writers_respect_the_umask(tmp_path, mask):
    with umask(mask):
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        with atomic_path(tmp_path / "figure.png") as tmp:
            tmp.write_bytes(b"png")
        (tmp_path / "plain.txt").write_text("x")  # what the user's other tools would create
    expected = 0o666 & ~mask
    assert mode(tmp_path / "plain.txt") == expected
    for name in ("report.html", "results.json", "figure.png"):
        assert mode(tmp_path / name) == expected, (name, oct(mode(tmp_path / name)), oct(expected))


def test_replacing_a_file_gives_the_new_file_the_umask_mode(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    with umask(0o022):
        atomic_write_text(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o644
