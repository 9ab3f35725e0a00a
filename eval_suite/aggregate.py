"""Per-example metric rows -> the results dict (docs/CONTRACTS.md section 4) and the layer x head CSV table.

Means and standard deviations are over examples (population std, ddof=0), ignoring undefined (NaN) values;
``n`` says how many examples were defined. JSON gets ``null`` where nothing was defined.
"""

from __future__ import annotations

import csv
import io
import math
import warnings

import numpy as np

from . import metrics as M
from .measure import COMPARISON_METRICS, IMPORTANCE_METHODS, INPUT_METHODS, REPRESENTATION_METHODS


def _stat(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def concatenate_rows(shards: list[dict]) -> dict[str, np.ndarray]:
    """Concatenate per-batch arrays and sort every array by example index."""
    keys = shards[0].keys()
    rows = {k: np.concatenate([s[k] for s in shards], axis=0) for k in keys}
    order = np.argsort(rows["example.index"], kind="stable")
    return {k: v[order] for k, v in rows.items()}


def aggregate(rows: dict[str, np.ndarray], *, n_layers: int, n_heads: int, ranking_names: list[str],
              fractions: list[float]) -> dict:
    """The metric part of results.json: task quality, per_layer_head, per_layer, faithfulness, summary."""
    labels = rows["example.label"].astype(np.int64)
    predictions = rows["example.prediction"].astype(np.int64)
    results = {
        "n_examples": int(labels.size),
        "accuracy": M.accuracy(predictions, labels),
        "macro_f1": M.macro_f1(predictions, labels),
        "importance_methods": list(IMPORTANCE_METHODS),
        "input_methods": list(INPUT_METHODS),
        "representation_methods": list(REPRESENTATION_METHODS),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_layer_head = []
        for layer in range(n_layers):
            for head in range(n_heads):
                per_layer_head.append(_layer_head(rows, layer, head))
        per_layer = [_layer(rows, layer, n_heads) for layer in range(n_layers)]
        faithfulness = _faithfulness(rows, ranking_names, fractions)
    results.update(per_layer_head=per_layer_head, per_layer=per_layer, faithfulness=faithfulness)
    results["summary"] = _summary(results, n_layers)
    return results


def _layer_head(rows, layer, head) -> dict:
    at = lambda key: rows[key][:, layer, head]  # noqa: E731
    entry = {
        "layer": layer,
        "head": head,
        "sparsity": _stat(at("attention.sparsity"))["mean"],
        "sparsity_std": _stat(at("attention.sparsity"))["std"],
        "support_size": _stat(at("attention.support_size"))["mean"],
        "attention_entropy": _stat(at("attention.entropy"))["mean"],
        "attention_entropy_std": _stat(at("attention.entropy"))["std"],
        "special_mass": _stat(at("attention.special_mass"))["mean"],
        "n_defined": _stat(at("attention.entropy"))["n"],
    }
    for metric in COMPARISON_METRICS:
        values = at(f"attention.{metric}")
        entry[metric] = {m: _stat(values[:, i]) for i, m in enumerate(IMPORTANCE_METHODS)}
    entry["importance_entropy"] = {m: _stat(rows["importance.entropy"][:, layer, i]) for i, m in enumerate(IMPORTANCE_METHODS)}
    for source in ("rollout", "projected"):
        block = {key: _stat(at(f"{source}.{key}")) for key in ("entropy", "sparsity", "support_size")}
        for metric in COMPARISON_METRICS:
            values = at(f"{source}.{metric}")
            block[metric] = {m: _stat(values[:, i]) for i, m in enumerate(INPUT_METHODS)}
        entry[source] = block
    return entry


def _layer(rows, layer, n_heads) -> dict:
    return {
        "layer": layer,
        "input_to_repr_entropy": _stat(rows["input_to_repr.entropy"][:, layer]),
        "coindexed_share": _stat(rows["input_to_repr.coindexed_share"][:, layer]),
        "importance_entropy": {m: _stat(rows["importance.entropy"][:, layer, i]) for i, m in enumerate(IMPORTANCE_METHODS)},
        "attention_sparsity": _stat(np.nanmean(rows["attention.sparsity"][:, layer, :], axis=-1)),
        "attention_entropy": _stat(np.nanmean(rows["attention.entropy"][:, layer, :], axis=-1)),
        "projected_entropy": _stat(np.nanmean(rows["projected.entropy"][:, layer, :], axis=-1)),
        "rollout_entropy": _stat(np.nanmean(rows["rollout.entropy"][:, layer, :], axis=-1)),
    }


def _faithfulness(rows, ranking_names, fractions) -> dict:
    comprehensiveness = rows["faithfulness.comprehensiveness"]  # [N, R, F]
    sufficiency = rows["faithfulness.sufficiency"]
    rankings = {}
    for r, name in enumerate(ranking_names):
        rankings[name] = {
            "comprehensiveness": _stat(comprehensiveness[:, r].mean(axis=-1)),
            "sufficiency": _stat(sufficiency[:, r].mean(axis=-1)),
            "comprehensiveness_per_fraction": [_stat(comprehensiveness[:, r, f])["mean"] for f in range(len(fractions))],
            "sufficiency_per_fraction": [_stat(sufficiency[:, r, f])["mean"] for f in range(len(fractions))],
        }
    return {"fractions": list(fractions), "rankings": rankings}


def _summary(results: dict, n_layers: int) -> dict:
    heads = results["per_layer_head"]
    tau = {m: _mean(h["kendall_tau_b"][m]["mean"] for h in heads) for m in IMPORTANCE_METHODS}
    tau_by_layer = {m: [_mean(h["kendall_tau_b"][m]["mean"] for h in heads if h["layer"] == layer)
                        for layer in range(n_layers)] for m in IMPORTANCE_METHODS}
    rollout_tau = {m: _mean(h["rollout"]["kendall_tau_b"][m]["mean"] for h in heads) for m in INPUT_METHODS}
    projected_tau = {m: _mean(h["projected"]["kendall_tau_b"][m]["mean"] for h in heads) for m in INPUT_METHODS}
    importance_entropy = {m: _mean(l["importance_entropy"][m]["mean"] for l in results["per_layer"]) for m in IMPORTANCE_METHODS}
    deep = [l for l in results["per_layer"] if l["layer"] > 0]  # layer 0 attends over embeddings: trivially 0 / 1
    summary = {
        "mean_kendall_tau_b": tau,
        "mean_kendall_tau_b_by_layer": tau_by_layer,
        "mean_rollout_kendall_tau_b": rollout_tau,
        "mean_projected_kendall_tau_b": projected_tau,
        "mean_attention_sparsity": _mean(h["sparsity"] for h in heads),
        "mean_support_size": _mean(h["support_size"] for h in heads),
        "mean_attention_entropy": _mean(h["attention_entropy"] for h in heads),
        "mean_special_mass": _mean(h["special_mass"] for h in heads),
        "mean_importance_entropy": importance_entropy,
        "mean_rollout_entropy": _mean(h["rollout"]["entropy"]["mean"] for h in heads),
        "mean_projected_entropy": _mean(h["projected"]["entropy"]["mean"] for h in heads),
        "mean_input_to_repr_entropy": _mean(l["input_to_repr_entropy"]["mean"] for l in deep),
        "mean_coindexed_share": _mean(l["coindexed_share"]["mean"] for l in deep),
    }
    faith = results["faithfulness"]["rankings"]
    scored = [(v["comprehensiveness"]["mean"], k) for k, v in faith.items() if v["comprehensiveness"]["mean"] is not None]
    summary["most_comprehensive_ranking"] = max(scored)[1] if scored else None
    summary["text"] = _summary_text(summary)
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _summary_text(s: dict) -> list[str]:
    tau = s["mean_kendall_tau_b"]
    lines = [
        "mean tau-b(attention, input importance): " + ", ".join(f"{m} {_fmt(tau[m])}" for m in INPUT_METHODS),
        "mean tau-b(attention, representation importance): "
        + ", ".join(f"{m} {_fmt(tau[m])}" for m in REPRESENTATION_METHODS),
        f"attention: sparsity {_fmt(s['mean_attention_sparsity'])}, normalised entropy "
        f"{_fmt(s['mean_attention_entropy'])}, mass on special tokens {_fmt(s['mean_special_mass'])}",
        f"input maps: rollout entropy {_fmt(s['mean_rollout_entropy'])}, projected attention entropy "
        f"{_fmt(s['mean_projected_entropy'])}, input-importance entropy "
        + ", ".join(f"{m} {_fmt(s['mean_importance_entropy'][m])}" for m in INPUT_METHODS),
        f"input-to-representation (layers >= 1): entropy {_fmt(s['mean_input_to_repr_entropy'])}, co-indexed share "
        f"{_fmt(s['mean_coindexed_share'])}",
        f"most comprehensive ranking: {s['most_comprehensive_ranking']}",
    ]
    return lines


def layer_head_table(results: dict) -> str:
    """The layer x head table as CSV text (one row per layer and head)."""
    heads = results["per_layer_head"]
    scalar = ["layer", "head", "sparsity", "sparsity_std", "support_size", "attention_entropy", "attention_entropy_std",
              "special_mass", "n_defined"]
    columns = list(scalar)
    for metric in COMPARISON_METRICS:
        for m in IMPORTANCE_METHODS:
            columns += [f"{metric}.{m}.mean", f"{metric}.{m}.std"]
    for m in IMPORTANCE_METHODS:
        columns.append(f"importance_entropy.{m}.mean")
    for source in ("rollout", "projected"):
        columns += [f"{source}.entropy.mean", f"{source}.sparsity.mean"]
        for metric in COMPARISON_METRICS:
            for m in INPUT_METHODS:
                columns += [f"{source}.{metric}.{m}.mean", f"{source}.{metric}.{m}.std"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for h in heads:
        row = [h[c] for c in scalar]
        for metric in COMPARISON_METRICS:
            for m in IMPORTANCE_METHODS:
                row += [h[metric][m]["mean"], h[metric][m]["std"]]
        for m in IMPORTANCE_METHODS:
            row.append(h["importance_entropy"][m]["mean"])
        for source in ("rollout", "projected"):
            row += [h[source]["entropy"]["mean"], h[source]["sparsity"]["mean"]]
            for metric in COMPARISON_METRICS:
                for m in INPUT_METHODS:
                    row += [h[source][metric][m]["mean"], h[source][metric][m]["std"]]
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()
