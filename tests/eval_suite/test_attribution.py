"""eval_suite attribution methods on tiny random BERT classifiers: each batched computation agrees with an
independent, direct computation of the same quantity (per example, by hand, or by a different mechanism)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_suite.attribution import (
    AttentionRollout,
    GradientNorm,
    GradientXInput,
    InputToRepresentation,
    IntegratedGradients,
    LeaveOneOut,
    ProjectedAttention,
    RepresentationGradientNorm,
    RepresentationLeaveOneOut,
    attention_rows,
)
from eval_suite.forward_context import ForwardContext
from eval_suite.batching import collate, encode_texts
from eval_suite.errors import EvalError
from eval_suite.model_access import AttentionTap, drop_keys, load_classifier
from tests.helpers.tiny_models import make_tiny_checkpoint

TEXTS = ["w1 w2 w3 w4 w5 w6", "w9 w8 w7", "w10 w11 w12 w13 w14 w15 w16 w17 w18", "w40 w41 w42 w43"]



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_classifier(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def tiny_sparse(tmp_path_factory):
    pytest.importorskip("hf_sparse_attn")
    return load_classifier(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_sparse"), attn_impl="sparsemax"))


def _batch(classifier, texts=TEXTS):
    encodings, _ = encode_texts(classifier.tokenizer, texts, classifier.max_length)
    return collate(encodings, classifier.tokenizer.pad_token_id)


def _target_probability(classifier, input_ids, target, **extra):
    with torch.no_grad():
        logits = classifier.model(input_ids=torch.tensor([input_ids]), **extra).logits
    return torch.softmax(logits, dim=-1)[0, target].item()


def test_load_probe_and_content_mask(tiny):
    assert tiny.attn_impl == "softmax" and tiny.n_layers == 2 and tiny.n_heads == 4
    assert tiny.tap.can_skip_layers
    assert tiny.weights_fingerprint.startswith("sha256:")
    batch = _batch(tiny)
    # [CLS] and [SEP] are not content, padding is not content, an unknown word ([UNK]) is.
    assert batch.content_mask.sum(dim=1).tolist() == [6, 3, 9, 4]
    unk = _batch(tiny, ["w1 notaword w2"])
    assert unk.input_ids[0, 2].item() == tiny.tokenizer.unk_token_id and unk.content_mask[0].tolist() == [False, True, True, True, False]


def test_gradients_do_not_depend_on_batching(tiny):
    batch = _batch(tiny)
    ctx = ForwardContext(tiny, batch)
    together = [GradientNorm()(ctx), GradientXInput()(ctx), RepresentationGradientNorm()(ctx)]
    for row, text in enumerate(TEXTS):
        alone_ctx = ForwardContext(tiny, _batch(tiny, [text]))
        alone = [GradientNorm()(alone_ctx), GradientXInput()(alone_ctx), RepresentationGradientNorm()(alone_ctx)]
        n = int(batch.attention_mask[row].sum())
        for big, small in zip(together, alone):
            assert torch.allclose(big[row, ..., :n], small[0, ..., :n], atol=1e-5, rtol=1e-4)


def test_representation_gradients_equal_gradients_at_the_layer_input(tiny):
    """d y_hat / d h^(l), taken by feeding a leaf tensor into layer l through a pre-hook (no hidden_states)."""
    batch = _batch(tiny)
    ctx = ForwardContext(tiny, batch)
    ours = RepresentationGradientNorm()(ctx)
    prediction = ctx.base.prediction
    for layer, module in enumerate(tiny.tap.layer_modules):
        captured = {}

        def hook(mod, args, kwargs):
            leaf = args[0].detach().requires_grad_(True)
            captured["leaf"] = leaf
            return (leaf,) + tuple(args[1:]), kwargs

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            probs = torch.softmax(tiny.model(**batch.model_inputs()).logits, dim=-1)
            (grad,) = torch.autograd.grad(probs.gather(1, prediction[:, None]).sum(), captured["leaf"])
        finally:
            handle.remove()
        assert torch.allclose(ours[:, layer], grad.norm(dim=-1), atol=1e-6, rtol=1e-4)


def test_integrated_gradients_completeness(tiny):
    batch = _batch(tiny)
    ctx = ForwardContext(tiny, batch, max_grad_tokens=400)  # small chunks: examples x steps split across passes
    method = IntegratedGradients(steps=32, baseline="zero")
    signed = method.signed(ctx)
    x0 = method.baseline_embeddings(ctx)
    with torch.no_grad():
        logits = tiny.model(inputs_embeds=x0, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids).logits
    baseline_prob = torch.softmax(logits, dim=-1).gather(1, ctx.base.prediction[:, None]).squeeze(1)
    gap = ctx.base.target.detach() - baseline_prob
    assert torch.allclose(signed.sum(dim=1), gap, atol=2e-3)
    assert (signed[~batch.content_mask] == 0).all()  # special tokens and padding keep their embeddings
    assert torch.equal(method(ctx), signed.abs())


def test_leave_one_out_equals_deleting_the_token(tiny):
    batch = _batch(tiny)
    ctx = ForwardContext(tiny, batch)
    loo = LeaveOneOut()(ctx)
    for row in (0, 2):
        ids = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        target = int(ctx.base.prediction[row])
        full = _target_probability(tiny, ids, target)
        for i in range(1, len(ids) - 1):
            reduced = _target_probability(tiny, ids[:i] + ids[i + 1:], target)
            assert loo[row, i].item() == pytest.approx(abs(full - reduced), abs=1e-5)
    assert (loo[~batch.content_mask] == 0).all()


def test_representation_loo_one_layer_equals_hiding_the_token(tmp_path):
    """With one layer, masking key i in layer 0 is the same as an attention_mask of 0 at position i."""
    classifier = load_classifier(make_tiny_checkpoint(tmp_path / "one", layers=1))
    batch = _batch(classifier)
    ctx = ForwardContext(classifier, batch)
    ours = RepresentationLeaveOneOut()(ctx)
    rows, positions = ctx.content_variants()
    for r, p in zip(rows.tolist(), positions.tolist()):
        mask = batch.attention_mask[r:r + 1].clone()
        mask[0, p] = 0
        with torch.no_grad():
            logits = classifier.model(input_ids=batch.input_ids[r:r + 1], attention_mask=mask).logits
        prob = torch.softmax(logits, dim=-1)[0, ctx.base.prediction[r]].item()
        assert ours[r, 0, p].item() == pytest.approx(abs(ctx.base.target[r].item() - prob), abs=1e-5)


def test_representation_loo_layer_skipping_changes_nothing(tiny):
    batch = _batch(tiny)
    skipped = RepresentationLeaveOneOut()(ForwardContext(tiny, batch))
    saved = tiny.tap.layer_modules
    tiny.tap.layer_modules = None  # full forward passes with the key mask only
    try:
        full = RepresentationLeaveOneOut()(ForwardContext(tiny, batch))
    finally:
        tiny.tap.layer_modules = saved
    assert torch.allclose(skipped, full, atol=1e-6)
    assert (skipped > 0).float().mean() > 0.3  # masking a key moves the prediction


def test_input_to_representation(tiny_sparse):
    classifier = tiny_sparse
    batch = _batch(classifier)
    ctx = ForwardContext(classifier, batch)
    fast = InputToRepresentation()(ctx)
    loop = InputToRepresentation(vectorize=True)(ctx)  # vmap over positions: same numbers
    assert torch.allclose(fast, loop, atol=1e-6)
    real = batch.attention_mask.bool()
    sums = fast.sum(dim=-1)
    assert torch.allclose(sums[real[:, None, :].expand_as(sums)], torch.ones(1), atol=1e-5)
    # hidden_states[0] (embedding output) at p depends on x_p only: eq. 5 is one-hot on the diagonal.
    eye = torch.eye(batch.length).expand(batch.size, -1, -1) * real[:, :, None] * real[:, None, :]
    assert torch.allclose(fast[:, 0], eye, atol=1e-6)
    # One (layer, position) checked by hand: gradient of ||h^(1)_p|| for example 2, p = 3.
    embeds = classifier.word_embeddings(batch.input_ids[2:3]).detach().requires_grad_(True)
    out = classifier.model(inputs_embeds=embeds, attention_mask=batch.attention_mask[2:3], output_hidden_states=True)
    (grad,) = torch.autograd.grad(out.hidden_states[1][0, 3].norm(), embeds)
    expected = grad[0].norm(dim=-1)
    assert torch.allclose(fast[2, 1, 3], expected / expected.sum(), atol=1e-5)


def test_rollout_and_projection_at_layer_zero_are_attention(tiny):
    batch = _batch(tiny)
    ctx = ForwardContext(tiny, batch)
    rows = attention_rows(ctx.base.attentions, batch.attention_mask, "cls")
    g = InputToRepresentation()(ctx)
    rolled = AttentionRollout()(ctx)
    projected = ProjectedAttention()(ctx, g)
    assert torch.allclose(rolled[:, 0], rows[:, 0], atol=1e-6)
    assert torch.allclose(projected[:, 0], rows[:, 0], atol=1e-5)
    for source in (rolled, projected):
        assert torch.allclose(source.sum(dim=-1), torch.ones(1), atol=1e-5)
    full = AttentionRollout().full(ctx)
    assert torch.allclose(full.sum(dim=-1), torch.ones(1), atol=1e-5)
    mean_rows = attention_rows(ctx.base.attentions, batch.attention_mask, "mean")
    assert torch.allclose(mean_rows.sum(dim=-1), torch.ones(1), atol=1e-5)
    assert (mean_rows[~batch.attention_mask.bool()[:, None, None, :].expand_as(mean_rows)] == 0).all()


def test_sparse_checkpoint_keeps_its_mapping(tiny_sparse):
    assert tiny_sparse.attn_impl == "sparsemax"
    assert tiny_sparse.sparse_attention["attn_impl"] == "sparsemax"
    ctx = ForwardContext(tiny_sparse, _batch(tiny_sparse))
    attention = torch.stack(ctx.base.attentions)
    assert (attention == 0).float().mean() > 0.2  # exact zeros of sparsemax


def test_drop_keys_on_every_mask_kind():
    query = torch.zeros(2, 1, 3, 4)
    key = torch.zeros(2, 1, 4, 4)
    positions = torch.tensor([1, -1])
    dropped = drop_keys(None, positions, query, key)
    assert dropped.shape == (2, 1, 3, 4)
    assert (dropped[0, 0, :, 1] == torch.finfo(dropped.dtype).min).all() and (dropped[1] == 0).all()
    keep = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    assert drop_keys(keep, positions, query, key).sum().item() == 2 * 3 * 4 - 3


def test_probe_refuses_attention_without_probabilities(tmp_path):
    from transformers import AutoModelForSequenceClassification

    path = make_tiny_checkpoint(tmp_path / "sdpa")
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa").eval()
    tap = AttentionTap(model)
    inputs = {"input_ids": torch.tensor([[2, 7, 8, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with pytest.raises(EvalError, match="returns no attention weights"):
        tap.probe(inputs, 2)
    tap.remove()
    assert model.config._attn_implementation == "sdpa"


def test_minilm_under_entmax15(minilm_path, tmp_path):
    """The real embedded MiniLM: refused as it is (no classification head), measured once it has one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from eval_suite.batch_rows import measure_batch
    from eval_suite.settings import MeasureConfig

    with pytest.raises(EvalError, match="not a trained sequence classifier"):
        load_classifier(minilm_path)
    torch.manual_seed(0)
    folder = tmp_path / "minilm_cls"
    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    pytest.importorskip("hf_sparse_attn")
    classifier = load_classifier(str(folder), attn_impl="entmax15")
    assert classifier.attn_impl == "entmax15" and (classifier.n_layers, classifier.n_heads) == (6, 12)
    texts = ["a gorgeous, witty, seductive movie.", "the plot is boilerplate.", "not bad at all"]
    batch = _batch(classifier, texts)
    config = MeasureConfig.of(ig_steps=2, fractions=(0.5,), faithfulness_attention="none", token_map_indices=frozenset({0}),
                           measures="full")
    arrays, maps = measure_batch(classifier, batch, [1, 0, 1], [0, 1, 2], config)
    assert arrays["attention.sparsity"].shape == (3, 6, 12)
    assert np.nanmean(arrays["attention.sparsity"]) > 0.5  # pretrained scores are peaky: entmax15 zeros most keys
    tau = arrays["attention.kendall_tau_b"]
    assert tau.shape == (3, 6, 12, 6) and np.nanmin(tau) >= -1 and np.nanmax(tau) <= 1
    assert np.isfinite(arrays["input_to_repr.entropy"][:, 1:]).all()
    assert maps[0]["tokens"][:2] == ["a", "gorgeous"]


