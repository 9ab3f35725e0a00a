"""The measurements the suite can run, by name, grouped into tiers, each with the question it answers and its cost.

``--measures`` takes a comma-separated mix of tier names and measurement names (``paper``, ``quick,loo``,
``full,-faithfulness``: a leading ``-`` removes one); :func:`resolve_measures` turns it into the measured names in
registry order. The attention of every layer and head is always read (it is what everything is compared with).

Tiers (cumulative: ``quick`` < ``paper`` < ``full``; docs/eval_suite.md gives their cost on MiniLM):

* ``quick``: gradient importance of the inputs and of every layer's representations, and attention rollout --
  one forward and one backward pass per batch. "Does attention rank tokens as the gradient does?"
* ``paper`` (the default): quick + leave-one-out of inputs and of representations, input-to-representation
  influence (eq. 5) and projected attention -- the measurement set of Meister et al. (2021). "Is attention over
  representations an explanation of the input?" Its cost grows with the square of the length.
* ``full``: everything, including integrated gradients and faithfulness (AOPC), and any newer family.
* ``mixing`` (a family tier, also in ``full``): the context-mixing methods of :mod:`eval_suite.context_mixing`
  (attention-norm, attention-norm with residual and LayerNorm, value zeroing, ALTI, attention flow): per layer
  (and head) the classification token's mixing over the representations, and its aggregation to the inputs,
  compared with importance like attention. "Does sparse attention give sparse context mixing, and does that
  mixing point at influential inputs?" One recorded forward pass plus work that grows with the square of the
  length (value zeroing: with the cube, through the feed-forward of every (i, j) pair).

Adding a measurement family (for example context mixing): one :class:`Measure` entry in ``REGISTRY`` with its
``role`` (how the suite compares it: ``input`` importance ``[B, L]``, ``representation`` importance
``[B, n_layers, L]``, ``map`` of attention carried to the inputs ``[B, n_layers, H, L]``, ``mixing``: a
context-mixing method whose views are compared like attention), its ``compute``
function, its ``cost`` model and its ``tier``: a standard tier, or a name of its own, which becomes selectable
(``--measures paper,mixing``) and is part of ``full``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .errors import EvalError

STANDARD_TIERS = ("quick", "paper", "full")
DEFAULT_SPEC = "paper"


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs to know about an encoder."""

    n_layers: int
    n_heads: int
    d_model: int
    d_ff: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        """From a transformers config (BERT-style or DistilBERT-style names)."""
        d_model = int(getattr(config, "hidden_size", None) or getattr(config, "dim"))
        d_ff = int(getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * d_model)
        n_layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers"))
        n_heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_heads"))
        return cls(n_layers, n_heads, d_model, d_ff)

    def layer_flops(self, rows: float, length: float) -> float:
        """Multiply-add FLOPs (x2) of one encoder layer's forward pass over ``rows`` sequences of ``length``."""
        dense = 2 * rows * length * (4 * self.d_model * self.d_model + 2 * self.d_model * self.d_ff)
        return dense + 4 * rows * length * length * self.d_model


@dataclass(frozen=True)
class BatchShape:
    """A planned batch: padded length and, per example, its number of tokens and of content tokens."""

    lengths: tuple
    n_content: tuple

    @property
    def size(self) -> int:
        return len(self.lengths)

    @property
    def length(self) -> int:
        return max(self.lengths)


@dataclass(frozen=True)
class Cost:
    """Work of one stage on one batch: FLOPs and calls (a model forward = 1; a backward through k of n layers =
    2k/n). Seconds = rate x (flops / machine FLOP rate + calls x machine seconds per call)."""

    flops: float = 0.0
    calls: float = 0.0


def _forward(model: ModelShape, lengths, layers: float | None = None) -> float:
    layers = model.n_layers if layers is None else layers
    return sum(model.layer_flops(1, t) for t in lengths) * layers


