"""One batch of examples -> per-example metric arrays (the rows that the runner stores and aggregates).

Every array has the examples as its first dimension. Keys (``n`` layers, ``H`` heads, ``M`` importance methods
compared with attention, ``M_in`` input methods, ``M_all`` methods defined at every position, ``R`` rankings,
``F`` removal fractions):

* ``example.*``: label, prediction, probability (y_hat), n_tokens, n_content, index                 [B]
* ``attention.{entropy,sparsity,support_size,special_mass}``                                       [B, n, H]
* ``attention.<metric>`` for every agreement metric (:data:`eval_suite.agreement.AGREEMENT_METRICS`), against
  every method in ``methods``                                                                          [B, n, H, M]
* ``all_positions.{entropy,sparsity,support_size}`` and ``all_positions.<metric>`` against ALL_POSITIONS_METHODS:
  the same over every non-padding position, special tokens included (no renormalisation to content)
  ([B, n, H] and [B, n, H, M_all])
* ``<map>.*`` (``rollout``, ``projected``): the same, for attention carried to the inputs, against input methods
  ([B, n, H] and [B, n, H, M_in])
* ``importance.entropy``: normalised entropy of each method's importance (input methods repeated per layer) [B, n, M]
* ``input_to_repr.{entropy,coindexed_share}``: eq. 5 per layer, mean over content positions p      [B, n]
  (with ``input_to_repr_sample``: the mean over a seeded sample of them, and ``input_to_repr.*_se``, its standard
  error, and ``input_to_repr.positions``, the sample's size)                                          [B, n]
* ``<measure>.<diagnostic>``: the diagnostics a measure declares (``integrated_gradients.completeness_gap`` and
  ``.steps``, ``captum:<Class>.convergence_delta``)                                                   [B]
* ``faithfulness.{comprehensiveness,sufficiency}``                                                 [B, R, F]
* ``faithfulness.comprehensiveness_{upper,lower}`` (with ``aopc_bounds="greedy"``)                 [B, F]
* ``mixing.<method>.<view>.{entropy,sparsity,special_mass}`` for each measured context-mixing method and each
  view it defines (``MixingMethod.views`` in :mod:`eval_suite.methods.context_mixing`): ``head`` [B, n, H], ``layer`` and ``inputs`` [B, n]
* ``mixing.<method>.<view>.<metric>`` for every agreement metric: the ``head`` view against every method in
  ``methods`` [B, n, H, M], the ``layer`` view against them [B, n, M], the ``inputs`` view against the input
  methods [B, n, M_in] (the classification token's mixing over content tokens, as the module
  :mod:`eval_suite.context_mixing.rows` defines it, compared with importance exactly like attention)

Distributions are over content tokens (see :mod:`eval_suite.batching`) unless the key says all positions; NaN
marks undefined values. Only the measurements in ``MeasureConfig.measures`` (see :mod:`eval_suite.registry`) are
computed, and only their keys are present; the method axes ``M`` hold the measured methods, in registry order.
:func:`measure_batch` knows no measure by name: it runs the selected declarations by role.
"""


from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .agreement import compare_rows
from .batching import TokenBatch, content_segments
from .forward_context import ForwardContext, attention_rows
from .registry import Computed, MethodLists, selected, shared_demands, with_role
from .settings import MeasureConfig

SOURCE_SUMMARIES = ("entropy", "sparsity", "support_size")
MIXING_SUMMARIES = ("entropy", "sparsity", "special_mass")
# Elements of the largest [examples, layers, heads, L, L] block the agreement metrics hold at once: longer
# documents are scored a few examples at a time (each example's metrics are its own, so the values are the same).
METRIC_ELEMENTS = 1 << 24


