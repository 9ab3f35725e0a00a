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
import warnings

import numpy as np

from . import metrics as M
from .agreement import HEADLINE, METRIC_NAMES, POOLED, RAW
from .registry import MethodLists, methods_with_role, selected
from .statistics import AggregateConfig, Bootstrap, Stats, format_stat, make_stat, pooled_stat  # noqa: F401

MIXING_SUMMARIES = ("entropy", "sparsity", "special_mass")


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
        self.maps = methods_with_role(self.measures, "map")
        self.n = int(rows["example.label"].shape[0])
        self.min_n = min(config.min_examples, self.n)
        self.bootstrap = Bootstrap(self.n, config)
        self._cache: dict[str, Stats] = {}
        # Examples where a head gave its content tokens no attention at all: the first reason for undefined cells.
        self.no_content = np.nan_to_num(rows["attention.special_mass"], nan=0.0) >= 1.0 - 1e-9  # [N, n, H]

    def stats(self, key: str) -> Stats:
        if key not in self._cache:
            self._cache[key] = Stats(self.rows[key], self.bootstrap, self.min_n, self.rows.get(f"{key}_se"))
        return self._cache[key]

    def reason(self, layer: int, head: int) -> str | None:
        k = int(self.no_content[:, layer, head].sum())
        return f"all attention on special tokens in {k} of {self.n} examples" if k else None

    def metric_block(self, prefix: str, methods, layer: int, head: int, reason: str | None) -> dict:
        return {metric: {m: self.stats(f"{prefix}.{metric}").at(layer, head, i, reason=reason)
                         for i, m in enumerate(methods)} for metric in METRIC_NAMES}

    def summaries(self, prefix: str, layer: int, head: int, reason: str | None) -> dict:
        return {key: self.stats(f"{prefix}.{key}").at(layer, head, reason=reason)
                for key in ("entropy", "sparsity", "support_size")}

    def views(self, method: str) -> tuple[str, ...]:
        return selected([method])[0].mixing.views()

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
        return pooled_stat(self.rows[key], include, self.bootstrap, self.min_n, self.rows.get(f"{key}_se"))


