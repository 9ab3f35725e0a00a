"""Tiny float64 classifiers of every family the context-mixing methods support, under every mapping of the core."""

from __future__ import annotations

import pytest
import torch

from eval_suite.forward_context import ForwardContext
from eval_suite.batching import TokenBatch
from eval_suite.model_access import AttentionTap, Classifier
from tests.helpers.tiny_models import random_batch, tiny_config

POST_LN = ["bert", "roberta", "distilbert", "electra", "xlm-roberta"]
PRE_LN = ["roberta-prelayernorm", "xlm-roberta-xl"]  # transformers has no pre-LN BERT; these are its pre-LN encoders
FAMILIES = POST_LN + PRE_LN
MAPPINGS = ["softmax", "sparsemax", "entmax15", "entmax:alpha=1.3", "entmax_learned", "sparsegen_lin:lambda=0.3"]


def every_family_and_mapping(test):
    """Parametrise ``test(family, mapping)`` over every family and every mapping of the core."""
    return pytest.mark.parametrize("family", FAMILIES)(pytest.mark.parametrize("mapping", MAPPINGS)(test))


def build_classifier(family: str, mapping: str, seed: int = 0, dtype=torch.float64) -> Classifier:
    """A random 2-layer, 4-head classifier with spread-out weights (peaky attention, visible zeros under the
    sparse mappings) and non-trivial LayerNorms, wrapped like load_classifier wraps a checkpoint."""
    import hf_sparse_attn  # noqa: F401  (attn_impl=)
    from transformers import AutoModelForSequenceClassification

    overrides = {"initializer_range": 0.25}
    if family in PRE_LN:
        overrides["pad_token_id"] = 1
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, **overrides), attn_impl=mapping)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alpha_logit"):
                param.uniform_(-2, 2, generator=generator)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.3, generator=generator)
    model = model.to(dtype).eval()
    tap = AttentionTap(model)
    ids, mask = random_batch()
    tap.probe({"input_ids": ids, "attention_mask": mask}, 2)
    return Classifier(model=model, tokenizer=None, tap=tap, checkpoint=f"tiny-{family}", attn_impl=mapping,
                      sparse_attention=None, n_layers=2, n_heads=4, num_labels=3, max_length=64, weights_fingerprint=None)


def tiny_batch(seed: int = 0) -> TokenBatch:
    """Three examples of 9, 6 and 4 real tokens; the first and last real token of each is special."""
    ids, mask = random_batch(batch=3, length=9, seed=seed, pad_last=(0, 3, 5))
    content = mask.bool().clone()
    content[:, 0] = False
    content[torch.arange(3), mask.sum(dim=1) - 1] = False
    return TokenBatch(ids, mask, content)


@pytest.fixture(scope="session")
def tiny_classifier():
    """``tiny_classifier(family, mapping)``: a cached :func:`build_classifier`."""
    cache = {}

    def get(family: str, mapping: str = "softmax") -> Classifier:
        if (family, mapping) not in cache:
            cache[(family, mapping)] = build_classifier(family, mapping)
        return cache[(family, mapping)]

    return get


@pytest.fixture
def tiny_context(tiny_classifier):
    """``tiny_context(family, mapping)``: a fresh ForwardContext on :func:`tiny_batch`."""
    return lambda family, mapping="softmax": ForwardContext(tiny_classifier(family, mapping), tiny_batch())
