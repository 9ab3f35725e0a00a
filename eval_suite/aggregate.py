"""Per-example metric rows -> the results dict (docs/CONTRACTS.md section 4) and the layer x head CSV table.

Every aggregate is a *stat*: ``{"mean", "std", "n", "ci95", "defined", "reason"}``.

* ``n`` is the number of examples (or, pooled, of example x head values) the mean rests on: undefined values (NaN:
  a head that put all its attention on special tokens, a constant vector, a single content token) are left out and
  counted, never averaged in as zeros.
* ``std`` is the sample standard deviation (ddof=1) of those values.
* ``ci95`` is a percentile bootstrap interval of the mean: examples are resampled with replacement (seeded), the
  same resamples for every statistic of one evaluation, so intervals of related numbers are consistent.
* ``defined`` is false when the value rests on fewer than ``min(min_examples, N)`` examples (N: examples
  evaluated); its mean is then still shown as ``null`` and ``reason`` says why.

Means over heads and layers pool the defined heads' values, so each head weighs by the examples it is defined on
(a head defined on one example counts once, not like a head defined on all of them); an undefined head is left
out and counted in ``n_heads_defined``.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .errors import EvalError
from .measure import COMPARISON_METRICS
from .measures import REGISTRY, MethodLists, methods_with_role, mixing_views

# The agreement figures pooled per layer and over the whole model (docs/eval_suite.md explains each).
POOLED_AGREEMENT = ("kendall_tau_b", "kendall_tau_b_on_support", "kendall_tau_b_on_union", "kendall_tau_b_null",
                    "kendall_tau_b_excess", "jensen_shannon")
HEADLINE_METRIC = "kendall_tau_b_excess"
MIXING_SUMMARIES = ("entropy", "sparsity", "special_mass")


@dataclass
class AggregateConfig:
    """How per-example rows become aggregates (recorded in results.json as config.aggregation)."""

    min_examples: int = 10  # a value is defined when it rests on at least min(min_examples, N) examples
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.min_examples < 1 or self.bootstrap_resamples < 10 or not 0 < self.confidence < 1:
            raise EvalError(f"--min-examples must be >= 1 and --bootstrap-resamples >= 10 (got {self.min_examples} "
                            f"and {self.bootstrap_resamples}), the confidence in (0, 1)")

    def to_dict(self) -> dict:
        return {"min_examples": self.min_examples, "bootstrap_resamples": self.bootstrap_resamples,
                "bootstrap_seed": self.bootstrap_seed, "confidence": self.confidence}


class Bootstrap:
    """Seeded resamples of N examples, as a count matrix [R, N]: resampled sums are one matrix product."""

    def __init__(self, n_examples: int, config: AggregateConfig):
        rng = np.random.default_rng(config.bootstrap_seed)
        self.counts = rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples),
                                      size=config.bootstrap_resamples).astype(np.float64)
        self.tail = (1 - config.confidence) / 2 * 100

    def interval(self, sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of sum/count over resamples; ``sums`` and ``counts`` are per example [N, K]."""
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (self.counts @ sums) / (self.counts @ counts)  # [R, K]
            return (np.nanpercentile(means, self.tail, axis=0), np.nanpercentile(means, 100 - self.tail, axis=0))


class Stats:
    """mean, std, n and interval of a per-example array [N, *S], for every cell of S at once (vectorised)."""

    def __init__(self, values: np.ndarray, bootstrap: Bootstrap, min_n: int):
        values = np.asarray(values, dtype=np.float64)
        self.shape = values.shape[1:]
        flat = values.reshape(values.shape[0], -1)
        finite = np.isfinite(flat)
        filled = np.where(finite, flat, 0.0)
        self.n = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = filled.sum(axis=0) / self.n
            squares = np.where(finite, (flat - self.mean) ** 2, 0.0).sum(axis=0)
            self.std = np.sqrt(squares / (self.n - 1))
        self.low, self.high = bootstrap.interval(filled, finite.astype(np.float64))
        self.min_n = min_n
        self.n_total = values.shape[0]

    def at(self, *index, reason: str | None = None) -> dict:
        """The stat dict of one cell (``index`` into S); ``reason`` explains an undefined cell's missing values."""
        k = int(np.ravel_multi_index(index, self.shape)) if self.shape else 0
        return make_stat(self.mean[k], self.std[k], int(self.n[k]), self.low[k], self.high[k], self.min_n,
                         self.n_total, reason)


