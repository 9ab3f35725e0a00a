"""attn_layers: sparse attention in chosen layers only, transformers' eager softmax (bitwise) everywhere else."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_sparse_attn
from hf_sparse_attn import parse_attn_impl

from tests.helpers.clean_env import remote_code_outputs
from tests.helpers.tiny_models import MODEL_TYPES, random_batch, tiny_config


def pair(model_type, attn_impl, layers, n_layers=3, seed=0):
    """(sparse model with ``layers``, stock eager model) holding the same random weights."""
    overrides = {"n_layers": n_layers} if model_type == "distilbert" else {"num_hidden_layers": n_layers}
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    stock = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # peaky scores, so that the sparse layers have zeros on real keys
        for name, p in stock.named_parameters():
            if name.endswith(("query.weight", "q_lin.weight")):
                p.mul_(20.0)
    sparse = AutoModelForSequenceClassification.from_config(config, attn_impl=attn_impl, attn_layers=layers).eval()
    missing, unexpected = sparse.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected and all("sparse_attn" in k for k in missing)
    return sparse, stock


def layer_list(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("attn_impl", ["sparsemax", "entmax_learned", "sparsegen_lin:lambda=0.3"])
def test_last_layer_only_leaves_the_others_bitwise_stock(model_type, attn_impl):
    sparse, stock = pair(model_type, attn_impl, [-1])
    ids, mask = random_batch()
    a = sparse(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    b = stock(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    for x, y in zip(a.hidden_states[:-1], b.hidden_states[:-1]):
        assert torch.equal(x, y)
    for x, y in zip(a.attentions[:-1], b.attentions[:-1]):
        assert torch.equal(x, y)
    assert not torch.equal(a.attentions[-1], b.attentions[-1]), "the selected layer must run the sparse mapping"
    if attn_impl != "entmax_learned":  # alpha 1.5 on random weights need not reach a zero
        keep = mask[:, None, None, :].bool().expand_as(a.attentions[-1])
        assert (a.attentions[-1][keep] == 0).any(), "the selected layer must be sparse"


def test_a_softmax_layer_between_sparse_ones_is_bitwise_stock():
    """Layers 0 and 2 sparse: layer 1, fed the sparse model's own input to it, gives the stock layer's output."""
    sparse, stock = pair("bert", "entmax15", [0, 2])
    seen = {}
    layer_list(sparse)[1].register_forward_hook(lambda m, args, out: seen.update(input=args[0], output=out))
    ids, mask = random_batch()
    sparse(input_ids=ids, attention_mask=mask)

    def feed_sparse_input(module, args):
        return (seen["input"], *args[1:])

    layer_list(stock)[1].register_forward_pre_hook(feed_sparse_input)
    got = {}
    layer_list(stock)[1].register_forward_hook(lambda m, args, out: got.update(output=out))
    stock(input_ids=ids, attention_mask=mask)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    assert torch.equal(first(seen["output"]), first(got["output"]))


def test_spec_alphas_and_parameters_show_the_selection():
    sparse, _ = pair("bert", "entmax_learned:alpha_init=1.3", [-1])
    spec = hf_sparse_attn.get_spec(sparse)
    assert spec.layers == (2,) and str(spec) == "entmax_learned:alpha_init=1.3,layers=[2]"
    alphas = hf_sparse_attn.attention_alphas(sparse)
    assert alphas.shape == (3, 4)
    assert torch.equal(alphas[:2], torch.ones(2, 4))
    torch.testing.assert_close(alphas[2], torch.full((4,), 1.3))
    assert [n for n, _ in sparse.named_parameters() if "alpha_logit" in n] == [
        "bert.encoder.layer.2.attention.self.sparse_attn.alpha_logit"]
    assert sparse.config.sparse_attention["layers"] == [2]


@pytest.mark.parametrize("text, layers", [("sparsemax:layers=-1", (-1,)), ("sparsemax:layers=[0,-1]", (0, -1)),
                                          ("entmax:alpha=1.3,layers=[1]", (1,)), ("sparsemax", None)])
def test_layers_in_the_name(text, layers):
    spec = parse_attn_impl(text)
    assert spec.layers == layers
    assert parse_attn_impl(str(spec)) == spec


def test_save_and_reload_keeps_the_selection(tmp_path):
    sparse, _ = pair("roberta", "entmax_learned", [0])
    with torch.no_grad():
        sparse.roberta.encoder.layer[0].attention.self.sparse_attn.alpha_logit.uniform_(-2, 2)
    sparse.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sparse_attention"]["layers"] == [0]
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, mask = random_batch()
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, sparse(input_ids=ids, attention_mask=mask).logits)
    assert torch.equal(hf_sparse_attn.attention_alphas(again), hf_sparse_attn.attention_alphas(sparse))


def test_sparsify_with_layers_and_again_with_others():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_hidden_layers=3)).eval()
    hf_sparse_attn.sparsify(model, "entmax_learned", layers=[0, 1])
    assert hf_sparse_attn.get_spec(model).layers == (0, 1)
    hf_sparse_attn.sparsify(model, "sparsemax", layers=[-1])
    assert hf_sparse_attn.get_spec(model).layers == (2,)
    assert not [n for n, _ in model.named_parameters() if "alpha_logit" in n]
    assert hf_sparse_attn.attention_alphas(model)[:, 0].tolist() == [1.0, 1.0, 2.0]


@pytest.mark.slow
def test_remote_code_reproduces_a_selection(tmp_path):
    sparse, _ = pair("bert", "entmax_learned", [-1])
    ids, mask = random_batch()
    expected = sparse(input_ids=ids, attention_mask=mask, output_attentions=True)
    folder = tmp_path / "ckpt"
    sparse.save_pretrained(folder)
    got = remote_code_outputs(folder, ids, mask, tmp_path)
    assert torch.equal(got["logits"], expected.logits)
    for x, y in zip(got["attentions"], expected.attentions):
        assert torch.equal(x, y)
