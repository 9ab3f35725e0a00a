"""attn_impl= on stock HF encoders: injection, masking, dtypes, errors, save/load and remote code."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForSequenceClassification

import hf_sparse_attn
from hf_sparse_attn import SparseAttnError, parse_attn_impl
from hf_sparse_attn.sparse_attn_modeling import AUTO_CLASS_NAMES, make_attention_forward

from tests.helpers.clean_env import remote_code_outputs
from tests.helpers.tiny_models import MODEL_TYPES, random_batch, tiny_config

SPARSE_IMPLS = ["sparsemax", "entmax15", "entmax:alpha=1.3", "entmax_learned", "sparsegen_lin:lambda=0.3"]


def build(model_type="bert", attn_impl="entmax15", auto=AutoModelForSequenceClassification, seed=0, **cfg):
    torch.manual_seed(seed)
    return auto.from_config(tiny_config(model_type, **cfg), attn_impl=attn_impl).eval()


def padding_keep(mask):
    return mask[:, None, None, :].bool()


def spread_learned_alphas(model):
    """Give every head its own alpha, so a round trip that lost or mixed them up would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha_logit"):
                p.uniform_(-2, 2)


# ---------------------------------------------------------------- spec parsing and errors


def test_parse_names_and_companion_kwargs():
    assert parse_attn_impl("entmax:alpha=1.3").parameters["alpha"] == 1.3
    assert parse_attn_impl("entmax", alpha=1.7).parameters["alpha"] == 1.7
    assert parse_attn_impl("sparsegen_lin:lambda=-2").parameters["lambda"] == -2.0
    assert parse_attn_impl("entmax_learned").parameters["alpha_init"] == 1.5
    assert str(parse_attn_impl("entmax", alpha=1.25)) == "entmax:alpha=1.25"


@pytest.mark.parametrize(
    "request_kwargs, fragment",
    [
        (dict(attn_impl="entmox"), "unknown attn_impl"),
        (dict(attn_impl="entmax:alpha=2.5"), "(1, 2]"),
        (dict(attn_impl="entmax", attn_alpha=1.0), "(1, 2]"),
        (dict(attn_impl="entmax"), "needs alpha"),
        (dict(attn_impl="sparsegen_lin", attn_lambda=1.0), "lambda < 1"),
        (dict(attn_impl="sparsemax", attn_alpha=1.5), "takes no parameters"),
        (dict(attn_alpha=1.5), "needs attn_impl"),
        (dict(attn_impl="entmax15", attn_implementation="sdpa"), "not both"),
    ],
)
def test_bad_requests_fail_in_one_line_naming_the_fix(request_kwargs, fragment):
    with pytest.raises(SparseAttnError) as err:
        AutoModelForSequenceClassification.from_config(tiny_config("bert"), **request_kwargs) if "attn_implementation" not in request_kwargs \
            else AutoModelForSequenceClassification.from_pretrained("unused-path", **request_kwargs)
    message = str(err.value)
    assert fragment in message and "\n" not in message


def test_unknown_name_lists_the_choices():
    with pytest.raises(SparseAttnError, match="softmax, sparsemax, entmax15"):
        parse_attn_impl("relu")


def test_model_without_attention_interface_is_refused():
    from transformers import MPNetConfig

    config = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    with pytest.raises(SparseAttnError, match="AttentionInterface"):
        AutoModelForSequenceClassification.from_config(config, attn_impl="sparsemax")


# ---------------------------------------------------------------- behaviour of the attention


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_softmax_through_our_path_equals_stock_eager(model_type):
    ours = build(model_type, "softmax")
    torch.manual_seed(0)
    stock = AutoModelForSequenceClassification.from_config(tiny_config(model_type), attn_implementation="eager").eval()
    stock.load_state_dict(ours.state_dict())
    ids, mask = random_batch()
    a = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
    b = stock(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-6, atol=1e-6)
    for x, y in zip(a.attentions, b.attentions):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("attn_impl", SPARSE_IMPLS)
def test_every_layer_and_head_returns_sparse_probabilities(model_type, attn_impl):
    model = build(model_type, attn_impl)
    ids, mask = random_batch()
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 2
    keep = padding_keep(mask)
    for probs in out.attentions:
        assert probs.shape == (3, 4, 9, 9)
        assert torch.isfinite(probs).all()
        assert (probs.masked_select(~keep.expand_as(probs)) == 0).all(), "padded keys must get exactly 0"
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 9))
    assert model.config._attn_implementation == parse_attn_impl(attn_impl).attn_impl


