"""Integrated gradients from a [PAD] (or zero) baseline, with the completeness gap of every example."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..cost import Cost, chunks, forward_flops
from ..errors import EvalError
from ..registry import Computed, Diagnostics, Measure, declare

GAP_WARNING = 0.05


def _tolerance(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--ig-tolerance takes a number or 'none', got {text!r}") from None


@dataclass
class IntegratedGradientsParams:
    ig_steps: int = field(default=16, metadata={"help": "Gauss-Legendre nodes to start with"})
    ig_baseline: str = field(default="pad", metadata={
        "help": "baseline of the content tokens: the [PAD] embedding or zeros", "choices": ("pad", "zero")})
    ig_tolerance: float | None = field(default=0.05, metadata={
        "help": "double an example's steps while its completeness gap exceeds this ('none': fixed --ig-steps)",
        "parse": _tolerance})
    ig_max_steps: int = field(default=128, metadata={"help": "most steps per example"})

    def validate(self) -> None:
        if self.ig_steps < 1 or self.ig_max_steps < self.ig_steps:
            raise EvalError(f"--ig-steps must be >= 1 and --ig-max-steps >= --ig-steps, got {self.ig_steps} and "
                            f"{self.ig_max_steps}")
        if self.ig_tolerance is not None and not (self.ig_tolerance > 0 and math.isfinite(self.ig_tolerance)):
            raise EvalError(f"--ig-tolerance must be a positive number (or 'none'), got {self.ig_tolerance}")
        if self.ig_baseline not in ("pad", "zero"):
            raise EvalError(f"--ig-baseline must be 'pad' or 'zero', got {self.ig_baseline!r}")


def _compute(ctx, settings, state):
    from ..attribution import IntegratedGradients

    p = settings.params_of("integrated_gradients")
    signed, gap, steps = IntegratedGradients(p.ig_steps, p.ig_baseline, p.ig_tolerance, p.ig_max_steps).attribute(ctx)
    return Computed(signed.abs(), {"completeness_gap": gap, "steps": steps})


def integrated_gradients_cost(shape, model, config, measures) -> Cost:
    steps = config.params_of("integrated_gradients").ig_steps
    flops = 3 * steps * forward_flops(model, shape.lengths) + forward_flops(model, [shape.length] * shape.size)
    return Cost(flops, 3 * chunks(shape.size * steps, shape.length, config.max_grad_tokens) + 1)


def _summarise(rows: dict) -> dict:
    import numpy as np

    from ..statistics import finite_or_none, percentiles

    gap = rows["completeness_gap"].astype(np.float64)
    steps = rows["steps"]
    finite = gap[np.isfinite(gap)]
    spread = percentiles(gap)
    return {
        "completeness_gap": {"median": spread["median"], "p90": spread["p90"], "max": spread["max"],
                             "share_above_5_percent": finite_or_none((finite > GAP_WARNING).mean()) if finite.size
                             else None, "n": spread["n"]},
        "steps": {"median": finite_or_none(np.median(steps)), "max": int(steps.max())},
        "definition": "|sum of signed attributions - (y_hat(x) - y_hat(baseline))| / max(|y_hat(x) - "
                      "y_hat(baseline)|, 0.01), per example",
    }


def _text(block: dict) -> str:
    from ..statistics import format_stat

    return f"integrated gradients: median completeness gap {format_stat({'mean': block['completeness_gap']['median']})}"


def _card(block: dict):
    median = block["completeness_gap"]["median"]
    return None if median is None else ("Integrated gradients: median completeness gap", f"{100 * median:.1f}%",
                                        "how far the attributions miss summing to the prediction change "
                                        "(quadrature error)")


def _warning(block: dict) -> str | None:
    median = block["completeness_gap"]["median"]
    if median is not None and median > GAP_WARNING:
        return (f"integrated gradients: median completeness gap {median:.1%} (> 5%); raise --ig-steps or "
                "--ig-max-steps")
    return None


declare(Measure(
    "integrated_gradients", "input", "full", "path-integrated gradient from a [PAD] baseline, with its completeness gap",
    order=30, cost=integrated_gradients_cost, compute=_compute, params=IntegratedGradientsParams,
    diagnostics=Diagnostics(rows=("completeness_gap", "steps"), integer_rows=("steps",), summarise=_summarise,
                            text=_text, card=_card, warning=_warning)))
