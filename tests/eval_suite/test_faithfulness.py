"""eval_suite.faithfulness: ties broken in a seeded random order (not by position), and greedy AOPC bounds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_suite.forward_context import ForwardContext
from eval_suite.batching import collate, encode_texts
from eval_suite.faithfulness import (faithfulness_curves, greedy_comprehensiveness_bounds, removal_counts,
                                     tie_break_keys)
from eval_suite.model_access import load_classifier
from tests.helpers.tiny_models import VOCAB_WORDS, make_tiny_checkpoint


@pytest.fixture(scope="module")
def batch_ctx(tmp_path_factory):
    classifier = load_classifier(make_tiny_checkpoint(tmp_path_factory.mktemp("faith"), attn_impl="sparsemax"))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(VOCAB_WORDS, size=12)) for _ in range(40)]
    batch = collate(encode_texts(classifier.tokenizer, texts, 32)[0], classifier.tokenizer.pad_token_id)
    return ForwardContext(classifier, batch), list(range(40))


def test_aopc_of_a_tie_heavy_ranking_does_not_depend_on_the_tie_order_beyond_noise(batch_ctx):
    ctx, indices = batch_ctx
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    # A sparse ranking: two tokens scored, every other content token tied at zero.
    scores = torch.zeros(ctx.batch.size, ctx.batch.length)
    scores[:, 1], scores[:, 2] = 2.0, 1.0
    fractions = (0.5,)
    means = []
    for seed in range(6):
        keys = tie_break_keys(indices, lengths, ctx.batch.length, seed)
        comprehensiveness, _ = faithfulness_curves(ctx, {"sparse": scores}, fractions, tie_break=keys)
        means.append(comprehensiveness[:, 0, 0].numpy())
    per_seed = np.array([m.mean() for m in means])
    noise = np.mean([m.std(ddof=1) for m in means]) / np.sqrt(len(indices))
    assert per_seed.std(ddof=1) < 4 * noise + 1e-6
    # Keys depend on (seed, example, length) only: the same order for a second call, another for another seed.
    assert torch.equal(tie_break_keys(indices, lengths, 20, 0)[:, :5], tie_break_keys(indices, lengths, 30, 0)[:, :5])
    assert not torch.equal(tie_break_keys(indices, lengths, 20, 0), tie_break_keys(indices, lengths, 20, 1))


def test_greedy_bounds_at_one_token_are_the_best_and_worst_single_removals(batch_ctx):
    ctx, _ = batch_ctx
    fractions = (0.01, 0.5)  # k = 1 and k = half the content tokens
    upper, lower = greedy_comprehensiveness_bounds(ctx, fractions)
    content = ctx.batch.content_mask
    rows, positions = torch.nonzero(content, as_tuple=True)
    keep = ctx.batch.attention_mask[rows].bool().clone()
    keep[torch.arange(rows.numel()), positions] = False
    drops = ctx.base.target.detach()[rows] - ctx.target_probability(ctx.batch.keep_tokens(rows, keep), rows)
    for b in range(ctx.batch.size):
        single = drops[rows == b]
        assert float(upper[b, 0]) == pytest.approx(float(single.max()), abs=1e-6)
        assert float(lower[b, 0]) == pytest.approx(float(single.min()), abs=1e-6)
    assert (upper[:, 1] >= lower[:, 1] - 1e-6).all()
    k = removal_counts(0.5, content.sum(dim=1))
    assert (k >= 1).all()


# ----------------------------------------------------------------------------------------------- against a reference
#
# Comprehensiveness and sufficiency of a real run, recomputed by a slow loop that shares nothing with the suite:
# the model run one example at a time without padding, the tokens deleted from the id list by hand, the rankings
# read from the model's own attention probabilities and from leave-one-out computed here.


def _stored_rows(out) -> dict:
    """The run's per-example rows (rows/), by dataset index, as eval_suite.compare reads them."""
    from eval_suite.compare import load_evaluation

    return load_evaluation(out).rows


