"""The loading-path matrix: every way transformers users load a model (rows: tests/helpers/loading_paths.PATHS) for
a stock folder and one of ours, in four settings (columns):

* ``stock``              a stock BERT folder with hf_sparse_attn imported gives exactly what it gives without it
                         (subprocess where the package cannot be imported): same class, same outputs, same log noise;
* ``ours_package``       our folder with hf_sparse_attn imported: a Sparse* model, the saved logits, no error logs;
* ``ours_remote_code``   our folder with torch + transformers only and trust_remote_code=True: the same outputs as
                         with the package, bitwise, from the folder's own code, no error logs;
* ``ours_no_trust``      our folder with neither: transformers refuses it, naming trust_remote_code (never a silent
                         softmax model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

import hf_sparse_attn  # noqa: F401  (registers our model type: the "with package" columns)
from tests.helpers import loading_paths
from tests.helpers.clean_env import _BLOCKER
from tests.helpers.tiny_models import TINY, make_tiny_checkpoint

COLUMNS = ["stock", "ours_package", "ours_remote_code", "ours_no_trust"]
SPARSE = "entmax_learned"


def _spread_alphas(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha_logit"):
                p.copy_(torch.empty(p.shape).uniform_(-2, 2, generator=generator))


def _make_folders(root: Path, attn_impl: str | None) -> tuple[dict, torch.Tensor]:
    """Every folder the paths load, and the classifier's logits on loading_paths.TEXTS computed before saving."""
    folders = {"classifier": make_tiny_checkpoint(root / "classifier", attn_impl=attn_impl, num_labels=3)}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folders["classifier"]).eval()
    if attn_impl is not None:  # learned alphas must survive every path: give each head its own
        _spread_alphas(model)
        model.save_pretrained(folders["classifier"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["classifier"])
    with torch.no_grad():
        reference = model(**tokenizer(loading_paths.TEXTS, padding=True, return_tensors="pt")).logits
    for head, auto_name in loading_paths.HEADS.items():
        config = transformers.BertConfig(**TINY, is_decoder=head == "causal_lm",
                                         num_labels=2 if head == "question_answering" else 3)
        torch.manual_seed(0)
        auto = getattr(transformers, auto_name)
        model = auto.from_config(config) if attn_impl is None else auto.from_config(config, attn_impl=attn_impl)
        _spread_alphas(model)
        folder = root / "heads" / head
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[head] = str(folder)
    return folders, reference


def _without_package(tmp_path: Path, mode: str, folders: dict) -> dict:
    out = tmp_path / f"results-{mode}.pt"
    script = Path(loading_paths.__file__).resolve()
    code = _BLOCKER + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{str(script)!r}, {str(out)!r}, {mode!r}, {json.dumps(folders)!r}]
        runpy.run_path({str(script)!r}, run_name="__main__")
        """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / f"modules-{mode}"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("loading")
    (stock, stock_logits), (ours, our_logits) = _make_folders(tmp_path / "stock", None), _make_folders(tmp_path / "ours", SPARSE)
    folders = {"stock": stock, "ours": ours}
    with_package = {name: loading_paths.run_all(folder_set, None) for name, folder_set in folders.items()}
    without = _without_package(tmp_path, "none", folders)
    remote = _without_package(tmp_path, "trust", {"ours": folders["ours"]})
    return {"with_package": with_package, "without": without, "remote": remote,
            "saved_logits": {"stock": stock_logits, "ours": our_logits}}


def _same_outputs(a: dict, b: dict) -> None:
    assert "raised" not in a, a.get("raised")
    assert "raised" not in b, b.get("raised")
    assert len(a["outputs"]) == len(b["outputs"]) > 0
    for x, y in zip(a["outputs"], b["outputs"]):
        assert torch.equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("path", loading_paths.PATHS)
def test_loading_path(matrix, path, column):
    if column == "stock":
        ours, theirs = matrix["with_package"]["stock"][path], matrix["without"]["stock"][path]
        _same_outputs(ours, theirs)
        assert ours["class"] == theirs["class"] and not ours["class"].startswith("Sparse")
        assert ours["errors"] == theirs["errors"]
    elif column == "ours_package":
        got = matrix["with_package"]["ours"][path]
        assert "raised" not in got, got.get("raised")
        assert got["class"].startswith("Sparse") and got["module"].startswith("hf_sparse_attn")
        assert got["errors"] == []
    elif column == "ours_remote_code":
        got, expected = matrix["remote"]["ours"][path], matrix["with_package"]["ours"][path]
        _same_outputs(got, expected)
        assert got["class"] == expected["class"] and got["module"].startswith("transformers_modules")
        assert got["errors"] == []
    else:
        got = matrix["without"]["ours"][path]
        assert "raised" in got, f"loaded as {got.get('class')} without trust_remote_code: a silent fallback"
        assert "trust_remote_code=True" in got["raised"]


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["stock", "ours"])
def test_loaded_logits_are_the_saved_models(matrix, folder):
    """Self-consistency is not enough: what the paths load computes what the model computed before it was saved."""
    for path in ("from_pretrained", "from_pretrained dtype=auto", "from_pretrained device_map=cpu"):
        assert torch.equal(matrix["with_package"][folder][path]["outputs"][0], matrix["saved_logits"][folder])
    assert matrix["with_package"]["ours"]["AutoConfig"]["class"] == "SparseBertConfig"
