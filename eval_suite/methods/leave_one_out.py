"""Leave-one-out of the inputs (a token deleted) and of the representations (a key masked in one layer)."""

from __future__ import annotations

from ..cost import Cost, chunks, forward_flops
from ..registry import Measure, declare


def _loo(ctx, settings, state):
    from ..attribution import LeaveOneOut
    from ..position_sample import measured_positions

    return LeaveOneOut()(ctx, measured_positions(ctx, settings, state).positions)


def _repr_loo(ctx, settings, state):
    from ..attribution import RepresentationLeaveOneOut
    from ..position_sample import measured_positions

    return RepresentationLeaveOneOut()(ctx, measured_positions(ctx, settings, state).positions)


def loo_cost(shape, model, config, measures) -> Cost:
    from ..position_sample import measured_count

    lengths = [t - 1 for t, c in zip(shape.lengths, shape.n_content) for _ in range(measured_count(config, c))]
    return Cost(forward_flops(model, lengths), chunks(len(lengths), shape.length, config.max_tokens))


def repr_loo_cost(shape, model, config, measures) -> Cost:
    """Per layer l, one pass through the layers l..n-1 per measured position, each at its own example's length."""
    from ..position_sample import measured_count

    counts = [measured_count(config, c) for c in shape.n_content]
    layers = sum(model.n_layers - l for l in range(model.n_layers))
    flops = sum(k * model.layer_flops(1, t) for k, t in zip(counts, shape.lengths)) * layers
    calls = model.n_layers * chunks(sum(counts), shape.length, config.max_tokens)
    return Cost(flops, calls)


declare(
    Measure("loo", "input", "paper", "|y_hat - y_hat(x without token i)|: what deleting each token changes",
            order=40, cost=loo_cost, compute=_loo, sampled_positions=True),
    Measure("repr_loo", "representation", "paper",
            "|y_hat - y_hat(key i masked in layer l)|: what hiding one representation from one layer changes",
            order=60, cost=repr_loo_cost, compute=_repr_loo, sampled_positions=True),
)
