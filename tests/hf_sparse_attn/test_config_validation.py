"""The sparse config classes under transformers' strict config validation (run by save_pretrained)."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

import hf_sparse_attn  # noqa: F401  (attn_impl= on the Auto classes)

from tests.helpers.tiny_models import random_batch, tiny_config


def test_output_attentions_in_the_config_saves_and_reloads(tmp_path):
    """config.output_attentions = True is accepted on a sparse model (its attention returns probabilities); saving
    must accept it too, and the reloaded model returns the same attentions without being asked per call."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_impl="sparsemax").eval()
    model.config.output_attentions = True
    ids, mask = random_batch()
    expected = model(input_ids=ids, attention_mask=mask).attentions
    assert expected is not None and len(expected) == 2
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.output_attentions is True
    got = reloaded(input_ids=ids, attention_mask=mask).attentions
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert any(bool((e == 0).any()) for e in expected)  # sparsemax probabilities, with exact zeros


def test_the_stock_validators_still_run_on_a_sparse_config():
    """Our validate() runs every validator transformers registered for the stock class, not only our override."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_impl="sparsemax")
    names = [v.__name__ for v in type(model.config).__mro__[1].__class_validators__]
    assert "validate_output_attentions" in names and len(names) > 1
    model.config.output_attentions = True
    model.config.validate()
    model.config._attn_implementation_internal = "sdpa"  # a stock implementation: the stock rule applies again
    try:
        model.config.validate()
    except ValueError as error:
        assert "output_attentions" in str(error)
    else:
        raise AssertionError("output_attentions with sdpa passed validation")
