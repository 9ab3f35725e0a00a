"""How the runner groups examples into batches: every example once, sorted by length, within the batch size, the
padded-token cap and the padding allowance, and no batch closed earlier than one of them asks."""

from __future__ import annotations

import random

import pytest

from eval_suite.runner import plan_batches
from eval_suite.settings import EvalRequest


def _check_plan(lengths, batches, batch_size, max_tokens, max_padding):
    order = [k for batch in batches for k in batch]
    assert sorted(order) == list(range(len(lengths)))  # every example exactly once
    assert [lengths[k] for k in order] == sorted(lengths)  # shortest first, so batches hold neighbours
    for batch in batches:
        longest, real = max(lengths[k] for k in batch), sum(lengths[k] for k in batch)
        assert batch and len(batch) <= batch_size
        if len(batch) > 1:
            assert len(batch) * longest <= max_tokens
            assert len(batch) * longest <= (1 + max_padding) * real
    for batch, following in zip(batches, batches[1:]):
        # the next batch's first example would have broken one of the limits: no batch closes early
        grown = batch + following[:1]
        longest, real = max(lengths[k] for k in grown), sum(lengths[k] for k in grown)
        assert (len(grown) > batch_size or len(grown) * longest > max_tokens
                or len(grown) * longest > (1 + max_padding) * real)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_padding", [0.0, 0.2, 1.0])
def test_batches_keep_every_limit_and_close_no_earlier(seed, max_padding):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 120) for _ in range(rng.randint(1, 200))]
    batches = plan_batches(list(range(len(lengths))), lengths, 16, 1024, max_padding)
    _check_plan(lengths, batches, 16, 1024, max_padding)


def test_default_plan_pads_sentences_at_most_by_the_allowance():
    """Sentence lengths of MR's test split (6 to 51 tokens): batches of 32 alone pad them by 47%, which the base
    pass pays in full on CPU; the default allowance keeps every batch within 20%."""
    rng = random.Random(0)
    lengths = sorted(rng.randint(6, 51) for _ in range(64))
    request = EvalRequest(checkpoint="unused")
    batches = plan_batches(list(range(64)), lengths, request.batch_size, request.max_batch_tokens,
                           request.max_padding)
    padded = sum(len(b) * max(lengths[k] for k in b) for b in batches)
    assert padded <= (1 + request.max_padding) * sum(lengths)
    assert padded > sum(lengths)  # still batched: equal lengths only would be one example per length
    _check_plan(lengths, batches, request.batch_size, request.max_batch_tokens, request.max_padding)


def test_no_allowance_keeps_the_batch_size_plan():
    lengths = [5, 9, 30, 31, 64, 70, 71]
    assert plan_batches(list(range(7)), lengths, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_batches(list(range(7)), lengths, 3, max_padding=float("inf")) == [[0, 1, 2], [3, 4, 5], [6]]