def make_stat(mean, std, n: int, low, high, min_n: int, n_total: int, reason: str | None = None) -> dict:
    defined = n >= min_n and n > 0
    why = None
    if not defined:
        why = f"defined on {n} of {n_total} examples (at least {min_n} needed)" + (f": {reason}" if reason else "")
    return {"mean": _finite(mean) if defined else None, "std": _finite(std) if defined else None, "n": n,
            "ci95": [_finite(low), _finite(high)] if defined and _finite(low) is not None else None,
            "defined": bool(defined), "reason": why}


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def pooled_stat(values: np.ndarray, include: np.ndarray, bootstrap: Bootstrap, min_n: int) -> dict:
    """One stat over the cells of ``values`` [N, *S] selected by ``include`` [*S] (defined cells): pooled values."""
    values = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
    include = np.asarray(include, dtype=bool).reshape(-1)
    finite = np.isfinite(values) & include[None, :]
    filled = np.where(finite, values, 0.0)
    sums, counts = filled.sum(axis=1, keepdims=True), finite.sum(axis=1, keepdims=True).astype(np.float64)
    n = int(counts.sum())
    if n == 0:
        return make_stat(np.nan, np.nan, 0, np.nan, np.nan, min_n, values.shape[0], "no defined value to pool")
    mean = sums.sum() / n
    pooled_values = values[finite]
    std = pooled_values.std(ddof=1) if pooled_values.size > 1 else np.nan
    low, high = bootstrap.interval(sums, counts)
    stat = make_stat(mean, std, n, low[0], high[0], min(min_n, n), values.shape[0])
    stat["n_cells"] = int(include.sum())
    return stat


def concatenate_rows(shards: list[dict]) -> dict[str, np.ndarray]:
    """Concatenate per-batch arrays and sort every array by example index."""
    keys = shards[0].keys()
    rows = {k: np.concatenate([s[k] for s in shards], axis=0) for k in keys}
    order = np.argsort(rows["example.index"], kind="stable")
    return {k: v[order] for k, v in rows.items()}


# --------------------------------------------------------------------------------------------- the results dict


class _Aggregator:
    """The rows of one evaluation and what every part of the results dict shares (bootstrap, minimum n)."""

    def __init__(self, rows: dict, n_layers: int, n_heads: int, config: AggregateConfig, measures):
        self.rows, self.n_layers, self.n_heads, self.config = rows, n_layers, n_heads, config
        self.measures = tuple(measures)
        self.methods = MethodLists.of(self.measures)
        self.mixing = methods_with_role(self.measures, "mixing")
        self.n = int(rows["example.label"].shape[0])
        self.min_n = min(config.min_examples, self.n)
        self.bootstrap = Bootstrap(self.n, config)
        self._cache: dict[str, Stats] = {}
        # Examples where a head gave its content tokens no attention at all: the first reason for undefined cells.
        self.no_content = np.nan_to_num(rows["attention.special_mass"], nan=0.0) >= 1.0 - 1e-9  # [N, n, H]

    def stats(self, key: str) -> Stats:
        if key not in self._cache:
            self._cache[key] = Stats(self.rows[key], self.bootstrap, self.min_n)
        return self._cache[key]

    def reason(self, layer: int, head: int) -> str | None:
        k = int(self.no_content[:, layer, head].sum())
        return f"all attention on special tokens in {k} of {self.n} examples" if k else None

    def metric_block(self, prefix: str, methods, layer: int, head: int, reason: str | None) -> dict:
        return {metric: {m: self.stats(f"{prefix}.{metric}").at(layer, head, i, reason=reason)
                         for i, m in enumerate(methods)} for metric in COMPARISON_METRICS}

    def summaries(self, prefix: str, layer: int, head: int, reason: str | None) -> dict:
        return {key: self.stats(f"{prefix}.{key}").at(layer, head, reason=reason)
                for key in ("entropy", "sparsity", "support_size")}

    def compared_with(self, view: str) -> list[str]:
        """The importance methods a context-mixing view is compared with: the inputs view (contributions of the
        inputs) with the input methods, the head and layer views (over ``h^(l)``) with every method, as attention."""
        return list(self.methods.input if view == "inputs" else self.methods.importance)

    def defined(self, key: str) -> np.ndarray:
        return self.stats(key).n >= self.min_n

    def pooled(self, key: str, select=None) -> dict:
        """Pooled stat of rows[key] over its defined cells, optionally restricted by ``select`` (bool, cell shape)."""
        include = self.defined(key).reshape(self.stats(key).shape)
        if select is not None:
            include = include & np.broadcast_to(select, include.shape)
        return pooled_stat(self.rows[key], include, self.bootstrap, self.min_n)


