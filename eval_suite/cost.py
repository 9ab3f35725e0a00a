"""The cost model: FLOPs and model calls of every stage of a planned batch, before it runs.

Each measure declares the cost of its own stage (:class:`eval_suite.registry.Measure` ``cost``); this module holds
the shapes they read (:class:`ModelShape`, :class:`BatchShape`), the arithmetic they share, the stages every
selection runs (the base pass, the metrics, the bookkeeping) and :func:`stage_costs`, which adds them up for one
selection. :mod:`eval_suite.forecast` turns the costs into seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .registry import MethodLists, selected, shared_demands, with_role


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs to know about an encoder."""

    n_layers: int  # layers with attention (an attention-pooling classifier's pooling layer counts)
    n_heads: int
    d_model: int
    d_ff: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        """From a transformers config (BERT-style or DistilBERT-style names). ``num_attention_layers``, where a
        model declares it, counts attention outside the encoder layers too (as :func:`load_classifier` does)."""
        d_model = int(getattr(config, "hidden_size", None) or getattr(config, "dim"))
        d_ff = int(getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * d_model)
        n_layers = int(getattr(config, "num_attention_layers", None) or getattr(config, "num_hidden_layers", None)
                       or getattr(config, "n_layers"))
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

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.calls + other.calls)


def forward_flops(model: ModelShape, lengths, layers: float | None = None) -> float:
    """FLOPs of one forward pass of each sequence in ``lengths`` through ``layers`` layers (default all)."""
    layers = model.n_layers if layers is None else layers
    return sum(model.layer_flops(1, t) for t in lengths) * layers


def chunks(n_rows: int, length: int, budget: int) -> float:
    """Calls that ``n_rows`` sequences of ``length`` take in chunks of at most ``budget`` tokens."""
    return math.ceil(n_rows / max(1, budget // max(1, length))) if n_rows else 0


def base_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """The base pass with its graph, and the one backward pass that gives every gradient importance."""
    forward = model.n_layers * model.layer_flops(shape.size, shape.length)
    gradients = any(m.uses_gradients for m in selected(measures))
    return Cost(forward * (3 if gradients else 1), 3 if gradients else 1)


def metrics_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """Elementwise work of the agreement metrics (pairs of positions for every head x method), as FLOPs."""
    methods = len(MethodLists.of(measures).importance)
    maps = len(with_role(measures, "map"))
    # each context-mixing view is compared like one more source: a head view like attention, a layer view 1/H
    mixing = sum(1 if view == "head" else 1 / model.n_heads for m in with_role(measures, "mixing")
                 for view in m.mixing.views())
    pairs = shape.size * model.n_layers * model.n_heads * shape.length ** 2
    return Cost(40 * pairs * (methods + 1 + maps + mixing * max(methods, 1)), 1)


def bookkeeping_cost(shape: BatchShape, model: ModelShape, config, measures) -> Cost:
    """What a batch costs outside the measurements (padding it, converting and storing its rows, token maps):
    a fixed time per example, which the calibration sets."""
    return Cost(0.0, shape.size)


# Work every selection does, in stages of its own: the base pass (and the gradient backward), the metrics, and
# the per-batch bookkeeping around them.
SHARED_STAGES = {"base": base_cost, "metrics": metrics_cost, "bookkeeping": bookkeeping_cost}


def stage_costs(shape: BatchShape, model: ModelShape, config, measures) -> dict[str, Cost]:
    """Cost of every stage a selection runs on one batch (stage name -> Cost)."""
    out = {name: fn(shape, model, config, measures) for name, fn in SHARED_STAGES.items()}
    for measure in selected(measures):
        if measure.cost is not None:
            out[measure.stage_name] = out.get(measure.stage_name, Cost()) + measure.cost(shape, model, config,
                                                                                         measures)
    for name, (shared, demands) in shared_demands(measures).items():
        out[name] = out.get(name, Cost()) + shared.cost(shape, model, config, demands)
    return out
