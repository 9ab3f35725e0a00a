"""The split of each attention block that every context-mixing method reads: exact on every family and mapping,
and refused, in one line, where it would be wrong."""

from __future__ import annotations

import pytest
import torch

from eval_suite.forward_context import ForwardContext
from eval_suite.context_mixing.decomposition import decomposition
from eval_suite.errors import EvalError
from tests.eval_suite.context_mixing import references as ref
from tests.eval_suite.context_mixing.conftest import PRE_LN, every_family_and_mapping, tiny_batch


@every_family_and_mapping
def test_split_sums_to_the_real_block_output(tiny_context, family, mapping):
    ctx = tiny_context(family, mapping)
    dec = decomposition(ctx)  # raises unless the split reproduces every layer's recorded output
    assert dec.parts[0].pre_norm == (family in PRE_LN)
    real = ref.real_block_outputs(ctx.classifier, ctx.batch)
    for layer in range(dec.n_layers):
        for b, pos in enumerate(dec.positions):
            split = dec.block(b, layer)
            rows = torch.arange(pos.numel())
            T = split.transformed(rows, split.with_residual(rows))
            assert torch.allclose(T.sum(dim=1) + split.bias(), real[layer][b, pos], atol=1e-10, rtol=0)
            assert torch.allclose(split.y, real[layer][b, pos], atol=1e-10, rtol=0)


def test_computed_once_per_context(tiny_context):
    ctx = tiny_context("bert")
    assert decomposition(ctx) is decomposition(ctx)
    assert decomposition(ForwardContext(ctx.classifier, ctx.batch)) is not decomposition(ctx)


def test_a_layer_that_computes_something_else_is_refused(tiny_classifier):
    classifier = tiny_classifier("bert", "entmax15")
    layer = classifier.tap.layer_modules[1]
    handle = layer.register_forward_hook(lambda module, args, output: output + 0.1)
    try:
        with pytest.raises(EvalError, match="does not reproduce layer 1 of SparseBertForSequenceClassification"):
            decomposition(ForwardContext(classifier, tiny_batch()))
    finally:
        handle.remove()


def test_an_unknown_layout_is_refused():
    """ModernBERT routes attention through the interface (the tap accepts it) but fuses Wqkv: no layout fits."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from eval_suite.model_access import AttentionTap, Classifier

    config = AutoConfig.for_model("modernbert", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                                  num_labels=2, pad_token_id=0, attn_implementation="eager")
    model = AutoModelForSequenceClassification.from_config(config).eval()
    tap = AttentionTap(model)
    ids = torch.tensor([[2, 7, 8, 3]])
    tap.probe({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 2)
    classifier = Classifier(model=model, tokenizer=None, tap=tap, checkpoint="tiny-modernbert", attn_impl="softmax",
                            sparse_attention=None, n_layers=2, n_heads=4, num_labels=2, max_length=64,
                            weights_fingerprint=None)
    with pytest.raises(EvalError, match=r"do not know the layer layout of ModernBertForSequenceClassification"):
        decomposition(ForwardContext(classifier, tiny_batch()))