def aggregate(rows: dict[str, np.ndarray], *, n_layers: int, n_heads: int, ranking_names: list[str],
              fractions: list[float], config: AggregateConfig | None = None, measures=None) -> dict:
    """The metric part of results.json: task quality, per_layer_head, per_layer, faithfulness, summary.

    ``measures`` names what the rows hold (default: every registered measurement); a measurement that was not
    run has no key in the result, never a placeholder value.
    """
    measures = tuple(REGISTRY) if measures is None else tuple(measures)
    agg = _Aggregator(rows, n_layers, n_heads, config or AggregateConfig(), measures)
    labels = rows["example.label"].astype(np.int64)
    predictions = rows["example.prediction"].astype(np.int64)
    correct = (predictions == labels).astype(np.float64)[:, None]
    low, high = agg.bootstrap.interval(correct, np.ones_like(correct))
    methods = agg.methods
    results = {
        "n_examples": agg.n,
        "accuracy": M.accuracy(predictions, labels),
        "accuracy_ci95": [float(low[0]), float(high[0])],
        "macro_f1": M.macro_f1(predictions, labels),
        "measures": list(measures),
        "importance_methods": methods.importance,
        "input_methods": methods.input,
        "representation_methods": methods.representation,
        "all_positions_methods": methods.all_positions,
    }
    if agg.mixing:
        results["mixing_methods"] = {m: list(mixing_views(m)) for m in agg.mixing}
        results["mixing_compared_with"] = {view: agg.compared_with(view) for view in ("head", "layer", "inputs")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results["per_layer_head"] = [_layer_head(agg, layer, head) for layer in range(n_layers)
                                     for head in range(n_heads)]
        results["per_layer"] = [_layer(agg, layer) for layer in range(n_layers)]
        if "faithfulness" in measures:
            results["faithfulness"] = _faithfulness(agg, ranking_names, fractions)
        if "integrated_gradients" in measures:
            results["integrated_gradients"] = _integrated_gradients(agg)
        results["summary"] = _summary(agg, results)
    return results


def _maps(agg: _Aggregator) -> list[str]:
    """The attention-to-input maps that were measured (rollout, projected)."""
    return [m for m in ("rollout", "projected") if m in agg.measures]


def _layer_head(agg: _Aggregator, layer: int, head: int) -> dict:
    reason = agg.reason(layer, head)
    attention = agg.summaries("attention", layer, head, reason)
    entropy = attention["entropy"]
    methods = agg.methods
    entry = {
        "layer": layer,
        "head": head,
        "n_examples": agg.n,
        "defined": entropy["defined"],
        "defined_share": entropy["n"] / agg.n,
        "undefined_reason": entropy["reason"],
        "attention_sparsity": attention["sparsity"],
        "attention_support_size": attention["support_size"],
        "attention_entropy": entropy,
        "special_mass": agg.stats("attention.special_mass").at(layer, head),
    }
    if methods.importance:
        entry.update(agg.metric_block("attention", methods.importance, layer, head, reason))
        entry["importance_entropy"] = {m: agg.stats("importance.entropy").at(layer, i)
                                       for i, m in enumerate(methods.importance)}
    everywhere = agg.summaries("all_positions", layer, head, None)
    entry["all_positions"] = {"attention_sparsity": everywhere["sparsity"],
                              "attention_support_size": everywhere["support_size"],
                              "attention_entropy": everywhere["entropy"]}
    if methods.all_positions:
        entry["all_positions"].update(agg.metric_block("all_positions", methods.all_positions, layer, head, None))
    for source in _maps(agg):
        entry[source] = agg.summaries(source, layer, head, reason)
        if methods.input:
            entry[source].update(agg.metric_block(source, methods.input, layer, head, reason))
    per_head = [m for m in agg.mixing if "head" in mixing_views(m)]
    if per_head:
        entry["mixing"] = {}
        for m in per_head:
            prefix = f"mixing.{m}.head"
            block = {key: agg.stats(f"{prefix}.{key}").at(layer, head) for key in MIXING_SUMMARIES}
            if agg.compared_with("head"):
                block.update(agg.metric_block(prefix, agg.compared_with("head"), layer, head, None))
            entry["mixing"][m] = block
    return entry


def _sampling(agg: _Aggregator, layer_select) -> dict | None:
    """The eq. 5 estimator's own error when its summaries come from sampled positions: the standard error of the
    mean over examples that position sampling alone adds, sqrt(sum of per-example squared errors) / n."""
    if "input_to_repr.positions" not in agg.rows:
        return None
    out = {"positions_per_example": _finite(np.nanmax(agg.rows["input_to_repr.positions"])),
           "estimator": "mean over a seeded uniform sample of content positions per example (unbiased); "
                        "standard error with the finite-population correction"}
    for key in ("entropy", "coindexed_share"):
        se = agg.rows[f"input_to_repr.{key}_se"][:, layer_select].astype(np.float64)
        values = agg.rows[f"input_to_repr.{key}"][:, layer_select]
        finite = np.isfinite(se) & np.isfinite(values)
        out[f"{key}_standard_error"] = _finite(np.sqrt((se[finite] ** 2).sum()) / finite.sum()) if finite.any() \
            else None
    return out


def _layer(agg: _Aggregator, layer: int) -> dict:
    in_layer = np.zeros((agg.n_layers, agg.n_heads), dtype=bool)
    in_layer[layer] = True
    heads_defined = int(agg.defined("attention.entropy").reshape(agg.n_layers, agg.n_heads)[layer].sum())
    methods = agg.methods
    agreement = {}
    for i, m in enumerate(methods.importance):
        select = np.zeros((agg.n_layers, agg.n_heads, len(methods.importance)), dtype=bool)
        select[layer, :, i] = True
        agreement[m] = {metric: agg.pooled(f"attention.{metric}", select) for metric in POOLED_AGREEMENT}
    out = {
        "layer": layer,
        "n_heads": agg.n_heads,
        "n_heads_defined": heads_defined,
        "agreement": agreement,
        "attention_sparsity": agg.pooled("attention.sparsity", in_layer),
        "attention_entropy": agg.pooled("attention.entropy", in_layer),
        "special_mass": agg.pooled("attention.special_mass", in_layer),
    }
    for source in _maps(agg):
        out[f"{source}_entropy"] = agg.pooled(f"{source}.entropy", in_layer)
    if "input_to_repr" in agg.measures:
        out["input_to_repr_entropy"] = agg.stats("input_to_repr.entropy").at(layer)
        out["coindexed_share"] = agg.stats("input_to_repr.coindexed_share").at(layer)
        sampling = _sampling(agg, [layer])
        if sampling is not None:
            out["input_to_repr_sampling"] = sampling
    if methods.importance:
        out["importance_entropy"] = {m: agg.stats("importance.entropy").at(layer, i)
                                     for i, m in enumerate(methods.importance)}
    if agg.mixing:
        out["mixing"] = {m: {view: _mixing_layer(agg, m, view, layer) for view in mixing_views(m)}
                         for m in agg.mixing}
    return out


def _mixing_layer(agg: _Aggregator, method: str, view: str, layer: int) -> dict:
    """One context-mixing view in one layer: its summaries and its agreement with every compared method (the
    head view pooled over the layer's defined heads, as attention's per-layer figures)."""
    prefix = f"mixing.{method}.{view}"
    compared = agg.compared_with(view)
    if view == "head":
        in_layer = np.zeros((agg.n_layers, agg.n_heads), dtype=bool)
        in_layer[layer] = True
        block = {key: agg.pooled(f"{prefix}.{key}", in_layer) for key in MIXING_SUMMARIES}
        agreement = {}
        for i, m in enumerate(compared):
            select = np.zeros((agg.n_layers, agg.n_heads, len(compared)), dtype=bool)
            select[layer, :, i] = True
            agreement[m] = {metric: agg.pooled(f"{prefix}.{metric}", select) for metric in POOLED_AGREEMENT}
    else:
        block = {key: agg.stats(f"{prefix}.{key}").at(layer) for key in MIXING_SUMMARIES}
        agreement = {m: {metric: agg.stats(f"{prefix}.{metric}").at(layer, i) for metric in COMPARISON_METRICS}
                     for i, m in enumerate(compared)}
    block["agreement"] = agreement
    return block


def _mixing_summary(agg: _Aggregator) -> dict:
    """Per method and view: pooled over every layer (and defined head) for the head and layer views; for the
    inputs view, the whole network (its last layer: contributions of the inputs to the final [CLS])."""
    out = {}
    for method in agg.mixing:
        out[method] = {}
        for view in mixing_views(method):
            prefix = f"mixing.{method}.{view}"
            compared = agg.compared_with(view)
            if view == "inputs":
                last = agg.n_layers - 1
                block = {key: agg.stats(f"{prefix}.{key}").at(last) for key in MIXING_SUMMARIES}
                block["agreement"] = {m: {metric: agg.stats(f"{prefix}.{metric}").at(last, i)
                                          for metric in POOLED_AGREEMENT} for i, m in enumerate(compared)}
                block["layers"] = f"the whole network (layer {last}: inputs through every layer)"
            else:
                block = {key: agg.pooled(f"{prefix}.{key}") for key in MIXING_SUMMARIES}
                cells = (agg.n_layers, agg.n_heads) if view == "head" else (agg.n_layers,)
                agreement = {}
                for i, m in enumerate(compared):
                    select = np.zeros((*cells, len(compared)), dtype=bool)
                    select[..., i] = True
                    agreement[m] = {metric: agg.pooled(f"{prefix}.{metric}", select) for metric in POOLED_AGREEMENT}
                block["agreement"] = agreement
                block["layers"] = "pooled over every layer" + (" and defined head" if view == "head" else "")
            out[method][view] = block
    return out


def _faithfulness(agg: _Aggregator, ranking_names: list[str], fractions: list[float]) -> dict:
    rows, bootstrap, min_n = agg.rows, agg.bootstrap, agg.min_n

    def stat(values):
        return Stats(values, bootstrap, min_n).at()

    comprehensiveness = rows["faithfulness.comprehensiveness"]  # [N, R, F]
    sufficiency = rows["faithfulness.sufficiency"]
    random = ranking_names.index("random")
    aopc_c, aopc_s = comprehensiveness.mean(axis=-1), sufficiency.mean(axis=-1)  # [N, R]
    upper = rows.get("faithfulness.comprehensiveness_upper")
    lower = rows.get("faithfulness.comprehensiveness_lower")
    rankings = {}
    for r, name in enumerate(ranking_names):
        entry = {
            "comprehensiveness": stat(aopc_c[:, r]),
            "sufficiency": stat(aopc_s[:, r]),
            "comprehensiveness_minus_random": stat(aopc_c[:, r] - aopc_c[:, random]),
            "sufficiency_minus_random": stat(aopc_s[:, r] - aopc_s[:, random]),
            "comprehensiveness_per_fraction": [_finite(np.nanmean(comprehensiveness[:, r, f]))
                                               for f in range(len(fractions))],
            "sufficiency_per_fraction": [_finite(np.nanmean(sufficiency[:, r, f])) for f in range(len(fractions))],
        }
        if upper is not None:
            span = upper.mean(axis=-1) - lower.mean(axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                normalised = np.where(span > 1e-6, (aopc_c[:, r] - lower.mean(axis=-1)) / span, np.nan)
            entry["normalised_comprehensiveness"] = stat(normalised)
        rankings[name] = entry
    out = {"fractions": list(fractions), "rankings": rankings,
           "tie_breaking": "seeded random order among equal scores, per example",
           "bounds": "greedy" if upper is not None else None}
    if upper is not None:
        out["comprehensiveness_upper"] = stat(upper.mean(axis=-1))
        out["comprehensiveness_lower"] = stat(lower.mean(axis=-1))
    return out


def _integrated_gradients(agg: _Aggregator) -> dict:
    gap = agg.rows["integrated_gradients.completeness_gap"].astype(np.float64)
    steps = agg.rows["integrated_gradients.steps"]
    finite = gap[np.isfinite(gap)]
    return {
        "completeness_gap": {"median": _finite(np.median(finite)) if finite.size else None,
                             "p90": _finite(np.percentile(finite, 90)) if finite.size else None,
                             "max": _finite(finite.max()) if finite.size else None,
                             "share_above_5_percent": _finite((finite > 0.05).mean()) if finite.size else None,
                             "n": int(finite.size)},
        "steps": {"median": _finite(np.median(steps)), "max": int(steps.max())},
        "definition": "|sum of signed attributions - (y_hat(x) - y_hat(baseline))| / max(|y_hat(x) - "
                      "y_hat(baseline)|, 0.01), per example",
    }


def _pooled_per_method(agg: _Aggregator, prefix: str, methods: list[str], metrics) -> dict:
    out = {}
    for i, m in enumerate(methods):
        select = np.zeros((agg.n_layers, agg.n_heads, len(methods)), dtype=bool)
        select[:, :, i] = True
        out[m] = {metric: agg.pooled(f"{prefix}.{metric}", select) for metric in metrics}
    return out


def _summary(agg: _Aggregator, results: dict) -> dict:
    n_cells = agg.n_layers * agg.n_heads
    deep = np.zeros(agg.n_layers, dtype=bool)
    deep[1:] = True  # layer 0 attends over the embeddings: its input-to-representation entropy is 0 by construction
    methods = agg.methods
    agreement = _pooled_per_method(agg, "attention", methods.importance, POOLED_AGREEMENT)
    everywhere = _pooled_per_method(agg, "all_positions", methods.all_positions, POOLED_AGREEMENT)
    sources = {}
    for source in _maps(agg):
        sources[source] = {"entropy": agg.pooled(f"{source}.entropy"),
                           **_pooled_per_method(agg, source, methods.input, ("kendall_tau_b", HEADLINE_METRIC))}
    heads_defined = int(agg.defined("attention.entropy").sum())
    summary = {
        "n_examples": agg.n,
        "min_examples": agg.min_n,
        "headline_metric": HEADLINE_METRIC,
        "heads_defined": {"n": heads_defined, "of": n_cells, "share": heads_defined / n_cells},
        "agreement": agreement,
        "all_positions": {"attention_sparsity": agg.pooled("all_positions.sparsity"),
                          "attention_entropy": agg.pooled("all_positions.entropy"), "agreement": everywhere},
        "attention_sparsity": agg.pooled("attention.sparsity"),
        "attention_support_size": agg.pooled("attention.support_size"),
        "attention_entropy": agg.pooled("attention.entropy"),
        "special_mass": agg.pooled("attention.special_mass"),
        **sources,
    }
    if methods.importance:
        summary["importance_entropy"] = {m: agg.pooled("importance.entropy", _method_cells(agg, i))
                                         for i, m in enumerate(methods.importance)}
    if "input_to_repr" in agg.measures:
        summary["input_to_repr_entropy"] = agg.pooled("input_to_repr.entropy", deep)
        summary["coindexed_share"] = agg.pooled("input_to_repr.coindexed_share", deep)
        summary["input_to_repr_layers"] = "layers 1..n-1 (layer 0 attends over the embeddings themselves)"
        sampling = _sampling(agg, deep)
        if sampling is not None:
            summary["input_to_repr_sampling"] = sampling
    if agg.mixing:
        summary["mixing"] = _mixing_summary(agg)
    if "faithfulness" in results:
        faith = results["faithfulness"]["rankings"]
        scored = [(v["comprehensiveness_minus_random"]["mean"], k) for k, v in faith.items()
                  if k != "random" and v["comprehensiveness_minus_random"]["mean"] is not None]
        summary["most_comprehensive_ranking"] = max(scored)[1] if scored else None
    summary["warnings"] = _warnings(agg, results)
    summary["text"] = _summary_text(summary, results, methods)
    return summary


def _method_cells(agg: _Aggregator, method_index: int) -> np.ndarray:
    methods = agg.methods
    select = np.zeros((agg.n_layers, len(methods.importance)), dtype=bool)
    if methods.importance[method_index] in methods.input:
        select[0, method_index] = True  # input importance is the same vector for every layer: count it once
    else:
        select[:, method_index] = True
    return select


def _warnings(agg: _Aggregator, results: dict) -> list[str]:
    out = []
    gap = (results.get("integrated_gradients") or {}).get("completeness_gap") or {}
    if gap.get("median") is not None and gap["median"] > 0.05:
        out.append(f"integrated gradients: median completeness gap {gap['median']:.1%} (> 5%); raise --ig-steps "
                   "or --ig-max-steps")
    defined = agg.defined("attention.entropy").sum()
    if defined < agg.n_layers * agg.n_heads:
        out.append(f"{agg.n_layers * agg.n_heads - defined} of {agg.n_layers * agg.n_heads} heads are undefined "
                   f"(fewer than {agg.min_n} examples with attention on content tokens); they are left out of every "
                   "mean")
    if agg.n < 30:
        out.append(f"only {agg.n} examples: intervals are wide and means are fragile")
    return out


def _fmt(stat) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "undefined"
    ci = stat.get("ci95")
    return f"{stat['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _summary_text(s: dict, results: dict, methods: MethodLists) -> list[str]:
    a = s["agreement"]
    lines = [
        f"{s['n_examples']} examples; {s['heads_defined']['n']} of {s['heads_defined']['of']} heads defined; means "
        f"pool defined heads, [95% bootstrap interval]; measured: {', '.join(results['measures'])}",
    ]
    if methods.input:
        lines.append("tau-b(attention, input importance), excess over the shared-zeros null (raw): "
                     + ", ".join(f"{m} {_fmt(a[m]['kendall_tau_b_excess'])} ({_fmt(a[m]['kendall_tau_b'])})"
                                 for m in methods.input))
    if methods.representation:
        lines.append("tau-b(attention, representation importance), excess (raw): "
                     + ", ".join(f"{m} {_fmt(a[m]['kendall_tau_b_excess'])} ({_fmt(a[m]['kendall_tau_b'])})"
                                 for m in methods.representation))
    lines.append(f"attention over content tokens: sparsity {_fmt(s['attention_sparsity'])}, normalised entropy "
                 f"{_fmt(s['attention_entropy'])}; mass on special tokens {_fmt(s['special_mass'])}")
    if "input_to_repr_entropy" in s:
        sampled = s.get("input_to_repr_sampling")
        note = (f" (estimated from {sampled['positions_per_example']:g} sampled positions per example; sampling "
                f"standard error {_fmt({'mean': sampled['entropy_standard_error']})})" if sampled else "")
        lines.append(f"input-to-representation (layers >= 1): entropy {_fmt(s['input_to_repr_entropy'])}, co-indexed "
                     f"share {_fmt(s['coindexed_share'])}{note}")
    if "integrated_gradients" in results:
        lines.append(f"integrated gradients: median completeness gap "
                     f"{_fmt({'mean': results['integrated_gradients']['completeness_gap']['median']})}")
    for method, views in (s.get("mixing") or {}).items():
        for view, block in views.items():
            first = next(iter(block["agreement"]), None)
            against = (f"tau-b excess vs {first} {_fmt(block['agreement'][first]['kendall_tau_b_excess'])} "
                       f"(raw {_fmt(block['agreement'][first]['kendall_tau_b'])}), " if first else "")
            lines.append(f"context mixing {method} ({view}): {against}entropy {_fmt(block['entropy'])} (attention "
                         f"{_fmt(s['attention_entropy'])}), sparsity {_fmt(block['sparsity'])}")
    if "most_comprehensive_ranking" in s:
        lines.append(f"most comprehensive ranking (AOPC minus random): {s['most_comprehensive_ranking']}")
    return lines + [f"warning: {w}" for w in s["warnings"]]


# --------------------------------------------------------------------------------------------- CSV


def _stat_columns(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in ("mean", "ci_low", "ci_high", "n", "defined")]


def _stat_values(stat: dict) -> list:
    ci = stat.get("ci95") or [None, None]
    return [stat.get("mean"), ci[0], ci[1], stat.get("n"), stat.get("defined")]


def _flatten(entry: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """(column prefix, stat) for every stat in a (nested) per_layer_head entry, in a fixed order."""
    out = []
    for key, value in entry.items():
        if isinstance(value, dict) and "mean" in value and "n" in value:
            out.append((prefix + key, value))
        elif isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
    return out


def layer_head_table(results: dict) -> str:
    """The layer x head table as CSV text (one row per layer and head; every stat as mean, interval, n, defined)."""
    heads = results["per_layer_head"]
    scalar = ["layer", "head", "n_examples", "defined", "defined_share", "undefined_reason"]
    stats = _flatten({k: v for k, v in heads[0].items() if k not in scalar}) if heads else []
    columns = scalar + [c for name, _ in stats for c in _stat_columns(name)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for h in heads:
        row = [h[c] for c in scalar]
        for _, stat in _flatten({k: v for k, v in h.items() if k not in scalar}):
            row += _stat_values(stat)
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()
