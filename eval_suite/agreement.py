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
    null: bool = False  # the chance level the headline subtracts
    scale: str = "diverging"  # "diverging" (centred on 0) or "sequential"
    domain: tuple | None = (-1.0, 1.0)  # colour range; None: symmetric around 0 from the data


def _tau_b_forms(comparison, done):
    """Every tau-b form at once (raw, on support, on union, null), read from the pass's one shared computation
    (:meth:`AgreementPass.tau_b_forms`)."""
    return comparison.tau_b_forms()


def _excess_over_null(comparison, done):
    return done[RAW] - done[NULL]


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
                    "tau-b expected from the structure-preserving null alone.", pooled=True, grid=True, null=True),
    AgreementMetric("kendall_tau_b_excess", _excess_over_null, "tau-b excess over the null",
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
NULL = next(m.name for m in AGREEMENT_METRICS if m.null)  # what the headline subtracts


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
    mask [B, L]. :meth:`add` registers a comparison, :meth:`rows` computes them all.

    With a ``sample`` (:class:`eval_suite.position_sample.PositionSample` of a run that samples long documents), the
    ``sampled`` methods (indices into the stack) are measured at its positions only: their comparisons over content
    tokens count the sampled positions (``masks["sampled"]``), and each such row gets ``<row>_se``, the delete-one
    jackknife standard error over the sampled positions with the finite-population correction,
    sqrt((1 - k / N) (k - 1) / k sum_i (v_(-i) - mean_i v_(-i))^2) over the k deletions that leave the metric
    defined (0 for a document measured at every position and for the methods measured everywhere; NaN when fewer
    than two deletions are defined).
    """

    def __init__(self, importance, masks: dict, sampled=(), sample=None):
        self.importance = importance
        self.masks = dict(masks)
        self.sampled = tuple(sampled) if sample is not None and sample.active else ()
        self.sample = sample
        if self.sampled:
            self.masks["sampled"] = self.masks["content"] & sample.positions
        self._added: list[tuple[str, list, int, bool]] = []  # prefix, [(comparison, columns)], methods, per head
        self._forms: dict | None = None
        self._offsets: dict = {}

    def add(self, prefix: str, source, view: str, methods=None) -> None:
        """Compare ``source`` [B, n, H, L] (or [B, n, L]: one vector per layer, rows [B, n, M]) with the importance
        methods ``methods`` (indices into the stack; None: all) over the positions of ``masks[view]``: rows
        ``prefix.<metric>``."""
        per_head = source.dim() == 4
        source = source if per_head else source[:, :, None]
        methods = tuple(range(self.importance.shape[2])) if methods is None else tuple(methods)
        on_sample = [k for k, m in enumerate(methods) if m in self.sampled] if view == "content" else []
        parts = [(view, [k for k in range(len(methods)) if k not in on_sample]), ("sampled", on_sample)]
        comparisons = []
        for part_view, columns in parts:
            if columns:
                chosen = tuple(methods[k] for k in columns)
                whole = chosen == tuple(range(self.importance.shape[2]))
                importance = self.importance if whole else self.importance[:, :, list(chosen)]
                comparisons.append((Comparison(prefix, source, importance, self.masks[part_view][:, None, :],
                                               part_view, None if whole else chosen, self), columns))
        self._added.append((prefix, comparisons, len(methods), per_head))
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

        sources, self._offsets, first, views = [], {}, 0, {}
        for _, comparisons, _, _ in self._added:
            for comparison, _ in comparisons:
                views[comparison.view] = comparison.mask
                if id(comparison.source) not in self._offsets:
                    self._offsets[id(comparison.source)] = (first, comparison.source.shape[2])
                    sources.append(comparison.source.double())
                    first += comparison.source.shape[2]
        return kendall_tau_b_forms_by_view(torch.cat(sources, dim=2), self.importance, views)

    def rows(self) -> dict:
        """``prefix.<metric>`` -> [B, n, H, M] (or [B, n, M]) for every comparison and every metric (and
        ``prefix.<metric>_se`` for the comparisons with sampled methods)."""
        out = {}
        for prefix, comparisons, n_methods, per_head in self._added:
            values = [_metric_values(comparison) for comparison, _ in comparisons]
            errors = [_jackknife_errors(comparison, self.sample) if comparison.view == "sampled" else None
                      for comparison, _ in comparisons]
            for name in METRIC_NAMES:
                out[f"{prefix}.{name}"] = _columns([v[name] for v in values], comparisons, n_methods, per_head)
                if any(e is not None for e in errors):
                    out[f"{prefix}.{name}_se"] = _columns(
                        [e[name] if e is not None else _zeros_like(v[name]) for v, e in zip(values, errors)],
                        comparisons, n_methods, per_head)
        return out


def _zeros_like(value):
    import torch

    return torch.zeros_like(value)


def _metric_values(comparison: Comparison) -> dict:
    """Every metric of one comparison, each declaration's ``compute`` in order."""
    done: dict = {}
    for metric in AGREEMENT_METRICS:
        if metric.compute is not None:
            value = metric.compute(comparison, done)
            done.update(value if isinstance(value, dict) else {metric.name: value})
    return done


def _columns(parts: list, comparisons: list, n_methods: int, per_head: bool):
    """The parts' method columns put back in the comparison's order (one part: itself)."""
    import torch

    if len(parts) == 1 and list(comparisons[0][1]) == list(range(n_methods)):
        value = parts[0]
    else:
        value = torch.empty(*parts[0].shape[:-1], n_methods, dtype=parts[0].dtype, device=parts[0].device)
        for part, (_, columns) in zip(parts, comparisons):
            value[..., columns] = part
    return value if per_head else value[:, :, 0]


def _jackknife_errors(comparison: Comparison, sample) -> dict:
    """Delete-one jackknife standard error of every metric of a comparison over sampled positions (class docstring
    of :class:`AgreementPass`), [B, n, H, M] each: the comparison recomputed with each sampled position left out in
    turn, all deletions of all sampled documents in one pass over their compacted positions."""
    import torch

    B, n, H, L = comparison.source.shape
    M = comparison.importance.shape[2]
    errors = {name: torch.zeros(B, n, H, M, dtype=torch.float64, device=comparison.source.device)
              for name in METRIC_NAMES}
    docs = torch.nonzero(sample.sampled).squeeze(-1)
    if docs.numel() == 0:
        return errors
    kept = comparison.mask[docs, 0]  # [D, L]
    counts = kept.sum(dim=-1)
    K = int(counts.max())
    order = torch.sort((~kept).to(torch.int8), dim=-1, stable=True).indices[:, :K]  # the sampled positions first
    valid = torch.arange(K, device=kept.device)[None, :] < counts[:, None]  # [D, K]
    x = comparison.source[docs].gather(-1, order[:, None, None, :].expand(-1, n, H, K)).double()
    y = comparison.importance[docs].gather(-1, order[:, None, None, :].expand(-1, n, M, K)).double()
    left_out = valid[None] & ~torch.eye(K, dtype=torch.bool, device=kept.device)[:, None, :]  # [K(i), D, K]
    deletions = AgreementPass(y.repeat(K, 1, 1, 1), {"content": left_out.reshape(K * len(docs), K)})
    deletions.add("jackknife", x.repeat(K, 1, 1, 1), "content")
    rows = deletions.rows()
    population = sample.population[docs].to(torch.float64)[:, None, None, None]
    for name in METRIC_NAMES:
        v = rows[f"jackknife.{name}"].reshape(K, len(docs), n, H, M)
        # a deletion that leaves the metric undefined (e.g. attention constant on the rest) is left out
        counted = valid.T[:, :, None, None, None] & torch.isfinite(v)
        v = torch.where(counted, v, 0.0)
        k = counted.sum(dim=0).to(torch.float64)
        mean = v.sum(dim=0) / k.clamp_min(1.0)
        spread = torch.where(counted, (v - mean) ** 2, 0.0).sum(dim=0)
        correction = (1 - counts.to(torch.float64)[:, None, None, None] / population).clamp_min(0.0)
        se = torch.sqrt(correction * (k - 1) / k.clamp_min(1.0) * spread)
        errors[name][docs] = torch.where(k >= 2, se, float("nan"))
    return errors


def compare_rows(source, importance, mask, prefix: str, out: dict) -> None:
    """Every agreement metric between ``source`` [B, n, H, L] and ``importance`` [B, n, M, L] ->
    ``out[prefix.metric]`` [B, n, H, M]; ``mask`` [B, L] marks the positions compared (one comparison alone: a
    batch registers all of its comparisons with one :class:`AgreementPass`)."""
    agreement = AgreementPass(importance, {"content": mask})
    agreement.add(prefix, source, "content")
    out.update(agreement.rows())