def _reference_model(folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _probabilities(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1).numpy()


def _reference_curves(model, ids: list[int], scores: dict[str, np.ndarray], fractions) -> dict:
    """ERASER, by the letter: per ranking and fraction f, k = max(1, ceil(f n)) content tokens of the highest
    score; comprehensiveness p(y|x) - p(y|x without them), sufficiency p(y|x) - p(y|only them and the specials)."""
    full = _probabilities(model, ids)
    y = int(full.argmax())
    content = list(range(1, len(ids) - 1))  # [CLS] w ... w [SEP]
    curves = {}
    for name, score in scores.items():
        order = sorted(content, key=lambda j: -score[j - 1])
        assert len({score[j - 1] for j in content}) == len(content), "a tie: the reference order would be ambiguous"
        comprehensiveness, sufficiency = [], []
        for fraction in fractions:
            k = max(1, math.ceil(fraction * len(content) - 1e-9))
            top = set(order[:k])
            without = [t for j, t in enumerate(ids) if j not in top]
            only = [t for j, t in enumerate(ids) if j in top or j in (0, len(ids) - 1)]
            comprehensiveness.append(full[y] - _probabilities(model, without)[y])
            sufficiency.append(full[y] - _probabilities(model, only)[y])
        curves[name] = (np.array(comprehensiveness), np.array(sufficiency))
    return curves


@pytest.fixture(scope="module")
def faithfulness_run(tmp_path_factory):
    from eval_suite.cli import main
    from tests.helpers.tiny_models import make_text_csv

    root = tmp_path_factory.mktemp("faith_ref")
    checkpoint = make_tiny_checkpoint(root / "ckpt", seed=1)  # softmax: no tied scores to break
    data = make_text_csv(root / "data.csv", n=10, min_words=4, max_words=11, seed=4)
    out = root / "eval"
    assert main([checkpoint, "--dataset", data, "--split", "train", "--measures", "faithfulness,loo", "--batch-size",
                 "4", "--plot-examples", "0", "--output-dir", str(out)]) == 0
    return checkpoint, data, out


def test_comprehensiveness_and_sufficiency_equal_a_loop_by_their_definitions(faithfulness_run):
    from hf_sparse_attn.data import load_text_classification

    checkpoint, data, out = faithfulness_run
    results = json.loads((out / "results.json").read_text())
    rows = _stored_rows(out)
    names = list(results["faithfulness"]["rankings"])
    fractions = results["faithfulness"]["fractions"]
    assert names[:2] == ["attention_layer_0", "attention_layer_1"] and "loo" in names
    texts = load_text_classification(data)["train"]["text"]
    model, tokenizer = _reference_model(checkpoint)
    expected = {name: ([], []) for name in names if name != "random"}
    for row, index in enumerate(rows["example.index"]):
        ids = tokenizer(texts[index])["input_ids"]
        full = _probabilities(model, ids)
        y = int(full.argmax())
        with torch.no_grad():
            attentions = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        scores = {f"attention_layer_{l}": a[0, :, 0, 1:-1].mean(dim=0).numpy() for l, a in enumerate(attentions)}
        scores["loo"] = np.array([abs(full[y] - _probabilities(model, ids[:j] + ids[j + 1:])[y])
                                  for j in range(1, len(ids) - 1)])
        for name, (c, s) in _reference_curves(model, ids, scores, fractions).items():
            r = names.index(name)
            np.testing.assert_allclose(rows["faithfulness.comprehensiveness"][row, r], c, atol=2e-5, err_msg=name)
            np.testing.assert_allclose(rows["faithfulness.sufficiency"][row, r], s, atol=2e-5, err_msg=name)
            expected[name][0].append(c.mean())
            expected[name][1].append(s.mean())
    for name, (c, s) in expected.items():  # AOPC: the mean over fractions, then over examples
        entry = results["faithfulness"]["rankings"][name]
        assert entry["comprehensiveness"]["mean"] == pytest.approx(np.mean(c), abs=2e-5)
        assert entry["sufficiency"]["mean"] == pytest.approx(np.mean(s), abs=2e-5)
        assert entry["comprehensiveness"]["n"] == len(c) == len(rows["example.index"]) >= 8


# A constructed classifier whose right ranking is known: uniform attention in one layer, so the [CLS] output is the
# mean of the tokens' embeddings, and only SIGNAL words have one (on a coordinate the classifier reads). p(class 1)
# rises with the share of signal words; removing one signal word costs far more than removing any other word.
SIGNAL = ("w1", "w2", "w3")


def _signal_checkpoint(folder) -> str:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=2,
                        attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # zero queries and keys: uniform attention; zero feed-forward: LayerNorm(h) only
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        embedding = model.bert.embeddings.word_embeddings.weight
        for word in SIGNAL:
            embedding[tokenizer.convert_tokens_to_ids(word), 0] = 1.0
        embedding[tokenizer.convert_tokens_to_ids("[CLS]"), 1] = 1.0  # a fixed offset LayerNorm cannot scale away
        attention = model.bert.encoder.layer[0].attention
        attention.self.value.weight.copy_(torch.eye(32))
        attention.output.dense.weight.copy_(torch.eye(32))
        model.bert.pooler.dense.weight[0, 0] = 1.0
        model.classifier.weight[1, 0] = 6.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_on_a_model_with_a_known_ranking_the_right_tokens_are_removed_and_kept(tmp_path):
    """Every text holds one or two signal words among neutral ones and is predicted class 1. Leave-one-out ranks
    the signal words first, so for every k >= the number of signal words, removing the top k leaves no signal
    (comprehensiveness = p(x) - p(no signal), large) and keeping them keeps all of it (sufficiency < 0: the
    signal's share only grows). A ranking removed from the bottom, or the two measures swapped, fail this."""
    import csv

    from eval_suite.cli import main
    from hf_sparse_attn.data import load_text_classification

    rng = np.random.default_rng(5)
    neutral = [w for w in VOCAB_WORDS if w not in SIGNAL]
    texts = []
    for i in range(10):
        words = list(rng.choice(neutral, size=int(rng.integers(7, 11)))) + list(SIGNAL[: 1 + i % 2])
        texts.append(" ".join(rng.permutation(words)))
    data = tmp_path / "data.csv"
    with open(data, "w", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"], *[[t, i % 2] for i, t in enumerate(texts)]])
    checkpoint = _signal_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    assert main([checkpoint, "--dataset", str(data), "--split", "train", "--measures", "faithfulness,loo",
                 "--fractions", "0.2,0.3,0.5", "--plot-examples", "0", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = _stored_rows(out)
    texts = load_text_classification(str(data))["train"]["text"]
    names = list(results["faithfulness"]["rankings"])
    loo = names.index("loo")
    model, tokenizer = _reference_model(checkpoint)
    no_signal = _probabilities(model, tokenizer("w10 w11")["input_ids"])[1]
    assert (rows["example.prediction"] == 1).all() and no_signal < 0.3
    for row, index in enumerate(rows["example.index"]):
        words = texts[index].split()
        n_signal = sum(w in SIGNAL for w in words)
        full = rows["example.probability"][row]
        for f, fraction in enumerate(results["faithfulness"]["fractions"]):
            k = max(1, math.ceil(fraction * len(words) - 1e-9))
            assert k >= n_signal
            kept = " ".join([w for w in words if w in SIGNAL] + ["w10"] * (k - n_signal))
            assert rows["faithfulness.comprehensiveness"][row, loo, f] == pytest.approx(full - no_signal, abs=1e-5)
            assert rows["faithfulness.sufficiency"][row, loo, f] == pytest.approx(
                full - _probabilities(model, tokenizer(kept)["input_ids"])[1], abs=1e-5)
            assert rows["faithfulness.sufficiency"][row, loo, f] < 0
    ranked = results["faithfulness"]["rankings"]
    assert ranked["loo"]["comprehensiveness"]["mean"] > 0.4
    assert ranked["loo"]["comprehensiveness_minus_random"]["mean"] > 0.2
    assert ranked["loo"]["sufficiency_minus_random"]["mean"] < -0.2
    assert results["summary"]["most_comprehensive_ranking"] == "loo"
