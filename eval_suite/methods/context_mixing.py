"""Context mixing (:mod:`eval_suite.context_mixing`): how much each token contributes to the classification token's
representation, per layer (and head) and through the layers to the inputs; each view is compared with importance
like attention. One recorded forward pass and a checked split of every attention block are shared by the methods
that read it (:data:`SPLIT`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..cost import Cost, forward_flops
from ..registry import Measure, Shared, declare

VIEWS = ("head", "layer", "inputs")


@dataclass(frozen=True)
class MixingMethod:
    """The context-mixing class registered as ``name``, looked up when first needed (it imports torch)."""

    name: str

    def method_class(self):
        from ..context_mixing import CONTEXT_MIXING_METHODS

        return CONTEXT_MIXING_METHODS[self.name]

    def views(self) -> tuple[str, ...]:
        """The views it defines, in rows order: ``head`` (per layer and head, [CLS] row), ``layer`` (the whole
        layer's [CLS] row), ``inputs`` (aggregated through the layers to the inputs)."""
        cls = self.method_class()
        return tuple(view for view, defined in zip(VIEWS, (cls.defines_heads, cls.defines_layer, cls.defines_inputs))
                     if defined)


def _split(ctx, settings, state, demands):
    from ..context_mixing import CONTEXT_MIXING_METHODS
    from ..context_mixing.decomposition import decomposition

    if any(CONTEXT_MIXING_METHODS[name].uses_split for name in demands):
        decomposition(ctx)  # the recorded pass and checked split every method reads (kept on ctx)


def _split_cost(shape, model, config, demands) -> Cost:
    """The recorded forward pass the context-mixing methods share, and the split of every block that is checked
    to reproduce each layer (about two more layers' worth of work per layer)."""
    return Cost(3 * forward_flops(model, shape.lengths), 1 + 0.2 * shape.size * model.n_layers)


SPLIT = Shared("context_mixing_split", _split, _split_cost, label="context-mixing split")


def _mixing_cost(pairs_per_layer, calls_per_layer: float):
    """Cost model of one context-mixing method: ``pairs_per_layer(model, n) -> FLOPs`` for an example of n tokens in
    one layer, and its Python loop's calls (one per example and layer and view, in forward-call units)."""
    def cost(shape, model, config, measures) -> Cost:
        flops = model.n_layers * sum(pairs_per_layer(model, t) for t in shape.lengths)
        return Cost(flops, calls_per_layer * shape.size * model.n_layers)
    return cost


def _norm_pairs(model, n: int) -> float:
    # sum over heads of alpha_ij f^h(x_j) for every (i, j) pair, and its norm
    return 2 * n * n * model.n_heads * model.d_model + 2 * n * n * model.d_model


def _residual_ln_pairs(model, n: int) -> float:
    return _norm_pairs(model, n) + 4 * n * n * model.d_model


def _value_zeroing_pairs(model, n: int) -> float:
    # LayerNorm and feed-forward of every (i, j) pair: the whole layer (n^2 rows), then the [CLS] row per head
    feed_forward = 4 * model.d_model * model.d_ff + 8 * model.d_model
    return n * n * feed_forward + model.n_heads * n * feed_forward + _residual_ln_pairs(model, n)


def _rollout_pairs(model, n: int) -> float:
    return 2 * n ** 3


def _flow_pairs(model, n: int) -> float:
    # per layer: one max-flow per input token on a graph of n_layers x n^2 edges (Dinic's: a few passes over the
    # edges; the constant is MiniLM's measured rate on MR, in FLOP-equivalents)
    return 75 * model.n_layers * n ** 3


def _mixing(name: str, order: float, question: str, pairs, calls: float) -> Measure:
    def compute(ctx, settings, state):
        from ..context_mixing import context_mixing_rows

        return context_mixing_rows(ctx, [name])
    return Measure(name, "mixing", "mixing", question, order=order, cost=_mixing_cost(pairs, calls), compute=compute,
                   uses=((SPLIT, name),), mixing=MixingMethod(name))


declare(
    _mixing("attention_norm", 110, "||alpha_ij f(x_j)||: attention weighted by the size of what each value sends "
            "(Kobayashi et al. 2020)", _norm_pairs, 0.3),
    _mixing("attention_norm_res_ln", 120, "||T_i(x_j)||: attention, residual and LayerNorm of the whole block "
            "(Kobayashi et al. 2021)", lambda m, n: _residual_ln_pairs(m, n) + _rollout_pairs(m, n), 0.3),
    _mixing("value_zeroing", 130, "cosine distance of every layer output when token j's value is zeroed (Mohebbi et "
            "al. 2023)", lambda m, n: _value_zeroing_pairs(m, n) + _rollout_pairs(m, n), 0.6),
    _mixing("alti", 140, "L1 proximity of T_i(x_j) to the block output, rolled out to the inputs (ALTI, Ferrando et "
            "al. 2022)", lambda m, n: _residual_ln_pairs(m, n) + 2 * n * n * m.d_model + _rollout_pairs(m, n), 0.3),
    _mixing("attention_flow", 150, "max-flow of residual attention from [CLS] to each input (Abnar & Zuidema 2020)",
            _flow_pairs, 0.3),
)
