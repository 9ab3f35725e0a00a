"""Training's evaluation batches examples by length: the same loss, accuracy, F1 and attention statistics as
batches in split order, with less padding."""

from __future__ import annotations

import datasets
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

import hf_sparse_attn
from hf_sparse_attn.training.loop import _by_length, evaluate_split
from tests.helpers.tiny_models import NO_DROPOUT, TINY


def _collate(rows):
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, :len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["label"] for r in rows])}


def test_evaluation_by_length_gives_the_same_numbers_with_less_padding():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (30,), generator=generator).tolist()
    data = datasets.Dataset.from_dict({"input_ids": [torch.randint(5, 100, (n,), generator=generator).tolist()
                                                     for n in lengths],
                                       "label": [i % 2 for i in range(30)]})
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**TINY, **NO_DROPOUT}, num_labels=2, initializer_range=1.0)).eval()
    hf_sparse_attn.sparsify(model, attn_impl="entmax15")
    accelerator = Accelerator(cpu=True)
    ordered = _by_length(data)
    assert [len(ids) for ids in ordered["input_ids"]] == sorted(lengths)

    def padded_tokens(dataset):
        return sum(_collate([dataset[k] for k in range(s, min(s + 8, len(dataset)))])["input_ids"].numel()
                   for s in range(0, len(dataset), 8))

    assert padded_tokens(ordered) < 0.8 * padded_tokens(data)
    a = evaluate_split(accelerator, model, DataLoader(data, batch_size=8, collate_fn=_collate), "validation")
    b = evaluate_split(accelerator, model, DataLoader(ordered, batch_size=8, collate_fn=_collate), "validation")
    assert a["accuracy"] == b["accuracy"] and a["macro_f1"] == b["macro_f1"] and a["n_examples"] == 30
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
    for x, y in zip(a["per_layer_head"], b["per_layer_head"]):
        assert x["sparsity"] == pytest.approx(y["sparsity"], abs=1e-9)
        assert x["support_size"] == pytest.approx(y["support_size"], abs=1e-9)
    assert a["sparsity"] > 0  # entmax15 makes exact zeros: the statistics compared are not trivially equal