def test_attentions_are_the_mapping_of_the_scores():
    """output_attentions returns exactly sparsemax(QK^T * scale + mask) of layer 0."""
    model = build("bert", "sparsemax")
    attn = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        attn.query.weight.mul_(20.0)  # peaky scores, as in a trained model, so zeros fall on real keys too
    ids, mask = random_batch()
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    h = out.hidden_states[0]
    q = attn.query(h).view(3, 9, 4, 8).transpose(1, 2)
    k = attn.key(h).view(3, 9, 4, 8).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) * attn.scaling
    s = s.masked_fill(~padding_keep(mask), float("-inf"))
    torch.testing.assert_close(out.attentions[0], hf_sparse_attn.sparsemax(s))
    real_keys = out.attentions[0].masked_select(padding_keep(mask).expand_as(out.attentions[0]))
    assert (real_keys == 0).float().mean() > 0.2


@pytest.mark.parametrize("attn_impl", SPARSE_IMPLS + ["softmax"])
def test_all_masked_rows_give_zeros_not_nan(attn_impl):
    spec = parse_attn_impl(attn_impl)
    forward = make_attention_forward(spec.attn_impl)
    module = torch.nn.Module()
    module.sparse_attn = hf_sparse_attn.SparseAttnMapping(spec, num_heads=2)
    q, k, v = (torch.randn(2, 2, 5, 4, requires_grad=True) for _ in range(3))
    additive = torch.zeros(2, 1, 5, 5)
    additive[0, :, 2, :] = torch.finfo(torch.float32).min  # query 2 of example 0 sees no key
    additive[1, :, :, 3:] = torch.finfo(torch.float32).min
    out, probs = forward(module, q, k, v, additive, scaling=0.5)
    assert torch.isfinite(out).all() and torch.isfinite(probs).all()
    assert (probs[0, :, 2] == 0).all()
    assert (probs[1, :, :, 3:] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_gradcheck_through_the_attention_function():
    forward = make_attention_forward("entmax_learned")
    module = torch.nn.Module()
    module.sparse_attn = hf_sparse_attn.SparseAttnMapping(parse_attn_impl("entmax_learned:alpha_init=1.4"), 2).double()
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., -1] = torch.finfo(torch.float64).min
    q, k, v = (torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))

    assert torch.autograd.gradcheck(lambda q, k, v: forward(module, q, k, v, mask, scaling=1.0)[0], (q, k, v))
    out = forward(module, q, k, v, mask, scaling=1.0)[0]
    out.pow(2).sum().backward()
    assert module.sparse_attn.alpha_logit.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("attn_impl", ["sparsemax", "entmax15", "entmax_learned"])
def test_half_precision_models_stay_finite(dtype, attn_impl):
    model = build("bert", attn_impl)
    ids, mask = random_batch()
    reference = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    model = model.to(dtype)
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert torch.isfinite(out.logits.float()).all()
    for probs, ref in zip(out.attentions, reference):
        assert probs.dtype == dtype and torch.isfinite(probs.float()).all()
        assert (probs.masked_select(~padding_keep(mask).expand_as(probs)) == 0).all()
        torch.testing.assert_close(probs.float(), ref, atol=0.05, rtol=0.05)


def test_learned_alpha_is_per_head_inside_bounds_and_trains():
    model = build("bert", "entmax_learned:alpha_init=1.3")
    alphas = hf_sparse_attn.attention_alphas(model)
    assert alphas.shape == (2, 4)
    torch.testing.assert_close(alphas, torch.full((2, 4), 1.3))
    logits = [p for n, p in model.named_parameters() if n.endswith("sparse_attn.alpha_logit")]
    assert len(logits) == 2 and all(p.shape == (4,) for p in logits)
    model.train()
    optimizer = torch.optim.SGD(logits, lr=50.0)
    ids, mask = random_batch()
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = hf_sparse_attn.attention_alphas(model)
    assert not torch.equal(after, alphas)
    assert ((after > 1) & (after < 2)).all()


# ---------------------------------------------------------------- every head class, every family


