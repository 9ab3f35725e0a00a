"""The card's "How to load it" snippets run as written (the repo id replaced by the folder): with hf_sparse_attn, and
with torch + transformers alone through trust_remote_code, giving the same logits and sparse attentions."""

from __future__ import annotations

import re

import pytest
import torch

import hf_sparse_attn
from hub_cards.render import render_card
from tests.helpers.clean_env import run_without_package
from tests.helpers.tiny_models import make_checkpoint

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def usage_blocks(card_text: str, folder) -> list[str]:
    usage = card_text.split("<!-- hf-sparse-attn:begin:usage -->")[1].split("<!-- hf-sparse-attn:end:usage -->")[0]
    return [block.replace('"ORG/NAME"', repr(str(folder))) for block in PYTHON_BLOCK.findall(usage)]


@pytest.mark.slow
@pytest.mark.parametrize("attn_impl", ["entmax_learned", "sparsemax:layers=[-1]"])
def test_card_snippets_load_the_model_both_ways(tmp_path, attn_impl):
    folder = make_checkpoint(tmp_path / "ckpt", attn_impl=attn_impl)
    blocks = usage_blocks(render_card(folder, None).read_text(), folder)
    assert len(blocks) == 2, "one snippet with trust_remote_code alone, one with the package"
    remote_code, with_package = blocks
    assert "trust_remote_code=True" in remote_code and "import hf_sparse_attn" in with_package
    namespace = {}
    exec(with_package, namespace)  # noqa: S102 - the card's own code, as a reader would paste it
    outputs = namespace["outputs"]
    assert type(namespace["model"]).__name__.startswith("Sparse")
    assert hf_sparse_attn.get_spec(namespace["model"]).attn_impl == attn_impl.split(":")[0]
    inputs = namespace["inputs"]
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    run_without_package(remote_code + f"""
import torch
inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
out = model.eval()(**inputs, output_attentions=True)
torch.save({{"logits": out.logits, "attentions": list(out.attentions)}}, {str(tmp_path / 'out.pt')!r})
""", cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt")
    assert torch.equal(got["logits"], outputs.logits)
    for x, y in zip(got["attentions"], outputs.attentions):
        assert torch.equal(x, y)
