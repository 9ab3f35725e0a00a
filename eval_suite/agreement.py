"""The agreement metrics between a source (attention, a map, a context-mixing view) and an importance method: one
:class:`AgreementMetric` declaration each, in :data:`AGREEMENT_METRICS`.

Each declares its function, whether it is pooled over heads and layers (per_layer, summary), whether the report's
grid and the paired tests of ``compare`` show it, its label, help text, colour scale and range, and whether it is
the headline. The per-example rows, the aggregation, the grid, ``compare``, the cards and the study read this one
list; the metric functions themselves are in :mod:`eval_suite.metrics`. Swapping a metric's computation is a change
of its ``compute`` here.

A ``compute`` takes ``(source [B, n, H, L], importance [B, n, M, L], mask [B, 1, L], done)`` and returns
``[B, n, H, M]``, or a dict of several metrics' values (one call can give several, as support coverage does);
``done`` holds the metrics computed before it (the excess reads the raw tau-b and the null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class AgreementMetric:
    name: str
    compute: Callable | None  # None: its value comes from the dict another metric's compute returns
    label: str
    help: str
    pooled: bool = False  # pooled per layer and over the model (per_layer agreement, summary)
    grid: bool = False  # a layer x head grid in report.html
    paired: bool = False  # tested per head and layer by compare
    headline: bool = False  # the figure summaries, cards and the study lead with
    scale: str = "diverging"  # "diverging" (centred on 0) or "sequential"
    domain: tuple | None = (-1.0, 1.0)  # colour range; None: symmetric around 0 from the data


def _cross_tau(on_support: bool = False):
    def compute(source, importance, mask, done):
        from . import metrics as M

        return M.kendall_tau_b_cross(source, importance, mask, on_support=on_support)
    return compute


def _on_union(source, importance, mask, done):
    from . import metrics as M

    return M.kendall_tau_b_on_union_cross(source, importance, mask)


def _null(source, importance, mask, done):
    from . import metrics as M

    return M.kendall_tau_b_null_cross(source, importance, mask)


def _excess(source, importance, mask, done):
    return done["kendall_tau_b"] - done["kendall_tau_b_null"]


def _pairwise(function):
    """A metric of one source vector against one importance vector, broadcast over [.., H, 1, L] x [.., 1, M, L]."""
    def compute(source, importance, mask, done):
        from . import metrics as M

        return getattr(M, function)(source[:, :, :, None, :], importance[:, :, None, :, :], mask[:, :, None, None, :])
    return compute


AGREEMENT_METRICS: tuple[AgreementMetric, ...] = (
    AgreementMetric("kendall_tau_b", _cross_tau(), "tau-b (raw)",
                    "Kendall tau-b between the head's attention and the importance method's ranking of content "
                    "tokens.", pooled=True, grid=True, paired=True),
    AgreementMetric("kendall_tau_b_on_support", _cross_tau(on_support=True), "tau-b on the attention support",
                    "tau-b restricted to the tokens the head gives non-zero attention.", pooled=True, grid=True,
                    paired=True),
    AgreementMetric("kendall_tau_b_on_union", _on_union, "tau-b on the union of supports",
                    "tau-b over the tokens with non-zero attention or non-zero importance.", pooled=True, grid=True),
    AgreementMetric("kendall_tau_b_null", _null, "tau-b of the null",
                    "tau-b expected from the structure-preserving null alone.", pooled=True, grid=True),
    AgreementMetric("kendall_tau_b_excess", _excess, "tau-b excess over the null",
                    "Kendall tau-b between attention and importance minus the tau-b of the structure-preserving "
                    "null: 0 means no more agreement than chance with the same structure.", pooled=True, grid=True,
                    paired=True, headline=True, domain=None),
    AgreementMetric("jensen_shannon", _pairwise("jensen_shannon"), "Jensen-Shannon divergence",
                    "Jensen-Shannon divergence (base 2, in [0, 1]) between attention and importance over content "
                    "tokens.", pooled=True, grid=True, paired=True, scale="sequential", domain=(0.0, 1.0)),
    AgreementMetric("support_mass", _pairwise("support_coverage"), "importance mass on attention's support",
                    "Share of the importance mass on the tokens the head attends to.", scale="sequential",
                    domain=(0.0, 1.0)),
    AgreementMetric("topk_mass", None, "importance mass on its top k",
                    "Importance mass on as many top-importance tokens as attention's support holds.",
                    scale="sequential", domain=(0.0, 1.0)),
    AgreementMetric("support_coverage", None, "support coverage",
                    "support mass / top-k mass: 1 when attention's support is the best set of its size.",
                    scale="sequential", domain=(0.0, 1.0)),
)

METRIC_NAMES = tuple(m.name for m in AGREEMENT_METRICS)
POOLED = tuple(m.name for m in AGREEMENT_METRICS if m.pooled)
PAIRED = tuple(m.name for m in AGREEMENT_METRICS if m.paired)
HEADLINE = next(m.name for m in AGREEMENT_METRICS if m.headline)
RAW = AGREEMENT_METRICS[0].name  # the figure shown beside the headline: the same rank agreement before the null
NULL = next(m.name for m in AGREEMENT_METRICS if m.compute is _null)  # what the headline subtracts


def grid_metrics() -> list[AgreementMetric]:
    """The metrics the report's grid offers, the headline first."""
    shown = [m for m in AGREEMENT_METRICS if m.grid]
    return sorted(shown, key=lambda m: not m.headline)


def compare_rows(source, importance, mask, prefix: str, out: dict) -> None:
    """Every agreement metric between ``source`` [B, n, H, L] and ``importance`` [B, n, M, L] ->
    ``out[prefix.metric]`` [B, n, H, M]; ``mask`` [B, L] marks the positions compared."""
    mask = mask[:, None, :]
    done: dict = {}
    for metric in AGREEMENT_METRICS:
        if metric.compute is None:
            continue
        value = metric.compute(source, importance, mask, done)
        done.update(value if isinstance(value, dict) else {metric.name: value})
    for metric in AGREEMENT_METRICS:
        out[f"{prefix}.{metric.name}"] = done[metric.name]