@pytest.mark.parametrize("auto_name", AUTO_CLASS_NAMES)
def test_every_auto_head_class_of_bert(auto_name):
    auto_cls = getattr(transformers, auto_name)
    config = tiny_config("bert", is_decoder=auto_name == "AutoModelForCausalLM", num_labels=2)
    model = auto_cls.from_config(config, attn_impl="sparsemax").eval()
    ids, mask = random_batch()
    if auto_name == "AutoModelForMultipleChoice":
        ids, mask = ids[None], mask[None]
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert all((a == 0).any() for a in out.attentions)
    assert type(model).__name__.startswith("Sparse") and isinstance(model, auto_cls._model_mapping[type(config)])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_and_reload_keeps_mapping_alpha_and_logits(model_type, tmp_path):
    model = build(model_type, "entmax_learned")
    spread_learned_alphas(model)
    ids, mask = random_batch()
    before = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["sparse_attention"]["attn_impl"] == "entmax_learned"
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("sparse_attn_modeling.Sparse")
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "sparse_attn_modeling.py").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    after = reloaded(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert torch.equal(before.logits, after.logits)
    torch.testing.assert_close(hf_sparse_attn.attention_alphas(reloaded), hf_sparse_attn.attention_alphas(model), rtol=0, atol=0)
    for x, y in zip(before.attentions, after.attentions):
        assert torch.equal(x, y)


def test_load_stock_checkpoint_with_attn_impl_and_override(tmp_path):
    torch.manual_seed(0)
    stock = AutoModelForSequenceClassification.from_config(tiny_config("roberta")).eval()
    stock.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_impl="entmax", attn_alpha=1.25)
    assert hf_sparse_attn.get_spec(model).parameters["alpha"] == 1.25
    torch.testing.assert_close(hf_sparse_attn.attention_alphas(model), torch.full((2, 4), 1.25))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert hf_sparse_attn.get_spec(plain) is None and not type(plain).__name__.startswith("Sparse")
    # learned alpha from a checkpoint that has none starts at alpha_init (not uninitialised memory)
    learned = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_impl="entmax_learned:alpha_init=1.7")
    torch.testing.assert_close(hf_sparse_attn.attention_alphas(learned), torch.full((2, 4), 1.7))