@dataclass
class BatchState:
    """What the measures of one batch hand each other: shared work, each measure's values and diagnostics, the
    maps' whole-network rankings and the evaluated attention rows."""

    indices: list
    shared: dict = field(default_factory=dict)  # Shared name -> its value
    values: dict = field(default_factory=dict)  # input / representation / map measure -> tensor
    mixing: dict = field(default_factory=dict)  # context-mixing rows (eval_suite.context_mixing.rows)
    diagnostics: dict = field(default_factory=dict)  # "<measure>.<row>" -> [B]
    rankings: dict = field(default_factory=dict)  # map -> [B, L]
    attention: torch.Tensor | None = None  # [B, n, H, L], the evaluated query's rows

    def store(self, measure, value) -> None:
        if isinstance(value, Computed):
            self.diagnostics.update({f"{measure.name}.{k}": v for k, v in value.diagnostics.items()})
            value = value.values
        (self.mixing if measure.role == "mixing" else self.values).update(
            value if measure.role == "mixing" else {measure.name: value})


def _summarise(source: torch.Tensor, mask: torch.Tensor, prefix: str, out: dict) -> None:
    mask = mask[:, None, None, :]
    out[f"{prefix}.entropy"] = M.normalised_entropy(source, mask)
    out[f"{prefix}.sparsity"] = M.sparsity(source, mask)
    out[f"{prefix}.support_size"] = M.support_size(source, mask)


def _mixing_metric_rows(mixing: dict, measures, all_methods, per_layer_inputs, content, out: dict) -> None:
    """The ``mixing.*`` rows (module docstring) from :func:`~eval_suite.context_mixing.context_mixing_rows`'s
    ``mixing`` dict; ``all_methods`` [B, n, M, L] and ``per_layer_inputs`` [B, n, M_in, L] or None."""
    for method in with_role(measures, "mixing"):
        for view in method.mixing.views():
            key = f"{method.name}.{view}"
            prefix = f"mixing.{key}"
            for summary in MIXING_SUMMARIES:
                out[f"{prefix}.{summary}"] = mixing[f"{key}.{summary}"]
            target = per_layer_inputs if view == "inputs" else all_methods
            if target is None:
                continue
            # An undefined row (NaN: no mass on content tokens) is compared as all-zero: the metrics leave a
            # constant vector undefined, so it stays NaN.
            vector = torch.nan_to_num(mixing[key].double(), nan=0.0)
            compared: dict[str, torch.Tensor] = {}
            compare_rows(vector if view == "head" else vector[:, :, None], target, content, prefix, compared)
            out.update({k: v if view == "head" else v[:, :, 0] for k, v in compared.items()})


def _metric_rows(attention, values: dict, mixing: dict, content, real, measures) -> dict:
    """Every agreement and summary row of attention, the maps and the context-mixing views against the measured
    importance methods (``values`` holds each input, representation and map measure's tensor)."""
    n_layers = attention.shape[1]
    methods = MethodLists.of(measures)
    out: dict[str, torch.Tensor] = {}
    _summarise(attention, content, "attention", out)
    content_mass = (attention * content[:, None, None, :]).sum(dim=-1)
    out["attention.special_mass"] = 1 - content_mass / attention.sum(dim=-1)
    _summarise(attention, real, "all_positions", out)

    per_layer_inputs = all_methods = None
    stacks = []
    if methods.input:
        input_stack = torch.stack([values[m] for m in methods.input], dim=1).double()  # [B, M_in, L]
        per_layer_inputs = input_stack[:, None].expand(-1, n_layers, -1, -1)
        stacks.append(per_layer_inputs)
    if methods.representation:
        stacks.append(torch.stack([values[m] for m in methods.representation], dim=2).double())
    if stacks:
        all_methods = torch.cat(stacks, dim=2)  # [B, n, M, L]
        compare_rows(attention, all_methods, content, "attention", out)
        if methods.all_positions:
            everywhere = torch.stack([all_methods[:, :, methods.importance.index(m)] for m in methods.all_positions],
                                     dim=2)
            compare_rows(attention, everywhere, real, "all_positions", out)
        out["importance.entropy"] = M.normalised_entropy(all_methods, content[:, None, None, :])
    for source in with_role(measures, "map"):
        rows = values[source.name].double()
        _summarise(rows, content, source.name, out)
        if per_layer_inputs is not None:
            compare_rows(rows, per_layer_inputs, content, source.name, out)
    if mixing:
        _mixing_metric_rows(mixing, measures, all_methods, per_layer_inputs, content, out)
    return out


