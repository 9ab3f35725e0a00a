"""Fixtures shared by the card tests: one evaluated tiny entmax15 checkpoint per module, and a free copy per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.tiny_models import make_checkpoint, make_results


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny entmax15 checkpoint and the results.json of its default-tier evaluation (built once per module)."""
    root = tmp_path_factory.mktemp("evaluated")
    checkpoint = make_checkpoint(root / "ckpt", attn_impl="entmax15")
    return checkpoint, make_results(checkpoint, root / "eval")


@pytest.fixture
def fresh(evaluated, tmp_path) -> tuple[Path, Path]:
    """A copy of the checkpoint and its evaluation folder, free to change."""
    checkpoint, results = evaluated
    shutil.copytree(checkpoint, tmp_path / "ckpt")
    shutil.copytree(results.parent, tmp_path / "eval")
    return tmp_path / "ckpt", tmp_path / "eval" / "results.json"
