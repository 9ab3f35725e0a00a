"""Seeded made-up results and token examples in the full results contract (every statistic a
{"mean", "std", "n", "ci95", "defined", "reason"} dict), at any size: for the report's rendering and page-speed
tests, where a real 12 x 12 x 100 evaluation would take far longer than the page it feeds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

METHODS = ("grad_norm", "grad_x_input", "integrated_gradients", "loo", "repr_grad_norm", "repr_loo")
INPUT = METHODS[:4]
REPR = METHODS[4:]
AGREEMENT = ("kendall_tau_b", "kendall_tau_b_on_support", "kendall_tau_b_on_union", "kendall_tau_b_null",
             "kendall_tau_b_excess", "jensen_shannon")
SPECIAL_REASON = "all attention on special tokens in {n} of {n} examples"


def _stat(rng, mean, n, *, undefined_reason=None):
    if undefined_reason:
        return {"mean": None, "std": None, "n": 0, "ci95": None, "defined": False, "reason": undefined_reason}
    half = float(rng.uniform(0.01, 0.08))
    return {"mean": float(mean), "std": float(rng.uniform(0.05, 0.3)), "n": int(n),
            "ci95": [float(mean) - half, float(mean) + half], "defined": True, "reason": None}


def undefined_heads(n_layers: int, n_heads: int) -> set[tuple[int, int]]:
    """The heads the made-up results mark undefined (every 7th, counting layer-major)."""
    return {(i // n_heads, i % n_heads) for i in range(n_layers * n_heads) if i % 7 == 3}


def full_results(n_layers=12, n_heads=12, n_examples=100, *, seed=0, attn_impl="entmax15") -> dict:
    """A results dict with every field the report reads, undefined heads included (see undefined_heads)."""
    rng = np.random.default_rng(seed)
    undefined = undefined_heads(n_layers, n_heads)
    reason = SPECIAL_REASON.format(n=n_examples)
    heads = []
    for layer in range(n_layers):
        for head in range(n_heads):
            off = (layer, head) in undefined
            entry = {"layer": layer, "head": head}
            for metric in AGREEMENT:
                lo, hi = (0, 0.7) if metric == "jensen_shannon" else (-0.4, 0.8)
                entry[metric] = {m: _stat(rng, rng.uniform(lo, hi), n_examples, undefined_reason=reason if off else None)
                                 for m in METHODS}
            entry["attention_entropy"] = _stat(rng, rng.uniform(0, 1), n_examples, undefined_reason=reason if off else None)
            entry["attention_sparsity"] = _stat(rng, rng.uniform(0.2, 0.95), n_examples)
            entry["special_mass"] = _stat(rng, 1.0 if off else rng.uniform(0, 0.9), n_examples)
            entry["defined_share"] = _stat(rng, 0.0 if off else rng.uniform(0.5, 1), n_examples)
            heads.append(entry)
    per_layer = [{"layer": layer,
                  "input_to_repr_entropy": _stat(rng, 0.0 if layer == 0 else rng.uniform(0.5, 0.95), n_examples),
                  "coindexed_share": _stat(rng, 1.0 if layer == 0 else rng.uniform(0.05, 0.5), n_examples)}
                 for layer in range(n_layers)]
    rankings = [f"attention_layer_{l}" for l in range(n_layers)] + ["rollout", *INPUT, "random"]
    faithfulness = {"fractions": [0.01, 0.05, 0.1, 0.2, 0.5],
                    "rankings": {name: {"comprehensiveness": _stat(rng, rng.uniform(0, 0.4), n_examples),
                                        "sufficiency": _stat(rng, rng.uniform(-0.05, 0.3), n_examples)}
                                 for name in rankings}}
    return {"checkpoint": "/models/minilm-entmax15/final", "weights_fingerprint": "sha256:" + "ab" * 32,
            "attn_impl": attn_impl, "sparse_attention": {"attn_impl": attn_impl}, "dataset": "mr", "split": "test",
            "n_examples": n_examples, "accuracy": 0.81, "macro_f1": 0.8, "n_layers": n_layers, "n_heads": n_heads,
            "importance_methods": list(METHODS), "input_methods": list(INPUT), "representation_methods": list(REPR),
            "per_layer_head": heads, "per_layer": per_layer, "faithfulness": faithfulness,
            "summary": {"text": ["made-up numbers for the report's tests"]}, "plots": [],
            "config": {"label_names": ["rotten", "fresh"], "attention_query": "cls"}}


def _sparse_distribution(rng, n_tokens, *, zero_share=0.5):
    values = rng.dirichlet(np.ones(n_tokens))
    values[rng.random(n_tokens) < zero_share] = 0.0
    if values.sum() == 0:
        values[rng.integers(n_tokens)] = 1.0
    return (values / values.sum()).round(6).tolist()


def token_examples(n_layers=12, n_heads=12, n_examples=100, *, seed=0, min_tokens=8, max_tokens=40) -> dict:
    """token_examples.json content for ``n_examples`` made-up sentences (heads on special tokens: null rows)."""
    rng = np.random.default_rng(seed + 1)
    undefined = undefined_heads(n_layers, n_heads)
    out = {}
    for index in range(n_examples):
        n = int(rng.integers(min_tokens, max_tokens + 1))
        tokens = [f"word{int(rng.integers(1000))}" for _ in range(n)]
        heads = [[[None] * n if (l, h) in undefined else _sparse_distribution(rng, n) for h in range(n_heads)]
                 for l in range(n_layers)]
        projected = [[[None] * n if (l, h) in undefined else _sparse_distribution(rng, n, zero_share=0)
                      for h in range(n_heads)] for l in range(n_layers)]
        maps = {f"attention layer {l} (head mean)": _sparse_distribution(rng, n) for l in range(n_layers)}
        maps["rollout (whole network)"] = _sparse_distribution(rng, n, zero_share=0)
        maps.update({m: _sparse_distribution(rng, n, zero_share=0) for m in INPUT})
        label = int(rng.integers(2))
        out[str(index)] = {
            "tokens": tokens, "label": label, "prediction": label if rng.random() < 0.8 else 1 - label,
            "probability": float(rng.uniform(0.5, 1.0)), "maps": maps, "heads": heads, "projected": projected,
            "special_mass": [[1.0 if (l, h) in undefined else float(rng.uniform(0, 0.9)) for h in range(n_heads)]
                             for l in range(n_layers)],
            "representation": {m: [_sparse_distribution(rng, n, zero_share=0) for _ in range(n_layers)] for m in REPR},
        }
    return out


_PAYLOAD = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def embedded(path) -> dict:
    """The JSON payload a report page carries."""
    (match,) = _PAYLOAD.findall(Path(path).read_text(encoding="utf-8"))
    return json.loads(match)
