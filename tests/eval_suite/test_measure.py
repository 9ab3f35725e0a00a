"""The token-level maps measure_batch keeps for stored examples: each head's attention, its mass on special
tokens, and the predicted probability, checked against a plain transformers forward pass of the same checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.tiny_models import make_tiny_checkpoint

TEXTS = ["w1 w2 w3 w4 w5", "w9 w8 w7", "w10 w11 w12 w13 w14 w15 w16"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    pytest.importorskip("hf_sparse_attn")
    from eval_suite.batching import collate, encode_texts
    from eval_suite.batch_rows import measure_batch
    from eval_suite.settings import MeasureConfig
    from eval_suite.model_access import load_classifier

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("measure") / "ckpt", attn_impl="sparsemax")
    classifier = load_classifier(folder)
    encodings, _ = encode_texts(classifier.tokenizer, TEXTS, 32)
    batch = collate(encodings, classifier.tokenizer.pad_token_id)
    config = MeasureConfig.of(ig_steps=2, token_map_indices=frozenset({10, 12}))
    _, token_maps = measure_batch(classifier, batch, [0, 1, 0], [10, 11, 12], config)
    return folder, batch, token_maps


def _reference(folder, batch):
    import hf_sparse_attn  # noqa: F401 - registers sparsemax for from_pretrained
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**batch.model_inputs(), output_attentions=True)
    return torch.softmax(out.logits.double(), dim=-1), torch.stack(out.attentions, dim=1).double()  # [B, n, H, L, L]


def test_only_requested_examples_are_kept_and_json_round_trips(measured):
    _, _, token_maps = measured
    assert set(token_maps) == {10, 12}
    again = json.loads(json.dumps(token_maps, allow_nan=False))  # no NaN: browsers' JSON.parse refuses it
    assert again == {str(k): v for k, v in token_maps.items()}


@pytest.mark.parametrize("row, index", [(0, 10), (2, 12)])
def test_each_heads_attention_is_the_cls_row_over_content_tokens(measured, row, index):
    folder, batch, token_maps = measured
    probabilities, attentions = _reference(folder, batch)
    example = token_maps[index]
    content = batch.content_mask[row]
    n_layers, n_heads = attentions.shape[1], attentions.shape[2]
    heads = example["heads"]
    defined = undefined = 0
    assert len(heads) == n_layers and all(len(layer) == n_heads for layer in heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            cls_row = attentions[row, layer, head, 0]
            on_content = cls_row[content]
            assert len(heads[layer][head]) == len(example["tokens"]) == int(content.sum())
            assert example["special_mass"][layer][head] == pytest.approx(1 - on_content.sum().item(), abs=1e-5)
            if on_content.sum() == 0:  # every weight on [CLS]/[SEP]: undefined over content, stored as null
                undefined += 1
                assert heads[layer][head] == [None] * len(example["tokens"])
                continue
            values = torch.tensor(heads[layer][head], dtype=torch.float64)
            assert values.sum().item() == pytest.approx(1.0, abs=1e-5)
            assert torch.allclose(values, on_content / on_content.sum(), atol=1e-5)
            assert ((values == 0) == (on_content == 0)).all()  # sparsemax's exact zeros survive the rounding
            defined += 1
    assert defined > 0
    assert example["probability"] == pytest.approx(probabilities[row].max().item(), abs=1e-6)
    assert example["prediction"] == int(probabilities[row].argmax())


def test_projected_and_representation_maps_are_distributions_per_layer(measured):
    _, batch, token_maps = measured
    example = token_maps[12]
    n_tokens = len(example["tokens"])
    n_layers = len(example["heads"])
    rows = [values for layer in example["projected"] for values in layer]
    assert len(rows) == n_layers * len(example["heads"][0])
    defined = [values for values in rows if values != [None] * n_tokens]  # a head on special tokens only: null
    assert defined
    for values in defined:
        assert len(values) == n_tokens and sum(values) == pytest.approx(1.0, abs=1e-5) and min(values) >= 0
    for method in ("repr_grad_norm", "repr_loo"):
        per_layer = example["representation"][method]
        assert len(per_layer) == n_layers
        for values in per_layer:
            assert len(values) == n_tokens and sum(values) == pytest.approx(1.0, abs=1e-5)