# ----------------------------------------------------------------------------------------------- trustworthy IG, eq. 5


def test_integrated_gradients_reports_its_completeness_gap_and_refines_where_it_is_large(tiny):
    from eval_suite.attribution import IntegratedGradients
    from eval_suite.forward_context import ForwardContext

    batch = collate(encode_texts(tiny.tokenizer, TEXTS, 32)[0], tiny.tokenizer.pad_token_id)
    ctx = ForwardContext(tiny, batch)
    fixed = IntegratedGradients(steps=2, tolerance=None)
    signed, gap, steps = fixed.attribute(ctx)
    assert (steps == 2).all()
    # Independently, one example at a time: 2-point Gauss-Legendre on [0, 1] of the gradient of y_hat along the
    # straight path from the baseline (the [PAD] embedding at content tokens) to the input embeddings.
    nodes, weights = np.polynomial.legendre.leggauss(2)
    model, pad = tiny.model, tiny.tokenizer.pad_token_id
    for row, text in enumerate(TEXTS):
        ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
        x = model.get_input_embeddings()(ids).detach()
        baseline = x.clone()
        baseline[0, 1:-1] = model.get_input_embeddings()(torch.tensor([pad])).detach()[0]

        def y_hat(embeddings, label=None):
            probabilities = torch.softmax(model(inputs_embeds=embeddings).logits[0], dim=-1)
            return probabilities[probabilities.argmax() if label is None else label]

        with torch.no_grad():
            label = int(model(inputs_embeds=x).logits[0].argmax())
            full, at_baseline = float(y_hat(x, label)), float(y_hat(baseline, label))
        integral = torch.zeros_like(x)
        for node, weight in zip(nodes, weights):
            point = (baseline + (node + 1) / 2 * (x - baseline)).requires_grad_(True)
            y_hat(point, label).backward()
            integral += weight / 2 * point.grad
        attributions = ((x - baseline) * integral).sum(dim=-1)[0]
        n = ids.shape[1]
        torch.testing.assert_close(signed[row, :n].double(), attributions.double(), atol=1e-6, rtol=1e-4)
        assert (signed[row, n:] == 0).all()
        delta = full - at_baseline
        expected_gap = abs(float(attributions.sum()) - delta) / max(abs(delta), 0.01)
        assert float(gap[row]) == pytest.approx(expected_gap, abs=1e-5, rel=1e-4)
    adaptive = IntegratedGradients(steps=2, tolerance=0.01, max_steps=64)
    _, refined, used = adaptive.attribute(ctx)
    assert (used >= 2).all() and (used <= 64).all()
    assert ((refined <= 0.01) | (used == 64)).all()
    assert refined.max() <= gap.max() + 1e-7
    assert (used[gap <= 0.01] == 2).all()  # examples already within tolerance keep their steps