def test_sparsify_a_model_in_hand_equals_loading_with_attn_impl(tmp_path):
    torch.manual_seed(0)
    stock = AutoModelForSequenceClassification.from_config(tiny_config("electra")).eval()
    stock.save_pretrained(tmp_path / "stock")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock", attn_impl="sparsemax").eval()
    hf_sparse_attn.sparsify(stock, attn_impl="sparsemax")
    ids, mask = random_batch()
    assert torch.equal(stock(input_ids=ids, attention_mask=mask).logits, loaded(input_ids=ids, attention_mask=mask).logits)
    stock.save_pretrained(tmp_path / "sparse")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sparse").eval()
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, loaded(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.slow
def test_remote_code_reproduces_logits_and_attentions_without_our_packages(tmp_path):
    model = build("bert", "entmax_learned")
    spread_learned_alphas(model)
    ids, mask = random_batch()
    expected = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    got = remote_code_outputs(folder, ids, mask, tmp_path)
    assert torch.equal(got["logits"], expected.logits)
    for x, y in zip(got["attentions"], expected.attentions):
        assert torch.equal(x, y)


@pytest.mark.slow
def test_real_minilm_with_entmax15(minilm_path, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2, attn_impl="entmax15").eval()
    batch = tokenizer(["a gripping, beautifully shot film", "dull and far too long, with a plot that goes nowhere"],
                      padding=True, return_tensors="pt")
    out = model(**batch, output_attentions=True)
    assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12
    keep = batch["attention_mask"][:, None, None, :].bool()
    zeros = []
    for probs in out.attentions:
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        assert (probs.masked_select(~keep.expand_as(probs)) == 0).all()
        zeros.append((probs.masked_select(keep.expand_as(probs)) == 0).float().mean().item())
    assert min(zeros) > 0.3, f"pretrained MiniLM scores are peaky: entmax15 should zero most keys, got {zeros}"
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(again(**batch).logits, out.logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base).__name__ == "SparseBertModel"


# ---------------------------------------------------------------- requests that used to be read silently


@pytest.mark.parametrize(
    "request_kwargs, fragment",
    [
        (dict(attn_impl="entmax", attn_alpha="abc"), "alpha must be a number"),
        (dict(attn_impl="entmax:alpha=1.3", attn_alpha=1.7), "give it once"),
        (dict(attn_impl="entmax:alpha=1.3,alpha=1.4"), "given twice"),
        (dict(attn_impl="entmax:alpha=1.3,alpha=1.3"), "given twice"),
        (dict(attn_impl="entmax_learned", attn_alpha_init="x"), "alpha_init must be a number"),
        (dict(attn_impl="sparsegen_lin", attn_lambda=True), "lambda must be a number"),
        (dict(attn_impl="sparsemax", attn_implementation="eager"), "not both"),
        (dict(attn_impl="sparsemax", attn_implementation="entmax15"), "disagree"),
        (dict(attn_impl="sparsemax:layers=[0]", attn_layers=[1]), "give them once"),
        (dict(attn_impl="sparsemax", attn_layers="first"), "cannot read layer"),
        (dict(attn_impl="sparsemax", attn_layers=[0, 0]), "twice"),
        (dict(attn_impl="sparsemax", attn_layers=[5]), "does not exist"),
        (dict(attn_impl="sparsemax", attn_layers=[1, -1]), "same layer twice"),
        (dict(attn_layers=[0]), "needs attn_impl"),
    ],
)
@pytest.mark.parametrize("entry", ["from_config", "from_pretrained", "sparsify"])
def test_conflicting_or_unreadable_requests_fail_in_one_line(request_kwargs, fragment, entry, tmp_path):
    if entry == "sparsify":
        if "attn_implementation" in request_kwargs or "attn_impl" not in request_kwargs:
            pytest.skip("sparsify takes no attn_implementation and needs attn_impl")
        names = {"attn_alpha": "alpha", "attn_lambda": "lambda_", "attn_alpha_init": "alpha_init", "attn_layers": "layers"}
        kwargs = {names.get(k, k): v for k, v in request_kwargs.items()}
        model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
        call = lambda: hf_sparse_attn.sparsify(model, **kwargs)  # noqa: E731
    elif entry == "from_config":
        call = lambda: AutoModelForSequenceClassification.from_config(tiny_config("bert"), **request_kwargs)  # noqa: E731
    else:
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_config(tiny_config("bert")).save_pretrained(tmp_path)
        call = lambda: AutoModelForSequenceClassification.from_pretrained(tmp_path, **request_kwargs)  # noqa: E731
    with pytest.raises(SparseAttnError) as err:
        call()
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_companion_value_equal_to_the_named_one_is_accepted():
    assert parse_attn_impl("entmax:alpha=1.3", alpha=1.3).parameters["alpha"] == 1.3
    assert parse_attn_impl("sparsemax:layers=[0,-1]", layers=[0, -1]).layers == (0, -1)


def test_from_config_leaves_the_callers_config_alone(tmp_path):
    config = tiny_config("bert")
    before = config.to_dict()
    sparse = AutoModelForSequenceClassification.from_config(config, attn_impl="sparsemax")
    assert hf_sparse_attn.get_spec(sparse).attn_impl == "sparsemax"
    assert config.to_dict() == before and not hasattr(config, "sparse_attention") and type(config).__name__ == "BertConfig"
    stock = AutoModelForSequenceClassification.from_config(config)
    assert hf_sparse_attn.get_spec(stock) is None and type(stock).__name__ == "BertForSequenceClassification"
    stock.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert hf_sparse_attn.get_spec(reloaded) is None and type(reloaded).__name__ == "BertForSequenceClassification"


def test_sparsify_leaves_the_callers_config_alone():
    config = tiny_config("bert")
    model = transformers.BertForSequenceClassification(config)
    hf_sparse_attn.sparsify(model, "sparsemax")
    assert not hasattr(config, "sparse_attention") and config._attn_implementation != "sparsemax"
    assert model.config is not config and model.bert.encoder.layer[0].attention.self.config is model.config
    assert hf_sparse_attn.get_spec(transformers.BertForSequenceClassification(config)) is None


def test_a_sparse_config_reused_with_another_mapping():
    first = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_impl="sparsemax")
    second = AutoModelForSequenceClassification.from_config(first.config, attn_impl="entmax15")
    assert hf_sparse_attn.get_spec(second).attn_impl == "entmax15"
    assert hf_sparse_attn.get_spec(first).attn_impl == "sparsemax"
    again = AutoModelForSequenceClassification.from_config(first.config)
    assert hf_sparse_attn.get_spec(again).attn_impl == "sparsemax"


