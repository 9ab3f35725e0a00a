"""Gradient importance from the base pass's one backward pass: of the inputs and of every layer's representations."""

from __future__ import annotations

from ..registry import Measure, declare


def _grad_norm(ctx, settings, state):
    from ..attribution import GradientNorm

    return GradientNorm()(ctx)


def _grad_x_input(ctx, settings, state):
    from ..attribution import GradientXInput

    return GradientXInput()(ctx)


def _repr_grad_norm(ctx, settings, state):
    from ..attribution import RepresentationGradientNorm

    return RepresentationGradientNorm()(ctx)


declare(
    Measure("grad_norm", "input", "quick", "||d y_hat / d x_i||: how sensitive the prediction is to each input",
            order=10, stage="base", compute=_grad_norm, needs_graph=True, uses_gradients=True, all_positions=True),
    Measure("grad_x_input", "input", "quick", "|x_i . d y_hat / d x_i|: first-order contribution of each input",
            order=20, stage="base", compute=_grad_x_input, needs_graph=True, uses_gradients=True,
            all_positions=True),
    Measure("repr_grad_norm", "representation", "quick",
            "||d y_hat / d h^(l)_i||: sensitivity to the representations each layer attends over",
            order=50, stage="base", compute=_repr_grad_norm, needs_graph=True, uses_gradients=True,
            all_positions=True),
)
