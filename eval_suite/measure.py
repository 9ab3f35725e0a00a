"""One batch of examples -> per-example metric arrays (the rows that the runner stores and aggregates).

Every array has the examples as its first dimension. Keys (``n`` layers, ``H`` heads, ``M`` importance methods
compared with attention, ``M_in`` input methods, ``M_all`` methods defined at every position, ``R`` rankings,
``F`` removal fractions):

* ``example.*``: label, prediction, probability (y_hat), n_tokens, n_content, index                 [B]
* ``attention.{entropy,sparsity,support_size,special_mass}``                                       [B, n, H]
* ``attention.<metric>`` for metric in COMPARISON_METRICS, against every method in ``methods``     [B, n, H, M]
* ``all_positions.{entropy,sparsity,support_size}`` and ``all_positions.<metric>`` against ALL_POSITIONS_METHODS:
  the same over every non-padding position, special tokens included (no renormalisation to content)
  ([B, n, H] and [B, n, H, M_all])
* ``rollout.*`` / ``projected.*``: the same, for attention carried to the inputs, against input methods
  ([B, n, H] and [B, n, H, M_in])
* ``importance.entropy``: normalised entropy of each method's importance (input methods repeated per layer) [B, n, M]
* ``input_to_repr.{entropy,coindexed_share}``: eq. 5 per layer, mean over content positions p      [B, n]
  (with ``input_to_repr_sample``: the mean over a seeded sample of them, and ``input_to_repr.*_se``, its standard
  error, and ``input_to_repr.positions``, the sample's size)                                          [B, n]
* ``integrated_gradients.{completeness_gap,steps}``: quadrature error and steps used               [B]
* ``faithfulness.{comprehensiveness,sufficiency}``                                                 [B, R, F]
* ``faithfulness.comprehensiveness_{upper,lower}`` (with ``aopc_bounds="greedy"``)                 [B, F]
* ``mixing.<method>.<view>.{entropy,sparsity,special_mass}`` for each measured context-mixing method and each
  view it defines (:func:`eval_suite.measures.mixing_views`): ``head`` [B, n, H], ``layer`` and ``inputs`` [B, n]
* ``mixing.<method>.<view>.<metric>`` for metric in COMPARISON_METRICS: the ``head`` view against every method in
  ``methods`` [B, n, H, M], the ``layer`` view against them [B, n, M], the ``inputs`` view against the input
  methods [B, n, M_in] (the classification token's mixing over content tokens, as the module
  :mod:`eval_suite.context_mixing.rows` defines it, compared with importance exactly like attention)

Distributions are over content tokens (see :mod:`eval_suite.batching`) unless the key says all positions; NaN
marks undefined values. Only the measurements in ``MeasureConfig.measures`` (see :mod:`eval_suite.measures`) are
computed, and only their keys are present; the method axes ``M`` hold the measured methods, in registry order.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .attribution import (
    AttentionRollout,
    ForwardContext,
    InputToRepresentation,
    IntegratedGradients,
    ProjectedAttention,
    attention_rows,
    sample_positions,
)
from .batching import TokenBatch, content_segments
from .faithfulness import DEFAULT_FRACTIONS, faithfulness_curves, greedy_comprehensiveness_bounds, tie_break_keys
from .measures import DEFAULT_SPEC, REGISTRY, MethodLists, methods_with_role, mixing_views, resolve_measures

# Every method the suite knows, in results order (a run measures the subset its selection names).
_ALL = MethodLists.of(tuple(REGISTRY))
INPUT_METHODS = tuple(_ALL.input)
REPRESENTATION_METHODS = tuple(_ALL.representation)
IMPORTANCE_METHODS = INPUT_METHODS + REPRESENTATION_METHODS
# Methods with a value at special-token positions too: leave-one-out deletes content tokens only, and integrated
# gradients' baseline keeps special tokens' embeddings, so their importance there is 0 by construction.
ALL_POSITIONS_METHODS = tuple(_ALL.all_positions)
COMPARISON_METRICS = ("kendall_tau_b", "kendall_tau_b_on_support", "kendall_tau_b_on_union", "kendall_tau_b_null",
                      "kendall_tau_b_excess", "jensen_shannon", "support_mass", "topk_mass", "support_coverage")
SOURCE_SUMMARIES = ("entropy", "sparsity", "support_size")
AOPC_BOUNDS = ("none", "greedy")
DEFAULT_MEASURES = resolve_measures(DEFAULT_SPEC)
# Elements of the largest [examples, layers, heads, L, L] block the agreement metrics hold at once: longer
# documents are scored a few examples at a time (each example's metrics are its own, so the values are the same).
METRIC_ELEMENTS = 1 << 24


@dataclass
class MeasureConfig:
    """Settings of the measurements (all recorded in results.json)."""

    attention_query: str = "cls"  # "cls": classification-token query; "mean": mean over non-padding queries
    ig_steps: int = 16  # Gauss-Legendre nodes to start with
    ig_baseline: str = "pad"
    ig_tolerance: float | None = 0.05  # recompute with doubled steps while the completeness gap exceeds this
    ig_max_steps: int = 128
    fractions: tuple = DEFAULT_FRACTIONS
    faithfulness_attention: str = "layers"  # "layers": one ranking per layer (head mean); "none"
    aopc_bounds: str = "none"  # "greedy": greedy best/worst removal orders, for normalised AOPC
    input_to_repr: str = "norm"  # "norm": paper eq. 5; "jacobian": Frobenius norm of the Jacobian block
    seed: int = 0
    max_tokens: int = 16384
    max_grad_tokens: int = 4096
    token_map_indices: frozenset = field(default_factory=frozenset)  # examples whose token-level maps to keep
    measures: tuple = DEFAULT_MEASURES  # names or a --measures string; resolved to names in registry order
    input_to_repr_sample: int | None = None  # eq. 5 summaries from this many sampled content positions per example
    left_out: dict = field(default_factory=dict, compare=False)  # measurement -> why a tier's member was dropped

    def __post_init__(self) -> None:
        spec = self.measures
        measures = resolve_measures(spec)
        named = {str(p).strip() for p in (spec.split(",") if isinstance(spec, str) else spec)}
        if self.input_to_repr_sample and "projected" in measures and "projected" not in named:
            # A projection needs every attended row of eq. 5, which sampling is there to avoid.
            measures = tuple(m for m in measures if m != "projected")
            self.left_out = {**self.left_out, "projected": "needs every attended row of eq. 5, not a sample "
                                                          "(--input-to-repr-sample); name it in --measures to add it"}
        self.measures = measures

    @property
    def methods(self) -> MethodLists:
        return MethodLists.of(self.measures)

    def ranking_names(self, n_layers: int) -> list[str]:
        names = [f"attention_layer_{l}" for l in range(n_layers)] if self.faithfulness_attention == "layers" else []
        return names + (["rollout"] if "rollout" in self.measures else []) + [*self.methods.input, "random"]

    def to_dict(self) -> dict:
        return {"attention_query": self.attention_query, "ig_steps": self.ig_steps, "ig_baseline": self.ig_baseline,
                "ig_tolerance": self.ig_tolerance, "ig_max_steps": self.ig_max_steps,
                "fractions": list(self.fractions), "faithfulness_attention": self.faithfulness_attention,
                "aopc_bounds": self.aopc_bounds, "input_to_repr": self.input_to_repr, "seed": self.seed,
                "measures": list(self.measures), "input_to_repr_sample": self.input_to_repr_sample}


def _compare(source: torch.Tensor, importance: torch.Tensor, mask: torch.Tensor, prefix: str, out: dict) -> None:
    """Every comparison metric between source [B, n, H, L] and importance [B, n, M, L] -> out[prefix.metric] [B, n, H, M].

    ``mask`` [B, L] marks the positions compared. The raw tau-b, tau-b on attention's support, on the union of the
    two supports, its expectation under the structure-preserving permutation null and the excess over that null.
    """
    mask = mask[:, None, :]
    out[f"{prefix}.kendall_tau_b"] = M.kendall_tau_b_cross(source, importance, mask)
    out[f"{prefix}.kendall_tau_b_on_support"] = M.kendall_tau_b_cross(source, importance, mask, on_support=True)
    out[f"{prefix}.kendall_tau_b_on_union"] = M.kendall_tau_b_on_union_cross(source, importance, mask)
    out[f"{prefix}.kendall_tau_b_null"] = M.kendall_tau_b_null_cross(source, importance, mask)
    out[f"{prefix}.kendall_tau_b_excess"] = out[f"{prefix}.kendall_tau_b"] - out[f"{prefix}.kendall_tau_b_null"]
    x = source[:, :, :, None, :]
    y = importance[:, :, None, :, :]
    pair_mask = mask[:, :, None, None, :]
    out[f"{prefix}.jensen_shannon"] = M.jensen_shannon(x, y, pair_mask)
    for key, value in M.support_coverage(x, y, pair_mask).items():
        out[f"{prefix}.{key}"] = value


def _summarise(source: torch.Tensor, mask: torch.Tensor, prefix: str, out: dict) -> None:
    mask = mask[:, None, None, :]
    out[f"{prefix}.entropy"] = M.normalised_entropy(source, mask)
    out[f"{prefix}.sparsity"] = M.sparsity(source, mask)
    out[f"{prefix}.support_size"] = M.support_size(source, mask)


def _mixing_metric_rows(mixing: dict, all_methods, per_layer_inputs, content, out: dict) -> None:
    """The ``mixing.*`` rows (module docstring) from :func:`~eval_suite.context_mixing.context_mixing_rows`'s
    ``mixing`` dict; ``all_methods`` [B, n, M, L] and ``per_layer_inputs`` [B, n, M_in, L] or None."""
    names = sorted({key.split(".")[0] for key in mixing}, key=list(REGISTRY).index)
    for name in names:
        for view in mixing_views(name):
            key = f"{name}.{view}"
            prefix = f"mixing.{key}"
            for summary in ("entropy", "sparsity", "special_mass"):
                out[f"{prefix}.{summary}"] = mixing[f"{key}.{summary}"]
            target = per_layer_inputs if view == "inputs" else all_methods
            if target is None:
                continue
            # An undefined row (NaN: no mass on content tokens) is compared as all-zero: the metrics leave a
            # constant vector undefined, so it stays NaN.
            vector = torch.nan_to_num(mixing[key].double(), nan=0.0)
            compared: dict[str, torch.Tensor] = {}
            _compare(vector if view == "head" else vector[:, :, None], target, content, prefix, compared)
            out.update({k: v if view == "head" else v[:, :, 0] for k, v in compared.items()})


def _metric_rows(attention, inputs, representations, rolled, projected, input_to_repr, content, real,
                 methods: MethodLists, sampled=None, mixing=None) -> dict:
    """Every per-example metric of the module docstring except faithfulness, IG's gap and the example facts, for
    the measured methods (``inputs`` / ``representations`` hold exactly ``methods``; absent maps are None)."""
    n_layers = attention.shape[1]

    out: dict[str, torch.Tensor] = {}
    _summarise(attention, content, "attention", out)
    content_mass = (attention * content[:, None, None, :]).sum(dim=-1)
    out["attention.special_mass"] = 1 - content_mass / attention.sum(dim=-1)
    _summarise(attention, real, "all_positions", out)

    per_layer_inputs = all_methods = None
    stacks = []
    if methods.input:
        input_stack = torch.stack([inputs[m] for m in methods.input], dim=1).double()  # [B, M_in, L]
        per_layer_inputs = input_stack[:, None].expand(-1, n_layers, -1, -1)
        stacks.append(per_layer_inputs)
    if methods.representation:
        stacks.append(torch.stack([representations[m] for m in methods.representation], dim=2).double())
    if stacks:
        all_methods = torch.cat(stacks, dim=2)  # [B, n, M, L]
        _compare(attention, all_methods, content, "attention", out)
        if methods.all_positions:
            everywhere = torch.stack([all_methods[:, :, methods.importance.index(m)] for m in methods.all_positions],
                                     dim=2)
            _compare(attention, everywhere, real, "all_positions", out)
        out["importance.entropy"] = M.normalised_entropy(all_methods, content[:, None, None, :])

    for name, source in (("rollout", rolled), ("projected", projected)):
        if source is None:
            continue
        source = source.double()
        _summarise(source, content, name, out)
        if per_layer_inputs is not None:
            _compare(source, per_layer_inputs, content, name, out)
    if mixing:
        _mixing_metric_rows(mixing, all_methods, per_layer_inputs, content, out)

    if input_to_repr is not None:
        # Eq. 5 restricted to content inputs i, summarised over content positions p (or a sample of them).
        g = M.normalise(input_to_repr.double(), content[:, None, None, :])  # [B, n, L(p), L(i)]
        entropy_p = M.normalised_entropy(g, content[:, None, None, :])  # [B, n, L]
        share_p = torch.diagonal(g, dim1=-2, dim2=-1)  # [B, n, L]
        positions = content if sampled is None else sampled
        weights = positions[:, None, :].double()
        denominator = weights.sum(dim=-1)
        for key, values in (("entropy", entropy_p), ("coindexed_share", share_p)):
            out[f"input_to_repr.{key}"] = torch.nansum(values * weights, dim=-1) / denominator
            if sampled is not None:
                out[f"input_to_repr.{key}_se"] = M.sampled_mean_standard_error(
                    torch.nan_to_num(values, nan=0.0), weights, content.sum(dim=-1)[:, None].double())
        if sampled is not None:
            out["input_to_repr.positions"] = denominator
    return out


def _metric_rows_chunked(attention, inputs, representations, rolled, projected, input_to_repr, content, real,
                         methods: MethodLists, sampled=None, mixing=None) -> dict:
    """:func:`_metric_rows` a few examples at a time, so that long documents fit in memory (same values)."""
    B, n_layers, n_heads, L = attention.shape
    step = max(1, METRIC_ELEMENTS // max(1, n_layers * n_heads * L * L))
    if step >= B:
        return _metric_rows(attention, inputs, representations, rolled, projected, input_to_repr, content, real,
                            methods, sampled, mixing)
    parts = []
    for start in range(0, B, step):
        sl = slice(start, start + step)
        pick = lambda value: None if value is None else value[sl]  # noqa: E731
        parts.append(_metric_rows(attention[sl], {k: v[sl] for k, v in inputs.items()},
                                  {k: v[sl] for k, v in representations.items()}, pick(rolled), pick(projected),
                                  pick(input_to_repr), content[sl], real[sl], methods, pick(sampled),
                                  {k: v[sl] for k, v in (mixing or {}).items()}))
    return {key: torch.cat([part[key] for part in parts], dim=0) for key in parts[0]}


def _random_scores(indices: list[int], lengths: list[int], padded_length: int, seed: int) -> torch.Tensor:
    """A random ranking per example from (seed, example index, its own length) alone, not from its batch."""
    scores = np.zeros((len(indices), padded_length))
    for row, (index, length) in enumerate(zip(indices, lengths)):
        scores[row, :length] = np.random.default_rng([seed, index]).random(length)
    return torch.tensor(scores)


@contextmanager
def _timed(timings: dict | None, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


ROW_FLOAT_PREFIXES = ("attention.", "all_positions.", "rollout.", "projected.", "importance.", "input_to_repr.",
                      "faithfulness.", "integrated_gradients.completeness_gap", "mixing.")


def _faithfulness_rows(ctx, config: MeasureConfig, rankings: dict, indices: list[int], out: dict) -> None:
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    keys = tie_break_keys(indices, lengths, ctx.batch.length, config.seed)
    comprehensiveness, sufficiency = faithfulness_curves(ctx, rankings, config.fractions, tie_break=keys)
    out["faithfulness.comprehensiveness"] = comprehensiveness
    out["faithfulness.sufficiency"] = sufficiency
    if config.aopc_bounds == "greedy":
        upper, lower = greedy_comprehensiveness_bounds(ctx, config.fractions)
        out["faithfulness.comprehensiveness_upper"] = upper
        out["faithfulness.comprehensiveness_lower"] = lower


def measure_batch(classifier, batch: TokenBatch, labels: list[int], indices: list[int], config: MeasureConfig,
                  timings: dict | None = None, progress=None):
    """Run the measurements of ``config.measures`` on one batch; return (arrays, token_maps).

    ``arrays`` maps keys (module docstring) to numpy arrays with the examples first (metrics float32);
    ``token_maps`` maps an example index in ``config.token_map_indices`` to its token-level attention and
    importance vectors. ``timings``, if given, accumulates seconds per stage; ``progress(stage, share)``, if given,
    is told as each stage advances (``share`` of that stage done, 0..1).
    """
    measures, methods = config.measures, config.methods
    ctx = ForwardContext(classifier, batch, max_tokens=config.max_tokens, max_grad_tokens=config.max_grad_tokens)

    @contextmanager
    def stage(name):
        ctx.on_progress = (lambda share: progress(name, share)) if progress is not None else None
        with _timed(timings, name):
            yield
        if progress is not None:
            progress(name, 1.0)
        ctx.on_progress = None

    inputs: dict[str, torch.Tensor] = {}
    representations: dict[str, torch.Tensor] = {}

    def store(name, value):
        (inputs if REGISTRY[name].role == "input" else representations)[name] = value

    with stage("base"):
        base = ctx.base
        content = ctx.batch.content_mask
        real = ctx.batch.attention_mask.bool()
        n_layers = len(base.attentions)
        # Everything that needs the base pass's graph first, then free it.
        for name in measures:
            if REGISTRY[name].needs_graph and REGISTRY[name].compute is not None:
                store(name, REGISTRY[name].compute(ctx, config))
    input_to_repr = sampled = None
    if "input_to_repr" in measures or "projected" in measures:
        with stage("input_to_repr"):
            wanted = torch.zeros(ctx.batch.size, n_layers, ctx.batch.length, dtype=torch.bool, device=content.device)
            if "input_to_repr" in measures:
                if config.input_to_repr_sample:
                    sampled = sample_positions(indices, content, config.input_to_repr_sample, config.seed)
                wanted |= (content if sampled is None else sampled)[:, None, :]
            if "projected" in measures:  # the rows a projection multiplies by a non-zero attention weight
                queries = attention_rows(base.attentions, ctx.batch.attention_mask, config.attention_query)
                wanted |= (queries != 0).any(dim=2)
            input_to_repr = InputToRepresentation(mode=config.input_to_repr)(ctx, wanted)
    ctx.release()
    ig_gap = ig_steps = None
    if "integrated_gradients" in measures:
        with stage("integrated_gradients"):
            ig = IntegratedGradients(config.ig_steps, config.ig_baseline, config.ig_tolerance, config.ig_max_steps)
            signed, ig_gap, ig_steps = ig.attribute(ctx)
            store("integrated_gradients", signed.abs())
    for name in measures:
        entry = REGISTRY[name]
        if not entry.needs_graph and entry.compute is not None and entry.role != "mixing":
            with stage(entry.stage_name):
                store(name, entry.compute(ctx, config))
    mixing: dict[str, torch.Tensor] = {}
    mixing_names = methods_with_role(measures, "mixing")
    if mixing_names:
        from .context_mixing import CONTEXT_MIXING_METHODS
        from .context_mixing.decomposition import decomposition

        if any(CONTEXT_MIXING_METHODS[name].uses_split for name in mixing_names):
            with stage("context_mixing_split"):  # the recorded pass and checked split every method reads
                decomposition(ctx)
        for name in mixing_names:
            with stage(REGISTRY[name].stage_name):
                mixing.update(REGISTRY[name].compute(ctx, config))
    rolled = projected = rollout_method = None
    if "rollout" in measures:
        with stage("rollout"):
            rollout_method = AttentionRollout(config.attention_query)
            rolled = rollout_method(ctx)
    if "projected" in measures:
        with stage("projected"):
            projected = ProjectedAttention(config.attention_query)(ctx, input_to_repr)
    attention = attention_rows(base.attentions, ctx.batch.attention_mask, config.attention_query).double()
    with stage("metrics"):
        out = _metric_rows_chunked(attention, inputs, representations, rolled, projected,
                                   input_to_repr if "input_to_repr" in measures else None, content, real, methods,
                                   sampled, mixing)
    if ig_gap is not None:
        out["integrated_gradients.completeness_gap"] = ig_gap
        out["integrated_gradients.steps"] = ig_steps

    rankings = {}
    if config.faithfulness_attention == "layers":
        for layer in range(n_layers):
            rankings[f"attention_layer_{layer}"] = attention[:, layer].mean(dim=1)
    if rollout_method is not None:
        rankings["rollout"] = rollout_method.full(ctx)
    rankings.update({m: inputs[m] for m in methods.input})
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    rankings["random"] = _random_scores(indices, lengths, ctx.batch.length, config.seed).to(content.device)
    assert list(rankings) == config.ranking_names(n_layers)
    if "faithfulness" in measures:
        with stage("faithfulness"):
            _faithfulness_rows(ctx, config, rankings, indices, out)

    out["example.label"] = torch.tensor(labels)
    out["example.prediction"] = base.prediction
    out["example.probability"] = base.target
    out["example.n_tokens"] = ctx.batch.attention_mask.sum(dim=1)
    out["example.n_content"] = content.sum(dim=1)
    arrays = {k: v.detach().cpu().to(torch.float64).numpy().astype(np.float32) if k.startswith(ROW_FLOAT_PREFIXES)
              else v.detach().cpu().numpy() for k, v in out.items()}
    arrays["example.index"] = np.asarray(indices, dtype=np.int64)

    token_maps = {}
    segments = content_segments(content)
    for row, index in enumerate(indices):
        if index not in config.token_map_indices:
            continue
        keep = content[row]
        maps = {f"attention layer {l} (head mean)": attention[row, l].mean(dim=0) for l in range(n_layers)}
        if "rollout" in rankings:
            maps["rollout (whole network)"] = rankings["rollout"][row]
        if projected is not None:
            maps[f"projected layer {n_layers - 1} (head mean)"] = projected[row, n_layers - 1].mean(dim=0)
        maps.update({m: inputs[m][row] for m in methods.input})
        ids = ctx.batch.input_ids[row][keep].tolist()
        token_maps[int(index)] = {
            "tokens": classifier.tokenizer.convert_ids_to_tokens(ids),
            "label": int(labels[row]),
            "prediction": int(base.prediction[row]),
            "probability": float(base.target[row]),
            "maps": {name: [float(v) for v in M.normalise(vec.double()[keep])] for name, vec in maps.items()},
            # Per head, over the content tokens and renormalised there: exactly the distributions the metrics
            # compare with importance. special_mass says how much of the head's attention that leaves out.
            "heads": _token_values(M.normalise(attention[row][..., keep])),
            "special_mass": _token_values(out["attention.special_mass"][row]),
            "representation": {m: _token_values(M.normalise(representations[m][row].double()[..., keep]))
                               for m in methods.representation},
            # Each context-mixing view over the content tokens, renormalised there (what its metrics compare):
            # head [n][H][tokens], layer and inputs [n][tokens].
            "mixing": {name: {view: _token_values(mixing[f"{name}.{view}"][row][..., keep])
                              for view in mixing_views(name)} for name in mixing_names},
        }
        if projected is not None:
            token_maps[int(index)]["projected"] = _token_values(M.normalise(projected[row].double()[..., keep]))
        if int(segments[row].max()) > 0:  # a text pair: which text each token is from (the [SEP] boundary)
            token_maps[int(index)]["segments"] = segments[row][keep].tolist()
    return arrays, token_maps


def _token_values(values: torch.Tensor) -> list:
    """Nested lists for JSON at 6 significant digits (exact zeros stay 0, tiny weights stay non-zero); NaN -> None."""
    def convert(value):
        if isinstance(value, list):
            return [convert(v) for v in value]
        return float(f"{value:.6g}") if math.isfinite(value) else None

    return convert(values.detach().double().cpu().tolist())