def test_stock_implementation_on_a_sparse_model_is_refused(tmp_path):
    model = build("bert", "sparsemax")
    model.save_pretrained(tmp_path)
    for call in (lambda: AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sdpa"),
                 lambda: type(model).from_pretrained(tmp_path, attn_implementation="sdpa"),
                 lambda: AutoModelForSequenceClassification.from_config(model.config, attn_implementation="eager")):
        with pytest.raises(SparseAttnError, match="attn_impl='softmax'") as err:
            call()
        assert "\n" not in str(err.value)
    softmax = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_impl="softmax")
    assert hf_sparse_attn.get_spec(softmax).attn_impl == "softmax"


def test_our_names_as_attn_implementation_build_the_real_mapping():
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_implementation="entmax_learned")
    assert hf_sparse_attn.get_spec(model).learnable
    assert sum(1 for n, _ in model.named_parameters() if n.endswith("alpha_logit")) == 2


def test_learned_alpha_on_a_stock_model_without_parameters_is_refused():
    model = transformers.BertForSequenceClassification(tiny_config("bert")).eval()
    model.set_attn_implementation("entmax_learned")
    ids, mask = random_batch()
    with pytest.raises(SparseAttnError, match="sparsify") as err:
        model(input_ids=ids, attention_mask=mask)
    assert "\n" not in str(err.value)


def test_learned_alpha_stays_above_one_with_a_finite_gradient():
    model = build("bert", "entmax_learned")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha_logit"):
                p.fill_(-40.0)  # sigmoid underflows: float32 1 + sigmoid is exactly 1
    alphas = hf_sparse_attn.attention_alphas(model)
    assert (alphas > 1).all()
    torch.manual_seed(0)
    stock = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_implementation="eager").eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    ids, mask = random_batch()
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    reference = stock(input_ids=ids, attention_mask=mask, output_attentions=True)
    for probs, ref in zip(out.attentions, reference.attentions):  # alpha -> 1 is softmax
        torch.testing.assert_close(probs, ref, atol=0.02, rtol=0)
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("alpha_logit")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- transformers' own switches on our models


@pytest.mark.parametrize("attn_impl", SPARSE_IMPLS)
def test_sparsify_a_base_model_keeps_output_capture(attn_impl):
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_config("bert")).eval()
    hf_sparse_attn.sparsify(model, attn_impl)
    ids, mask = random_batch()
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert out.attentions is not None and len(out.attentions) == 2
    assert out.hidden_states is not None and len(out.hidden_states) == 3


@pytest.mark.parametrize("attn_impl", SPARSE_IMPLS + ["softmax"])
def test_config_output_attentions_switch(attn_impl):
    model = build("bert", attn_impl)
    model.config.output_attentions = True
    ids, mask = random_batch()
    out = model(input_ids=ids, attention_mask=mask)
    assert out.attentions is not None and len(out.attentions) == 2
    if attn_impl != "softmax":
        assert all((a == 0).any() for a in out.attentions)


def _save_like_the_previous_version(model, folder):
    """What save_pretrained wrote before sparse folders had a model type of their own: model_type of the stock
    family, sparse_attention without layers, auto_map without AutoConfig (and the remote code files)."""
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = config["model_type"][len("sparse_attn_"):]
    config["sparse_attention"].pop("layers")
    config["auto_map"].pop("AutoConfig")
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_folders_saved_by_the_previous_version_keep_loading(model_type, tmp_path):
    model = build(model_type, "entmax_learned")
    spread_learned_alphas(model)
    _save_like_the_previous_version(model, tmp_path)
    ids, mask = random_batch()
    expected = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    for reload in (lambda: AutoModelForSequenceClassification.from_pretrained(tmp_path),
                   lambda: AutoModelForSequenceClassification.from_pretrained(
                       tmp_path, config=transformers.AutoConfig.from_pretrained(tmp_path)),
                   lambda: AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype="auto")):
        again = reload().eval()
        assert type(again).__name__.startswith("Sparse")
        got = again(input_ids=ids, attention_mask=mask, output_attentions=True)
        assert torch.equal(got.logits, expected.logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base).__name__.startswith("Sparse")
