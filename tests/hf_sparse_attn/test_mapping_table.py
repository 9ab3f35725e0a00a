"""The mapping table: a mapping declared once (here at run time, with a parameter no built-in mapping has) reaches
the parser, the Auto classes, the attention modules, alpha, saving and the cards without any other code."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_sparse_attn
from hf_sparse_attn import ATTN_IMPLS, AttnImpl, MappingParameter, SparseAttnError, SparseAttnSpec, parse_attn_impl
from hf_sparse_attn.sparse_attn_mappings import sparsemax

from tests.helpers.tiny_models import random_batch, tiny_config

SCALED = AttnImpl(
    "scaled_sparsemax",
    lambda mapping, scores: sparsemax(scores * mapping.spec.parameters["scale"]),
    lambda values: 2.0,
    "sparsemax of the scores times {scale:g}",
    (MappingParameter("scale", "S", "scale > 0", lambda s: s > 0, 3.0),),
)


@pytest.fixture
def scaled_sparsemax():
    hf_sparse_attn.declare_attn_impl(SCALED)
    yield SCALED
    del ATTN_IMPLS[SCALED.name]


def build(attn_impl, **kwargs):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_impl=attn_impl, **kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("query.weight"):
                p.mul_(10.0)  # scores wide enough for exact zeros
    return model


def test_a_declared_mapping_parses_with_its_own_parameter(scaled_sparsemax):
    spec = parse_attn_impl("scaled_sparsemax:scale=3,layers=[-1]")
    assert spec.parameters == {"scale": 3.0} and spec.layers == (-1,)
    assert str(spec) == "scaled_sparsemax:scale=3,layers=[-1]"
    assert parse_attn_impl("scaled_sparsemax", scale=3) == SparseAttnSpec("scaled_sparsemax", (("scale", 3.0),))
    for bad, fragment in (("scaled_sparsemax", "needs scale > 0: write attn_impl='scaled_sparsemax:scale=3'"),
                          ("scaled_sparsemax:scale=-1", "needs scale > 0, got scale=-1"),
                          ("scaled_sparsemax:scale=2,alpha=1.5", "takes scale, not alpha"),
                          ("sparsemax:scale=2", "sparsemax takes no parameters, not scale")):
        with pytest.raises(SparseAttnError, match=fragment):
            parse_attn_impl(bad)
    with pytest.raises(SparseAttnError, match=r"scaled_sparsemax:scale=S \(scale > 0\)"):
        parse_attn_impl("relu")  # the list of choices names it


def test_a_declared_mapping_runs_reports_alpha_saves_and_reaches_the_cards(scaled_sparsemax, tmp_path):
    from hub_cards.checkpoint import alpha_of_setting, read_checkpoint
    from hub_cards.metadata import BASE_TAGS, mapping_tag, merge_metadata
    from hub_cards.render import _attn_label

    model = build("scaled_sparsemax", attn_scale=3)
    # sparsegen-lin with lambda = 2/3 is sparsemax of 3 x the scores, through the built-in table entry
    reference = build("sparsegen_lin", attn_lambda=2 / 3)
    ids, mask = random_batch()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        expected = reference(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
        torch.testing.assert_close(g.sum(-1), torch.ones_like(g.sum(-1)))
    assert any(bool((g == 0).any()) for g in got)
    assert torch.equal(hf_sparse_attn.attention_alphas(model), torch.full((2, 4), 2.0))

    model.save_pretrained(tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())["sparse_attention"]
    assert recorded == {"attn_impl": "scaled_sparsemax", "alpha": None, "lambda": None, "alpha_init": None,
                        "scale": 3.0, "learnable": False, "layers": None}
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf_sparse_attn.get_spec(reloaded) == hf_sparse_attn.get_spec(model)

    info = read_checkpoint(tmp_path)
    assert _attn_label(info) == "sparsemax of the scores times 3"
    assert alpha_of_setting(info.sparse_attention) == 2.0
    merged = merge_metadata({"tags": [mapping_tag("scaled_sparsemax"), "mine"]},
                            {"tags": BASE_TAGS + [mapping_tag("sparsemax")]})
    assert merged["tags"] == BASE_TAGS + ["sparsemax", "mine"]  # its tag is ours, replaced like the built-in ones


def test_every_built_in_mapping_is_declared_with_its_alpha():
    expected = {"softmax": 1.0, "sparsemax": 2.0, "entmax15": 1.5, "entmax:alpha=1.3": 1.3,
                "sparsegen_lin:lambda=0.5": 2.0}
    for attn_impl, alpha in expected.items():
        spec = parse_attn_impl(attn_impl)
        assert ATTN_IMPLS[spec.attn_impl].fixed_alpha(spec.parameters) == alpha
        assert not spec.learnable
    assert parse_attn_impl("entmax_learned").learnable
    assert ATTN_IMPLS["entmax_learned"].fixed_alpha({"alpha_init": 1.5}) is None