def _metric_rows_chunked(attention, values: dict, mixing: dict, content, real, measures) -> dict:
    """:func:`_metric_rows` a few examples at a time, so that long documents fit in memory (same values)."""
    B, n_layers, n_heads, L = attention.shape
    step = max(1, METRIC_ELEMENTS // max(1, n_layers * n_heads * L * L))
    if step >= B:
        return _metric_rows(attention, values, mixing, content, real, measures)
    parts = []
    for start in range(0, B, step):
        sl = slice(start, start + step)
        parts.append(_metric_rows(attention[sl], {k: v[sl] for k, v in values.items()},
                                  {k: v[sl] for k, v in mixing.items()}, content[sl], real[sl], measures))
    return {key: torch.cat([part[key] for part in parts], dim=0) for key in parts[0]}


@contextmanager
def _timed(timings: dict | None, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _stager(ctx, timings, progress):
    """``with stage(name):`` times a stage and reports its progress."""
    @contextmanager
    def stage(name):
        ctx.on_progress = (lambda share: progress(name, share)) if progress is not None else None
        with _timed(timings, name):
            yield
        if progress is not None:
            progress(name, 1.0)
        ctx.on_progress = None
    return stage


def _compute_all(ctx, config: MeasureConfig, state: BatchState, stage) -> None:
    """Every selected measure's values and shared work: what needs the base pass's graph first, then the rest."""
    chosen = selected(config.measures)
    demands = shared_demands(config.measures)
    with stage("base"):
        ctx.base  # noqa: B018  (the base pass, with its graph)
        for measure in chosen:
            if measure.needs_graph and measure.compute is not None:
                state.store(measure, measure.compute(ctx, config, state))
    for graph in (True, False):
        for name, (shared, asked) in demands.items():
            if shared.needs_graph == graph:
                with stage(name):
                    state.shared[name] = shared.compute(ctx, config, state, asked)
        if graph:
            ctx.release()
    for measure in chosen:
        if not measure.needs_graph and measure.compute is not None:
            with stage(measure.stage_name):
                state.store(measure, measure.compute(ctx, config, state))


def measure_batch(classifier, batch: TokenBatch, labels: list[int], indices: list[int], config: MeasureConfig,
                  timings: dict | None = None, progress=None):
    """Run the measurements of ``config.measures`` on one batch; return (arrays, token_maps).

    ``arrays`` maps keys (module docstring) to numpy arrays with the examples first (metrics float32);
    ``token_maps`` maps an example index in ``config.token_map_indices`` to its token-level attention and
    importance vectors. ``timings``, if given, accumulates seconds per stage; ``progress(stage, share)``, if given,
    is told as each stage advances (``share`` of that stage done, 0..1).
    """
    ctx = ForwardContext(classifier, batch, max_tokens=config.max_tokens, max_grad_tokens=config.max_grad_tokens)
    stage = _stager(ctx, timings, progress)
    state = BatchState(list(indices))
    _compute_all(ctx, config, state, stage)
    base, content = ctx.base, ctx.batch.content_mask
    state.attention = attention_rows(base.attentions, ctx.batch.attention_mask, config.attention_query).double()
    chosen = selected(config.measures)
    with stage("metrics"):
        out = _metric_rows_chunked(state.attention, state.values, state.mixing, content,
                                   ctx.batch.attention_mask.bool(), config.measures)
        for measure in chosen:
            if measure.rows is not None and measure.role != "check":
                measure.rows(ctx, config, state, out)
    out.update(state.diagnostics)
    for measure in chosen:
        if measure.ranking is not None:
            state.rankings[measure.name] = measure.ranking(ctx, config, state)
    for measure in chosen:
        if measure.role == "check":
            with stage(measure.stage_name):
                measure.rows(ctx, config, state, out)
    out["example.label"] = torch.tensor(labels)
    out["example.prediction"] = base.prediction
    out["example.probability"] = base.target
    out["example.n_tokens"] = ctx.batch.attention_mask.sum(dim=1)
    out["example.n_content"] = content.sum(dim=1)
    arrays = _to_arrays(out, chosen)
    arrays["example.index"] = np.asarray(indices, dtype=np.int64)
    token_maps = {int(index): _token_example(ctx, classifier, config, state, out, row, labels)
                  for row, index in enumerate(indices) if index in config.token_map_indices}
    return arrays, token_maps


def _to_arrays(out: dict, chosen) -> dict:
    """numpy rows: metrics as float32 (through float64), example facts and integer diagnostics as they are."""
    exact = {f"{m.name}.{row}" for m in chosen if m.diagnostics is not None for row in m.diagnostics.integer_rows}
    return {k: v.detach().cpu().numpy() if k.startswith("example.") or k in exact
            else v.detach().cpu().to(torch.float64).numpy().astype(np.float32) for k, v in out.items()}


def _token_example(ctx, classifier, config: MeasureConfig, state: BatchState, out: dict, row: int, labels) -> dict:
    """One stored example's token-level views (docs/CONTRACTS.md, token_examples.json)."""
    keep = ctx.batch.content_mask[row]
    attention, base = state.attention, ctx.base
    n_layers = attention.shape[1]
    methods = MethodLists.of(config.measures)
    maps = {f"attention layer {l} (head mean)": attention[row, l].mean(dim=0) for l in range(n_layers)}
    for source in with_role(config.measures, "map"):
        if source.token_map is not None:
            label, vector = source.token_map(state.values[source.name], state.rankings.get(source.name), n_layers)
            maps[label] = vector[row]
    maps.update({m: state.values[m][row] for m in methods.input})
    ids = ctx.batch.input_ids[row][keep].tolist()
    example = {
        "tokens": classifier.tokenizer.convert_ids_to_tokens(ids),
        "label": int(labels[row]),
        "prediction": int(base.prediction[row]),
        "probability": float(base.target[row]),
        "maps": {name: [float(v) for v in M.normalise(vec.double()[keep])] for name, vec in maps.items()},
        # Per head, over the content tokens and renormalised there: exactly the distributions the metrics
        # compare with importance. special_mass says how much of the head's attention that leaves out.
        "heads": _token_values(M.normalise(attention[row][..., keep])),
        "special_mass": _token_values(out["attention.special_mass"][row]),
        "representation": {m: _token_values(M.normalise(state.values[m][row].double()[..., keep]))
                           for m in methods.representation},
        # Each context-mixing view over the content tokens, renormalised there (what its metrics compare):
        # head [n][H][tokens], layer and inputs [n][tokens].
        "mixing": {m.name: {view: _token_values(state.mixing[f"{m.name}.{view}"][row][..., keep])
                            for view in m.mixing.views()} for m in with_role(config.measures, "mixing")},
    }
    for source in with_role(config.measures, "map"):
        if source.token_heads:
            example[source.name] = _token_values(M.normalise(state.values[source.name][row].double()[..., keep]))
    segments = content_segments(ctx.batch.content_mask[row:row + 1])[0]
    if int(segments.max()) > 0:  # a text pair: which text each token is from (the [SEP] boundary)
        example["segments"] = segments[keep].tolist()
    return example


def _token_values(values: torch.Tensor) -> list:
    """Nested lists for JSON at 6 significant digits (exact zeros stay 0, tiny weights stay non-zero); NaN -> None."""
    def convert(value):
        if isinstance(value, list):
            return [convert(v) for v in value]
        return float(f"{value:.6g}") if math.isfinite(value) else None

    return convert(values.detach().double().cpu().tolist())