def aggregate(rows: dict[str, np.ndarray], *, n_layers: int, n_heads: int, settings,
              config: AggregateConfig | None = None) -> dict:
    """The metric part of results.json: task quality, per_layer_head, per_layer, each check's and each
    diagnostic's block, summary, for the measures of ``settings`` (a :class:`eval_suite.settings.MeasureConfig`);
    a measurement that was not run has no key in the result, never a placeholder value.
    """
    measures = tuple(settings.measures)
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
        results["mixing_methods"] = {m: list(agg.views(m)) for m in agg.mixing}
        results["mixing_compared_with"] = {view: agg.compared_with(view) for view in ("head", "layer", "inputs")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results["per_layer_head"] = [_layer_head(agg, layer, head) for layer in range(n_layers)
                                     for head in range(n_heads)]
        results["per_layer"] = [_layer(agg, layer) for layer in range(n_layers)]
        for measure in selected(measures):  # checks first, then the diagnostics of the measures that have them
            if measure.results_block is not None:
                results[measure.name] = measure.results_block(agg, settings)
        for measure in selected(measures):
            if measure.diagnostics is not None:
                results[measure.name] = measure.diagnostics.summarise(
                    {row: rows[f"{measure.name}.{row}"] for row in measure.diagnostics.rows})
        if "positions.measured" in rows:
            results["position_sampling"] = position_sampling(rows, settings)
        results["summary"] = _summary(agg, results)
    return results


def position_sampling(rows: dict, settings) -> dict:
    """How many documents the per-position measures measured on sampled positions (eval_suite.position_sample)."""
    measured, content = rows["positions.measured"], rows["positions.content"]
    sampled = measured < content
    return {"positions_per_document": settings.sample_positions, "sample_above": settings.sample_above,
            "documents_sampled": int(sampled.sum()), "documents": int(measured.shape[0]),
            "content_positions_max": int(content.max()) if content.size else 0,
            "methods": [m.name for m in selected(settings.measures) if m.sampled_positions],
            "text": f"estimated from {settings.sample_positions} of L content positions per document in "
                    f"{int(sampled.sum())} of {int(measured.shape[0])} documents (those with more than "
                    f"{settings.sample_above}; L up to {int(content.max()) if content.size else 0}); each such "
                    "figure carries its sampling standard error"}


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
    for source in agg.maps:
        entry[source] = agg.summaries(source, layer, head, reason)
        if methods.input:
            entry[source].update(agg.metric_block(source, methods.input, layer, head, reason))
    per_head = [m for m in agg.mixing if "head" in agg.views(m)]
    if per_head:
        entry["mixing"] = {}
        for m in per_head:
            prefix = f"mixing.{m}.head"
            block = {key: agg.stats(f"{prefix}.{key}").at(layer, head) for key in MIXING_SUMMARIES}
            if agg.compared_with("head"):
                block.update(agg.metric_block(prefix, agg.compared_with("head"), layer, head, None))
            entry["mixing"][m] = block
    return entry


def _layer(agg: _Aggregator, layer: int) -> dict:
    in_layer = np.zeros((agg.n_layers, agg.n_heads), dtype=bool)
    in_layer[layer] = True
    heads_defined = int(agg.defined("attention.entropy").reshape(agg.n_layers, agg.n_heads)[layer].sum())
    methods = agg.methods
    agreement = {}
    for i, m in enumerate(methods.importance):
        select = np.zeros((agg.n_layers, agg.n_heads, len(methods.importance)), dtype=bool)
        select[layer, :, i] = True
        agreement[m] = {metric: agg.pooled(f"attention.{metric}", select) for metric in POOLED}
    out = {
        "layer": layer,
        "n_heads": agg.n_heads,
        "n_heads_defined": heads_defined,
        "agreement": agreement,
        "attention_sparsity": agg.pooled("attention.sparsity", in_layer),
        "attention_entropy": agg.pooled("attention.entropy", in_layer),
        "special_mass": agg.pooled("attention.special_mass", in_layer),
    }
    for source in agg.maps:
        out[f"{source}_entropy"] = agg.pooled(f"{source}.entropy", in_layer)
    for measure in selected(agg.measures):
        if measure.per_layer is not None:
            out.update(measure.per_layer(agg, layer))
    if methods.importance:
        out["importance_entropy"] = {m: agg.stats("importance.entropy").at(layer, i)
                                     for i, m in enumerate(methods.importance)}
    if agg.mixing:
        out["mixing"] = {m: {view: _mixing_layer(agg, m, view, layer) for view in agg.views(m)}
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
            agreement[m] = {metric: agg.pooled(f"{prefix}.{metric}", select) for metric in POOLED}
    else:
        block = {key: agg.stats(f"{prefix}.{key}").at(layer) for key in MIXING_SUMMARIES}
        agreement = {m: {metric: agg.stats(f"{prefix}.{metric}").at(layer, i) for metric in METRIC_NAMES}
                     for i, m in enumerate(compared)}
    block["agreement"] = agreement
    return block


def _mixing_view_summary(agg: _Aggregator, method: str, view: str) -> dict:
    """One view pooled over every layer (and defined head) for the head and layer views; for the inputs view,
    the whole network (its last layer: contributions of the inputs to the final [CLS])."""
    prefix = f"mixing.{method}.{view}"
    compared = agg.compared_with(view)
    if view == "inputs":
        last = agg.n_layers - 1
        block = {key: agg.stats(f"{prefix}.{key}").at(last) for key in MIXING_SUMMARIES}
        block["agreement"] = {m: {metric: agg.stats(f"{prefix}.{metric}").at(last, i) for metric in POOLED}
                              for i, m in enumerate(compared)}
        block["layers"] = f"the whole network (layer {last}: inputs through every layer)"
        return block
    block = {key: agg.pooled(f"{prefix}.{key}") for key in MIXING_SUMMARIES}
    cells = (agg.n_layers, agg.n_heads) if view == "head" else (agg.n_layers,)
    agreement = {}
    for i, m in enumerate(compared):
        select = np.zeros((*cells, len(compared)), dtype=bool)
        select[..., i] = True
        agreement[m] = {metric: agg.pooled(f"{prefix}.{metric}", select) for metric in POOLED}
    block["agreement"] = agreement
    block["layers"] = "pooled over every layer" + (" and defined head" if view == "head" else "")
    return block


def _pooled_per_method(agg: _Aggregator, prefix: str, methods: list[str], metrics) -> dict:
    out = {}
    for i, m in enumerate(methods):
        select = np.zeros((agg.n_layers, agg.n_heads, len(methods)), dtype=bool)
        select[:, :, i] = True
        out[m] = {metric: agg.pooled(f"{prefix}.{metric}", select) for metric in metrics}
    return out


def _summary(agg: _Aggregator, results: dict) -> dict:
    n_cells = agg.n_layers * agg.n_heads
    methods = agg.methods
    sources = {source: {"entropy": agg.pooled(f"{source}.entropy"),
                        **_pooled_per_method(agg, source, methods.input, (RAW, HEADLINE))} for source in agg.maps}
    heads_defined = int(agg.defined("attention.entropy").sum())
    summary = {
        "n_examples": agg.n,
        "min_examples": agg.min_n,
        "headline_metric": HEADLINE,
        "heads_defined": {"n": heads_defined, "of": n_cells, "share": heads_defined / n_cells},
        "agreement": _pooled_per_method(agg, "attention", methods.importance, POOLED),
        "all_positions": {"attention_sparsity": agg.pooled("all_positions.sparsity"),
                          "attention_entropy": agg.pooled("all_positions.entropy"),
                          "agreement": _pooled_per_method(agg, "all_positions", methods.all_positions, POOLED)},
        "attention_sparsity": agg.pooled("attention.sparsity"),
        "attention_support_size": agg.pooled("attention.support_size"),
        "attention_entropy": agg.pooled("attention.entropy"),
        "special_mass": agg.pooled("attention.special_mass"),
        **sources,
    }
    if methods.importance:
        summary["importance_entropy"] = {m: agg.pooled("importance.entropy", _method_cells(agg, i))
                                         for i, m in enumerate(methods.importance)}
    chosen = selected(agg.measures)
    for measure in chosen:  # the summaries of measures with rows of their own (eq. 5), before the checks'
        if measure.summary is not None and measure.role != "check":
            summary.update(measure.summary(agg, results))
    if agg.mixing:
        summary["mixing"] = {m: {view: _mixing_view_summary(agg, m, view) for view in agg.views(m)}
                             for m in agg.mixing}
    for measure in chosen:
        if measure.summary is not None and measure.role == "check":
            summary.update(measure.summary(agg, results))
    summary["warnings"] = _warnings(agg, results)
    summary["text"] = _summary_text(summary, results, agg)
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
    out = [measure.diagnostics.warning(results[measure.name]) for measure in selected(agg.measures)
           if measure.diagnostics is not None and measure.diagnostics.warning is not None]
    out = [line for line in out if line]
    defined = agg.defined("attention.entropy").sum()
    if defined < agg.n_layers * agg.n_heads:
        out.append(f"{agg.n_layers * agg.n_heads - defined} of {agg.n_layers * agg.n_heads} heads are undefined "
                   f"(fewer than {agg.min_n} examples with attention on content tokens); they are left out of every "
                   "mean")
    if agg.n < 30:
        out.append(f"only {agg.n} examples: intervals are wide and means are fragile")
    return out


def _summary_text(s: dict, results: dict, agg: _Aggregator) -> list[str]:
    """The printed summary: agreement, attention, each measure's own lines (rows of their own, then diagnostics),
    context mixing, the checks, the warnings."""
    a, methods, chosen = s["agreement"], agg.methods, selected(agg.measures)
    lines = [
        f"{s['n_examples']} examples; {s['heads_defined']['n']} of {s['heads_defined']['of']} heads defined; means "
        f"pool defined heads, [95% bootstrap interval]; measured: {', '.join(results['measures'])}",
    ]
    if "position_sampling" in results:
        lines.append(f"{', '.join(results['position_sampling']['methods'])}: "
                     f"{results['position_sampling']['text']}")
    for names, what in ((methods.input, "input"), (methods.representation, "representation")):
        if names:
            lines.append(f"tau-b(attention, {what} importance), excess" + (" over the shared-zeros null" if what ==
                                                                           "input" else "") + " (raw): "
                         + ", ".join(f"{m} {format_stat(a[m][HEADLINE])} ({format_stat(a[m][RAW])})" for m in names))
    lines.append(f"attention over content tokens: sparsity {format_stat(s['attention_sparsity'])}, normalised "
                 f"entropy {format_stat(s['attention_entropy'])}; mass on special tokens "
                 f"{format_stat(s['special_mass'])}")
    lines += [line for m in chosen if m.summary_text is not None and m.role != "check"
              for line in m.summary_text(s, results)]
    lines += [m.diagnostics.text(results[m.name]) for m in chosen if m.diagnostics is not None]
    for method, views in (s.get("mixing") or {}).items():
        for view, block in views.items():
            first = next(iter(block["agreement"]), None)
            against = (f"tau-b excess vs {first} {format_stat(block['agreement'][first][HEADLINE])} "
                       f"(raw {format_stat(block['agreement'][first][RAW])}), " if first else "")
            lines.append(f"context mixing {method} ({view}): {against}entropy {format_stat(block['entropy'])} "
                         f"(attention {format_stat(s['attention_entropy'])}), sparsity {format_stat(block['sparsity'])}")
    lines += [line for m in chosen if m.summary_text is not None and m.role == "check"
              for line in m.summary_text(s, results)]
    return lines + [f"warning: {w}" for w in s["warnings"]]


# --------------------------------------------------------------------------------------------- CSV


def _stat_columns(prefix: str, stat: dict) -> list[str]:
    sampling = ["sampling_se"] if "sampling_standard_error" in stat else []
    return [f"{prefix}.{k}" for k in ("mean", "ci_low", "ci_high", "n", "defined", *sampling)]


def _stat_values(stat: dict) -> list:
    ci = stat.get("ci95") or [None, None]
    sampling = [stat["sampling_standard_error"]] if "sampling_standard_error" in stat else []
    return [stat.get("mean"), ci[0], ci[1], stat.get("n"), stat.get("defined"), *sampling]


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
    columns = scalar + [c for name, stat in stats for c in _stat_columns(name, stat)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for h in heads:
        row = [h[c] for c in scalar]
        for _, stat in _flatten({k: v for k, v in h.items() if k not in scalar}):
            row += _stat_values(stat)
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()
