"""The agreement metrics between a source (attention, a map, a context-mixing view) and an importance method: one
:class:`AgreementMetric` declaration each, in :data:`AGREEMENT_METRICS`.

Each declares its function, whether it is pooled over heads and layers (per_layer, summary), whether the report's
grid and the paired tests of ``compare`` show it, its label, help text, colour scale and range, and whether it is
the headline. The per-example rows, the aggregation, the grid, ``compare``, the cards and the study read this one
list; the metric functions themselves are in :mod:`eval_suite.metrics`. Swapping a metric's computation is a change
of its ``compute`` here.

A ``compute`` takes ``(comparison, done)``: a :class:`Comparison` (``source`` [B, n, H, L], ``importance``
[B, n, M, L], ``mask`` [B, 1, L], and ``tau_b_forms()``) and the metrics computed before it; it returns
[B, n, H, M], or a dict of several metrics' values (one call can give several, as support coverage and the tau-b
forms do).

Every comparison of a batch is registered with one :class:`AgreementPass` first, then computed: the tau-b forms of
all of them come from ONE call of :func:`eval_suite.metrics.tau_b_forms.kendall_tau_b_forms_by_view`, so each
source vector's and each importance vector's ranks and pair signs are computed once per batch and shared by every
comparison, method and position set they take part in (attention against the methods over content tokens and over
all positions, the maps and the context-mixing views against the same methods).
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


def _tau_b_forms(comparison, done):
    """Every tau-b form at once (raw, on support, on union, null, excess), read from the pass's one shared
    computation (:meth:`AgreementPass.tau_b_forms`)."""
    return comparison.tau_b_forms()


def _pairwise(function):
    """A metric of one source vector against one importance vector, broadcast over [.., H, 1, L] x [.., 1, M, L]."""
    def compute(comparison, done):
        from . import metrics as M

        return getattr(M, function)(comparison.source[:, :, :, None, :], comparison.importance[:, :, None, :, :],
                                    comparison.mask[:, :, None, None, :])
    return compute


AGREEMENT_METRICS: tuple[AgreementMetric, ...] = (
    AgreementMetric("kendall_tau_b", _tau_b_forms, "tau-b (raw)",
                    "Kendall tau-b between the head's attention and the importance method's ranking of content "
                    "tokens.", pooled=True, grid=True, paired=True),
    AgreementMetric("kendall_tau_b_on_support", None, "tau-b on the attention support",
                    "tau-b restricted to the tokens the head gives non-zero attention.", pooled=True, grid=True,
                    paired=True),
    AgreementMetric("kendall_tau_b_on_union", None, "tau-b on the union of supports",
                    "tau-b over the tokens with non-zero attention or non-zero importance.", pooled=True, grid=True),
    AgreementMetric("kendall_tau_b_null", None, "tau-b of the null",
                    "tau-b expected from the structure-preserving null alone.", pooled=True, grid=True),
    AgreementMetric("kendall_tau_b_excess", None, "tau-b excess over the null",
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


def grid_metrics() -> list[AgreementMetric]:
    """The metrics the report's grid offers, the headline first."""
    shown = [m for m in AGREEMENT_METRICS if m.grid]
    return sorted(shown, key=lambda m: not m.headline)


@dataclass
class Comparison:
    """One source compared with some of the pass's importance methods over one of its position sets."""

    prefix: str
    source: object  # [B, n, H, L]
    importance: object  # [B, n, M, L], the methods compared
    mask: object  # [B, 1, L], the positions compared
    view: str  # the name of that position set in the pass
    methods: tuple | None  # indices of the methods compared in the pass's stack (None: all)
    agreement: "AgreementPass"

    def tau_b_forms(self) -> dict:
        """Every tau-b form of this comparison, [B, n, H, M] each (:data:`eval_suite.metrics.tau_b_forms.FORMS`)."""
        return self.agreement.tau_b_forms(self)


class AgreementPass:
    """Every agreement metric of every comparison of one batch against one stack of importance vectors.

    ``importance`` [B, n, M, L] holds every method any comparison reads; ``masks`` maps a position set's name to its
    mask [B, L]. :meth:`add` registers a comparison, :meth:`rows` computes them all."""

    def __init__(self, importance, masks: dict):
        self.importance = importance
        self.masks = masks
        self._added: list[tuple[Comparison, bool]] = []
        self._forms: dict | None = None
        self._offsets: dict = {}

    def add(self, prefix: str, source, view: str, methods=None) -> None:
        """Compare ``source`` [B, n, H, L] (or [B, n, L]: one vector per layer, rows [B, n, M]) with the importance
        methods ``methods`` (indices into the stack; None: all) over the positions of ``masks[view]``: rows
        ``prefix.<metric>``."""
        per_head = source.dim() == 4
        methods = None if methods is None else tuple(methods)
        importance = self.importance if methods is None else self.importance[:, :, list(methods)]
        comparison = Comparison(prefix, source if per_head else source[:, :, None], importance,
                                self.masks[view][:, None, :], view, methods, self)
        self._added.append((comparison, per_head))
        self._forms = None

    def tau_b_forms(self, comparison: Comparison) -> dict:
        if self._forms is None:
            self._forms = self._all_tau_b_forms()
        first, size = self._offsets[id(comparison.source)]
        out = {}
        for form, value in self._forms[comparison.view].items():
            value = value[:, :, first:first + size]
            out[form] = value if comparison.methods is None else value[..., list(comparison.methods)]
        return out

    def _all_tau_b_forms(self) -> dict:
        """One call for every comparison: the distinct sources stacked on the head axis, every method, every
        position set used (each (source, method, set) value depends on that pair alone, so the slices are the values
        of the separate calls)."""
        import torch

        from .metrics.tau_b_forms import kendall_tau_b_forms_by_view

        sources, self._offsets, first = [], {}, 0
        for comparison, _ in self._added:
            if id(comparison.source) not in self._offsets:
                self._offsets[id(comparison.source)] = (first, comparison.source.shape[2])
                sources.append(comparison.source.double())
                first += comparison.source.shape[2]
        views = {c.view: c.mask for c, _ in self._added}
        return kendall_tau_b_forms_by_view(torch.cat(sources, dim=2), self.importance, views)

    def rows(self) -> dict:
        """``prefix.<metric>`` -> [B, n, H, M] (or [B, n, M]) for every comparison and every metric."""
        out = {}
        for comparison, per_head in self._added:
            done: dict = {}
            for metric in AGREEMENT_METRICS:
                if metric.compute is None:
                    continue
                value = metric.compute(comparison, done)
                done.update(value if isinstance(value, dict) else {metric.name: value})
            for metric in AGREEMENT_METRICS:
                value = done[metric.name]
                out[f"{comparison.prefix}.{metric.name}"] = value if per_head else value[:, :, 0]
        return out


def compare_rows(source, importance, mask, prefix: str, out: dict) -> None:
    """Every agreement metric between ``source`` [B, n, H, L] and ``importance`` [B, n, M, L] ->
    ``out[prefix.metric]`` [B, n, H, M]; ``mask`` [B, L] marks the positions compared (one comparison alone: a
    batch registers all of its comparisons with one :class:`AgreementPass`)."""
    agreement = AgreementPass(importance, {"mask": mask})
    agreement.add(prefix, source, "mask")
    out.update(agreement.rows())
