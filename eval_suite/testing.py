"""Tiny, deterministic fixtures for tests and demos: a random BERT classifier with a word-level tokenizer, and a
CSV of random 'sentences' over its vocabulary. Nothing here touches the network."""

from __future__ import annotations

import csv
import os
import random

VOCAB_WORDS = [f"w{i}" for i in range(95)]


def make_tiny_checkpoint(folder, *, layers: int = 2, heads: int = 4, num_labels: int = 2, seed: int = 0,
                         attn_impl: str | None = None, initializer_range: float = 0.3, with_head: bool = True) -> str:
    """Save a random BERT sequence classifier (hidden 32) and its tokenizer into ``folder``; return the path.

    ``initializer_range`` is larger than BERT's 0.02 so that predictions depend visibly on the input.
    ``attn_impl`` makes it one of our sparse checkpoints; ``with_head=False`` saves a bare BertModel.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab_path = os.path.join(folder, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=vocab_path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=37, num_labels=num_labels, max_position_embeddings=64,
                        initializer_range=initializer_range)
    model = (BertForSequenceClassification if with_head else BertModel)(config).eval()
    # Trained LayerNorms have non-trivial gains and biases. With the initial gain 1 / bias 0, every hidden state
    # has norm sqrt(hidden_size) exactly and eq. 5 (the gradient of ||h_p||) would be numerical noise.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.5)
    if attn_impl is not None:
        import hf_sparse_attn

        hf_sparse_attn.sparsify(model, attn_impl=attn_impl)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_text_csv(path, *, n: int = 40, n_classes: int = 2, seed: int = 0, min_words: int = 3, max_words: int = 12,
                  text_column: str = "text", label_column: str = "label") -> str:
    """Write ``n`` random texts over the tiny vocabulary with labels 0..n_classes-1."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([text_column, label_column])
        for i in range(n):
            words = [rng.choice(VOCAB_WORDS) for _ in range(rng.randint(min_words, max_words))]
            writer.writerow([" ".join(words), i % n_classes])
    return str(path)