def _chunks(n_rows: int, length: int, budget: int) -> float:
    return math.ceil(n_rows / max(1, budget // max(1, length))) if n_rows else 0


def base_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """The base pass with its graph, and the one backward pass that gives every gradient importance."""
    forward = model.n_layers * model.layer_flops(shape.size, shape.length)
    gradients = any(m in measures for m in ("grad_norm", "grad_x_input", "repr_grad_norm"))
    return Cost(forward * (3 if gradients else 1), 3 if gradients else 1)


def input_to_repr_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """One backward pass per (layer, position) through the layers below, batched over the examples."""
    if config.input_to_repr_sample and "projected" not in measures:
        positions = min(config.input_to_repr_sample, max(shape.n_content))
    elif "projected" in measures:
        positions = shape.length
    else:
        positions = max(shape.n_content)
    per_layer = model.layer_flops(shape.size, shape.length)
    layers = sum(range(model.n_layers))  # layer l's representations lie l layers above the embeddings
    flops = 2 * positions * per_layer * layers
    calls = positions * (2 * layers / model.n_layers + 0.1 * model.n_layers)
    if config.input_to_repr == "jacobian":
        flops, calls = flops * model.d_model, calls * model.d_model
    return Cost(flops, calls)


def integrated_gradients_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    steps = config.ig_steps
    flops = 3 * steps * _forward(model, shape.lengths) + _forward(model, [shape.length] * shape.size)
    return Cost(flops, 3 * _chunks(shape.size * steps, shape.length, config.max_grad_tokens) + 1)


def loo_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    lengths = [t - 1 for t, c in zip(shape.lengths, shape.n_content) for _ in range(c)]
    return Cost(_forward(model, lengths), _chunks(len(lengths), shape.length, config.max_tokens))


def repr_loo_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    variants = sum(shape.n_content)
    layers = sum(model.n_layers - l for l in range(model.n_layers))
    calls = model.n_layers * _chunks(variants, shape.length, config.max_tokens)
    return Cost(variants * model.layer_flops(1, shape.length) * layers, calls)


def rollout_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    return Cost(2 * shape.size * model.n_layers * shape.length ** 3 * 2, model.n_layers)


def projected_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    return Cost(2 * shape.size * model.n_layers * model.n_heads * shape.length ** 2, 1)


def context_mixing_split_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """The recorded forward pass the context-mixing methods share, and the split of every block that is checked
    to reproduce each layer (about two more layers' worth of work per layer)."""
    return Cost(3 * _forward(model, shape.lengths), 1 + 0.2 * shape.size * model.n_layers)


def _mixing_cost(pairs_per_layer, calls_per_layer: float):
    """Cost model of one context-mixing method: ``pairs_per_layer(model, n) -> FLOPs`` for an example of n tokens in
    one layer, and its Python loop's calls (one per example and layer and view, in forward-call units)."""
    def cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
        flops = model.n_layers * sum(pairs_per_layer(model, t) for t in shape.lengths)
        return Cost(flops, calls_per_layer * shape.size * model.n_layers)
    return cost


def _norm_pairs(model: ModelShape, n: int) -> float:
    # sum over heads of alpha_ij f^h(x_j) for every (i, j) pair, and its norm
    return 2 * n * n * model.n_heads * model.d_model + 2 * n * n * model.d_model


def _residual_ln_pairs(model: ModelShape, n: int) -> float:
    return _norm_pairs(model, n) + 4 * n * n * model.d_model


def _value_zeroing_pairs(model: ModelShape, n: int) -> float:
    # LayerNorm and feed-forward of every (i, j) pair: the whole layer (n^2 rows), then the [CLS] row per head
    feed_forward = 4 * model.d_model * model.d_ff + 8 * model.d_model
    return n * n * feed_forward + model.n_heads * n * feed_forward + _residual_ln_pairs(model, n)


def _rollout_pairs(model: ModelShape, n: int) -> float:
    return 2 * n ** 3


def _flow_pairs(model: ModelShape, n: int) -> float:
    # per layer: one max-flow per input token on a graph of n_layers x n^2 edges (Dinic's: a few passes over the
    # edges; the constant is MiniLM's measured rate on MR, in FLOP-equivalents)
    return 75 * model.n_layers * n ** 3


attention_norm_cost = _mixing_cost(_norm_pairs, 0.3)
attention_norm_res_ln_cost = _mixing_cost(lambda m, n: _residual_ln_pairs(m, n) + _rollout_pairs(m, n), 0.3)
value_zeroing_cost = _mixing_cost(lambda m, n: _value_zeroing_pairs(m, n) + _rollout_pairs(m, n), 0.6)
alti_cost = _mixing_cost(lambda m, n: _residual_ln_pairs(m, n) + 2 * n * n * m.d_model + _rollout_pairs(m, n), 0.3)
attention_flow_cost = _mixing_cost(_flow_pairs, 0.3)


def n_rankings(config, model: ModelShape, measures) -> int:
    attention = model.n_layers if config.faithfulness_attention == "layers" else 0
    inputs = sum(1 for m in measures if m in REGISTRY and REGISTRY[m].role == "input")
    return attention + ("rollout" in measures) + inputs + 1  # + random


def faithfulness_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    rankings = n_rankings(config, model, measures)
    lengths = []
    for t, c in zip(shape.lengths, shape.n_content):
        for fraction in config.fractions:
            k = min(max(1, math.ceil(fraction * c - 1e-9)), max(c, 1))
            lengths += [t - k, t - c + k]  # without the top k; only the top k (and the special tokens)
    variants = rankings * len(lengths)
    flops = rankings * _forward(model, lengths)
    if config.aopc_bounds == "greedy":
        for t, c in zip(shape.lengths, shape.n_content):
            k_max = min(max(1, math.ceil(max(config.fractions) * c - 1e-9)), max(c, 1))
            flops += 2 * sum((c - s) * _forward(model, [t - s - 1]) for s in range(k_max))
            variants += 2 * sum(c - s for s in range(k_max))
    return Cost(flops, _chunks(variants, shape.length, config.max_tokens))


def metrics_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """Elementwise work of the agreement metrics (pairs of positions for every head x method), as FLOPs."""
    methods = sum(1 for m in measures if m in REGISTRY and REGISTRY[m].role in ("input", "representation"))
    maps = sum(1 for m in measures if m in REGISTRY and REGISTRY[m].role == "map")
    # each context-mixing view is compared like one more source: a head view like attention, a layer view 1/H
    mixing = sum(1 if view == "head" else 1 / model.n_heads for m in methods_with_role(measures, "mixing")
                 for view in mixing_views(m))
    pairs = shape.size * model.n_layers * model.n_heads * shape.length ** 2
    return Cost(40 * pairs * (methods + 1 + maps + mixing * max(methods, 1)), 1)


@dataclass(frozen=True)
class Measure:
    """One registered measurement (see the module docstring)."""

    name: str
    role: str  # "input", "representation", "map", "summary" (eq. 5 summaries), "check" (faithfulness), "mixing"
    tier: str  # the smallest standard tier that holds it, or a family's own tier name
    question: str
    cost: Callable | None = None  # (BatchShape, ModelShape, MeasureConfig, measures) -> Cost of its own stage
    stage: str | None = None  # the timing stage its work is counted under (default: its name)
    compute: Callable | None = None  # (ctx, config) -> tensor, for input / representation / map methods
    # (context mixing: -> the dict of eval_suite.context_mixing.context_mixing_rows)
    needs_graph: bool = False  # computed from the base pass's graph, before it is released
    all_positions: bool = False  # has a value at special tokens too (compared in the all-positions view)

    @property
    def stage_name(self) -> str:
        return self.stage or self.name


def _gradient_input(name):
    def compute(ctx, config):
        from .attribution import GradientNorm, GradientXInput

        return (GradientNorm() if name == "grad_norm" else GradientXInput())(ctx)
    return compute


def _repr_grad_norm(ctx, config):
    from .attribution import RepresentationGradientNorm

    return RepresentationGradientNorm()(ctx)


def _loo(ctx, config):
    from .attribution import LeaveOneOut

    return LeaveOneOut()(ctx)


def _repr_loo(ctx, config):
    from .attribution import RepresentationLeaveOneOut

    return RepresentationLeaveOneOut()(ctx)


def _context_mixing(name):
    def compute(ctx, config):
        from .context_mixing import context_mixing_rows

        return context_mixing_rows(ctx, [name])
    return compute


def mixing_views(name: str) -> tuple[str, ...]:
    """The views a context-mixing measurement defines, in rows order: ``head`` (per layer and head, [CLS] row),
    ``layer`` (the whole layer's [CLS] row), ``inputs`` (aggregated through the layers to the inputs)."""
    from .context_mixing import CONTEXT_MIXING_METHODS

    method = CONTEXT_MIXING_METHODS[name]
    return tuple(view for view, defined in (("head", method.defines_heads), ("layer", method.defines_layer),
                                            ("inputs", method.defines_inputs)) if defined)


# Registry order is the order of every methods list in results.json (today's order for the full set).
_ENTRIES = [
    Measure("grad_norm", "input", "quick", "||d y_hat / d x_i||: how sensitive the prediction is to each input",
            stage="base", compute=_gradient_input("grad_norm"), needs_graph=True, all_positions=True),
    Measure("grad_x_input", "input", "quick", "|x_i . d y_hat / d x_i|: first-order contribution of each input",
            stage="base", compute=_gradient_input("grad_x_input"), needs_graph=True, all_positions=True),
    Measure("integrated_gradients", "input", "full",
            "path-integrated gradient from a [PAD] baseline, with its completeness gap",
            cost=integrated_gradients_cost),
    Measure("loo", "input", "paper", "|y_hat - y_hat(x without token i)|: what deleting each token changes",
            cost=loo_cost, compute=_loo),
    Measure("repr_grad_norm", "representation", "quick",
            "||d y_hat / d h^(l)_i||: sensitivity to the representations each layer attends over",
            stage="base", compute=_repr_grad_norm, needs_graph=True, all_positions=True),
    Measure("repr_loo", "representation", "paper",
            "|y_hat - y_hat(key i masked in layer l)|: what hiding one representation from one layer changes",
            cost=repr_loo_cost, compute=_repr_loo),
    Measure("rollout", "map", "quick", "attention carried to the inputs through the layers below (rollout)",
            cost=rollout_cost),
    Measure("input_to_repr", "summary", "paper",
            "eq. 5: how many inputs each representation mixes (entropy, co-indexed share)",
            cost=input_to_repr_cost, needs_graph=True),
    Measure("projected", "map", "paper", "attention projected onto the inputs through eq. 5", cost=projected_cost),
    Measure("faithfulness", "check", "full",
            "comprehensiveness / sufficiency (AOPC) of rankings by attention, rollout and each input method",
            cost=faithfulness_cost),
    Measure("attention_norm", "mixing", "mixing",
            "||alpha_ij f(x_j)||: attention weighted by the size of what each value sends (Kobayashi et al. 2020)",
            cost=attention_norm_cost, compute=_context_mixing("attention_norm")),
    Measure("attention_norm_res_ln", "mixing", "mixing",
            "||T_i(x_j)||: attention, residual and LayerNorm of the whole block (Kobayashi et al. 2021)",
            cost=attention_norm_res_ln_cost, compute=_context_mixing("attention_norm_res_ln")),
    Measure("value_zeroing", "mixing", "mixing",
            "cosine distance of every layer output when token j's value is zeroed (Mohebbi et al. 2023)",
            cost=value_zeroing_cost, compute=_context_mixing("value_zeroing")),
    Measure("alti", "mixing", "mixing",
            "L1 proximity of T_i(x_j) to the block output, rolled out to the inputs (ALTI, Ferrando et al. 2022)",
            cost=alti_cost, compute=_context_mixing("alti")),
    Measure("attention_flow", "mixing", "mixing",
            "max-flow of residual attention from [CLS] to each input (Abnar & Zuidema 2020)",
            cost=attention_flow_cost, compute=_context_mixing("attention_flow")),
]
REGISTRY: dict[str, Measure] = {m.name: m for m in _ENTRIES}
def bookkeeping_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """What a batch costs outside the measurements (padding it, converting and storing its rows, token maps):
    a fixed time per example, which the calibration sets."""
    return Cost(0.0, shape.size)


# Work every selection does, in stages of its own: the base pass (and the gradient backward), the metrics, and
# the per-batch bookkeeping around them.
SHARED_STAGES = {"base": base_cost, "metrics": metrics_cost, "bookkeeping": bookkeeping_cost}


def tiers() -> dict[str, tuple[str, ...]]:
    """Tier name -> measured names (registry order). Standard tiers are cumulative; a family tier holds its own."""
    out = {}
    for level, tier in enumerate(STANDARD_TIERS):
        allowed = STANDARD_TIERS[: level + 1]
        out[tier] = tuple(m.name for m in _ENTRIES if m.tier in allowed or tier == "full")
    for m in _ENTRIES:
        if m.tier not in STANDARD_TIERS:
            out.setdefault(m.tier, ())
            out[m.tier] += (m.name,)
    return out


def resolve_measures(spec: str | list | tuple | None) -> tuple[str, ...]:
    """``"paper"``, ``"quick,loo"``, ``"full,-faithfulness"`` (or a list of such names) -> measured names in
    registry order; EvalError (one line) for an unknown name or an empty selection."""
    if spec is None:
        spec = DEFAULT_SPEC
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    named = tiers()
    for raw in parts:
        item = str(raw).strip()
        if not item:
            continue
        drop = item.startswith("-")
        name = item[1:].strip() if drop else item
        if name in named:
            members = set(named[name])
        elif name in REGISTRY:
            members = {name}
        else:
            raise EvalError(f"--measures: unknown measurement or tier {name!r}; choose from the tiers "
                            f"{', '.join(named)} and the measurements {', '.join(REGISTRY)}")
        chosen = chosen - members if drop else chosen | members
    if not chosen:
        raise EvalError(f"--measures {spec!r} selects nothing; name a tier ({', '.join(named)}) or a measurement")
    return tuple(m.name for m in _ENTRIES if m.name in chosen)


def describe_selection(measures) -> str:
    """The smallest way to name ``measures``: a tier name when it is one, else a comma-separated list."""
    for tier, members in tiers().items():
        if tuple(measures) == members:
            return tier
    return ",".join(measures)


def methods_with_role(measures, role: str) -> list[str]:
    return [m for m in measures if m in REGISTRY and REGISTRY[m].role == role]


@dataclass(frozen=True)
class MethodLists:
    """The importance methods one selection measures, in the groups the metrics and results use."""

    input: list = field(default_factory=list)
    representation: list = field(default_factory=list)

    @classmethod
    def of(cls, measures) -> "MethodLists":
        return cls(methods_with_role(measures, "input"), methods_with_role(measures, "representation"))

    @property
    def importance(self) -> list[str]:
        return self.input + self.representation

    @property
    def all_positions(self) -> list[str]:
        return [m for m in self.importance if REGISTRY[m].all_positions]


def stage_costs(shape: BatchShape, model: ModelShape, config, measures) -> dict[str, Cost]:
    """Cost of every stage a selection runs on one batch (stage name -> Cost)."""
    out = {name: fn(shape, model, config, measures) for name, fn in SHARED_STAGES.items()}
    for name in measures:
        entry = REGISTRY[name]
        if entry.cost is not None:
            cost = entry.cost(shape, model, config, measures)
            previous = out.get(entry.stage_name, Cost())
            out[entry.stage_name] = Cost(previous.flops + cost.flops, previous.calls + cost.calls)
    if "projected" in measures and "input_to_repr" not in measures:
        out["input_to_repr"] = input_to_repr_cost(shape, model, config, measures)
    if methods_with_role(measures, "mixing"):
        out["context_mixing_split"] = context_mixing_split_cost(shape, model, config, measures)
    return out
