"""A float32 model's split is computed in float64: value zeroing and ALTI subtract nearly equal vectors (a layer
output with and without one head's small share of one token, ||y|| - ||y - T||), which float32 rounding would
swamp. The scores of a float32 model then equal those of the same model in float64 up to the float32 rounding of
its recorded activations, and do not depend on how many threads computed them."""

from __future__ import annotations

import pytest
import torch

from eval_suite.forward_context import ForwardContext
from eval_suite.context_mixing import context_mixing_rows

from .conftest import build_classifier, tiny_batch

METHODS = ["attention_norm", "attention_norm_res_ln", "value_zeroing", "alti"]


def _rows(classifier):
    return context_mixing_rows(ForwardContext(classifier, tiny_batch()), METHODS)


@pytest.mark.parametrize("family", ["bert", "roberta-prelayernorm"])
def test_float32_model_scores_equal_its_float64_copy(family):
    pytest.importorskip("hf_sparse_attn")
    single = _rows(build_classifier(family, "sparsemax", dtype=torch.float32))
    double = _rows(build_classifier(family, "sparsemax", dtype=torch.float64))
    for key in double:
        assert single[key].dtype == torch.float64
        torch.testing.assert_close(single[key], double[key], atol=2e-5, rtol=0, equal_nan=True, msg=key)


def test_the_split_of_a_float32_model_leaves_the_model_in_float32():
    pytest.importorskip("hf_sparse_attn")
    classifier = build_classifier("bert", "softmax", dtype=torch.float32)
    _rows(classifier)
    assert {p.dtype for p in classifier.model.parameters()} == {torch.float32}


def test_scores_of_a_float32_checkpoint_do_not_depend_on_threads_or_batch_make_up(tmp_path):
    """Float32 rounding in the split moved value zeroing's per-head entropy by up to 8e-4 between one and two
    threads (and ALTI's by 1e-6): more than the 1e-6 within which two runs of one plan must agree."""
    import csv

    from eval_suite.batching import collate, encode_texts
    from eval_suite.model_access import load_classifier
    from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint

    classifier = load_classifier(make_tiny_checkpoint(tmp_path / "ckpt"))
    texts = [row["text"] for row in csv.DictReader(open(make_text_csv(tmp_path / "data.csv", n=6)))]
    encodings, _ = encode_texts(classifier.tokenizer, texts, 64)

    def rows(members, threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            batch = collate([encodings[k] for k in members], classifier.tokenizer.pad_token_id)
            return context_mixing_rows(ForwardContext(classifier, batch), ["value_zeroing", "alti"])
        finally:
            torch.set_num_threads(previous)

    one, two, alone = rows([0, 1, 2], 1), rows([0, 1, 2], 2), rows([0], 1)
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-10, rtol=0, equal_nan=True, msg=key)
        torch.testing.assert_close(one[key][:1, ..., : alone[key].shape[-1]] if key.count(".") == 1 else one[key][:1],
                                   alone[key], atol=1e-6, rtol=0, equal_nan=True, msg=key)
