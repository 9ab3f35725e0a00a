"""Leave-one-out of the inputs (a token deleted) and of the representations (a key masked in one layer)."""

from __future__ import annotations

from ..cost import Cost, chunks, forward_flops
from ..registry import Measure, declare


def _loo(ctx, settings, state):
    from ..attribution import LeaveOneOut

    return LeaveOneOut()(ctx)


def _repr_loo(ctx, settings, state):
    from ..attribution import RepresentationLeaveOneOut

    return RepresentationLeaveOneOut()(ctx)


def loo_cost(shape, model, config, measures) -> Cost:
    lengths = [t - 1 for t, c in zip(shape.lengths, shape.n_content) for _ in range(c)]
    return Cost(forward_flops(model, lengths), chunks(len(lengths), shape.length, config.max_tokens))


def repr_loo_cost(shape, model, config, measures) -> Cost:
    variants = sum(shape.n_content)
    layers = sum(model.n_layers - l for l in range(model.n_layers))
    calls = model.n_layers * chunks(variants, shape.length, config.max_tokens)
    return Cost(variants * model.layer_flops(1, shape.length) * layers, calls)


declare(
    Measure("loo", "input", "paper", "|y_hat - y_hat(x without token i)|: what deleting each token changes",
            order=40, cost=loo_cost, compute=_loo),
    Measure("repr_loo", "representation", "paper",
            "|y_hat - y_hat(key i masked in layer l)|: what hiding one representation from one layer changes",
            order=60, cost=repr_loo_cost, compute=_repr_loo),
)