def test_input_to_representation_jacobian_mode_is_the_frobenius_norm_of_the_jacobian(tmp_path):
    from eval_suite.attribution import InputToRepresentation
    from eval_suite.forward_context import ForwardContext

    classifier = load_classifier(make_tiny_checkpoint(tmp_path / "jac", layers=2, heads=2))
    classifier.model.double()
    batch = collate(encode_texts(classifier.tokenizer, TEXTS[:2], 16)[0], classifier.tokenizer.pad_token_id)
    ctx = ForwardContext(classifier, batch)
    ctx.base.embeddings  # noqa: B018  (the base pass, in float64)
    ours = InputToRepresentation(mode="jacobian")(ctx)
    mask = batch.attention_mask.bool()
    other = {k: v for k, v in batch.model_inputs().items() if k != "input_ids"}
    for b in range(2):
        n = int(mask[b].sum())
        x = ctx.base.embeddings.detach()[b:b + 1, :n]
        for layer in range(2):
            def hidden(e, layer=layer, b=b, n=n):
                out = classifier.model(inputs_embeds=e, **{k: v[b:b + 1, :n] for k, v in other.items()},
                                       output_hidden_states=True)
                return out.hidden_states[layer][0]

            jacobian = torch.autograd.functional.jacobian(hidden, x)  # [L, d, 1, L, d]
            frobenius = jacobian[:, :, 0].pow(2).sum(dim=(1, 3)).sqrt()  # [p, i]
            expected = frobenius / frobenius.sum(dim=-1, keepdim=True)
            assert torch.allclose(ours[b, layer, :n, :n].double(), expected, atol=1e-6)
