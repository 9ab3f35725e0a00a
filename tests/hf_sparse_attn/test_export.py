"""Whole models under torch.export and torch.compile(fullgraph=True): in eval mode the same logits and attentions as
eager to 1e-6, for softmax and every sparse mapping (the traced solver is chosen while tracing); in training the
same loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_sparse_attn  # noqa: F401  (attn_impl= on the Auto classes)

from tests.helpers.tiny_models import random_batch, tiny_config

IMPLS = ["softmax", "sparsemax", "entmax15", "entmax:alpha=1.3", "entmax_learned", "sparsegen_lin:lambda=0.3",
         "sparsemax:layers=[-1]"]


def build(attn_impl, model_type="bert"):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type), attn_impl=attn_impl).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha_logit"):
                p.uniform_(-2, 2)
            if name.endswith("query.weight"):
                p.mul_(10.0)
    return model


class Logits(torch.nn.Module):
    """The model with output_attentions fixed, returning plain tensors (what export and compile trace)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        return (out.logits, *out.attentions)


def assert_same(got, expected):
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
    sparse = [(e == 0) for e in expected[1:]]
    assert all(torch.equal(g == 0, z) for g, z in zip(got[1:], sparse)), "zeros must fall where eager puts them"


@pytest.mark.parametrize("attn_impl", IMPLS)
def test_torch_export_equals_eager(attn_impl):
    wrapped = Logits(build(attn_impl))
    ids, mask = random_batch()
    with torch.no_grad():
        expected = wrapped(ids, mask)
        exported = torch.export.export(wrapped, (ids, mask)).module()
        assert_same(exported(ids, mask), expected)
        other_ids, other_mask = random_batch(seed=1, pad_last=(4, 0, 2))  # other values, same shapes
        assert_same(exported(other_ids, other_mask), wrapped(other_ids, other_mask))


@pytest.mark.slow
@pytest.mark.parametrize("attn_impl", IMPLS)
def test_torch_compile_fullgraph_equals_eager(attn_impl):
    torch._dynamo.reset()
    wrapped = Logits(build(attn_impl))
    ids, mask = random_batch()
    # aot_eager traces exactly what inductor would (fullgraph=True refuses any graph break) without compiling C++
    # kernels, which takes minutes per graph on a small CPU; bench/export.py times inductor itself.
    with torch.no_grad():
        # eager first: transformers installs its output-capturing hooks on the first call, under a threading lock
        # that dynamo cannot trace (stock models behave the same)
        expected = wrapped(ids, mask)
        compiled = torch.compile(wrapped, fullgraph=True, backend="aot_eager")
        assert_same(compiled(ids, mask), expected)
        other_ids, other_mask = random_batch(seed=1, pad_last=(4, 0, 2))
        assert_same(compiled(other_ids, other_mask), wrapped(other_ids, other_mask))


def test_stock_eager_export_still_works():
    torch.manual_seed(0)
    stock = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_implementation="eager").eval()
    wrapped = Logits(stock)
    ids, mask = random_batch()
    with torch.no_grad():
        assert_same(torch.export.export(wrapped, (ids, mask)).module()(ids, mask), wrapped(ids, mask))


@pytest.mark.slow
@pytest.mark.parametrize("attn_impl", ["sparsemax", "entmax_learned"])
def test_torch_compile_fullgraph_trains_like_eager(attn_impl):
    """Training under torch.compile(fullgraph=True): the loss and every gradient (learned alphas included) as in
    eager mode. transformers writes config.problem_type on the first call with labels, after the encoder; dynamo
    dropped that write after the traced solver's while_loop, and the compiled model returned loss=None."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_hidden_layers=1),
                                                           attn_impl=attn_impl)
    ids, mask = random_batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # eager first: see the test above
    model.train()  # the tiny config has no dropout: compiled and eager steps compute the same function
    eager = copy.deepcopy(model)
    expected = eager(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert got is not None, "the compiled model returned no loss"
    got.backward()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert model.config.problem_type == eager.config.problem_type == "single_label_classification"
    grads = dict(eager.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    assert any(name.endswith("alpha_logit") for name in grads) == (attn_impl == "entmax_learned")
