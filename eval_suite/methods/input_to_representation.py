"""Input-to-representation influence (paper eq. 5) and attention projected onto the inputs through it.

Both read one shared tensor per batch, :data:`EQ5`: ``G[b, l, p, i]`` for the positions each of them needs
(eq. 5's summaries: the content positions or a seeded sample of them; the projection: every position some head
attends to), computed once from the base pass's graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cost import Cost
from ..errors import EvalError
from ..registry import Measure, Shared, declare

MODES = ("norm", "jacobian")


@dataclass
class InputToRepresentationParams:
    input_to_repr: str = field(default="norm", metadata={
        "help": "eq. 5 as the paper ('norm': gradient of ||h_p||) or the Frobenius norm of the Jacobian block "
                "dh_p/dx_i ('jacobian': d_model times the cost)", "choices": MODES})
    input_to_repr_sample: int | None = field(default=None, metadata={
        "help": "estimate eq. 5's per-layer summaries from K seeded content positions per example (with their "
                "standard error) instead of all of them; for long documents", "metavar": "K"})

    def validate(self) -> None:
        if self.input_to_repr not in MODES:
            raise EvalError(f"--input-to-repr must be one of {', '.join(MODES)}, got {self.input_to_repr!r}")
        if self.input_to_repr_sample is not None and self.input_to_repr_sample < 2:
            raise EvalError(f"--input-to-repr-sample must be >= 2 positions per example (a standard error needs two), "
                            f"got {self.input_to_repr_sample}")


@dataclass
class Eq5:
    """The shared eq. 5 rows of a batch, and the sampled positions its summaries rest on (None: every content one)."""

    rows: object  # [B, n_layers, L(p), L(i)]
    sampled: object = None


def _eq5(ctx, settings, state, demands) -> Eq5:
    import torch

    from ..attribution import sample_positions
    from ..forward_context import attention_rows
    from ..input_to_representation import input_to_representation
    from ..position_sample import measured_positions

    p = settings.params_of("input_to_repr")
    content = ctx.batch.content_mask
    n_layers = len(ctx.base.attentions)
    wanted = torch.zeros(ctx.batch.size, n_layers, ctx.batch.length, dtype=torch.bool, device=content.device)
    sample = measured_positions(ctx, settings, state)
    sampled = None
    if "content" in demands:
        if p.input_to_repr_sample:
            sampled = sample_positions(state.indices, content, p.input_to_repr_sample, settings.seed)
        elif sample.active:  # the long documents' shared sample (every content position of the others)
            sampled = sample.positions
        wanted |= (content if sampled is None else sampled)[:, None, :]
    if "attended" in demands:  # the rows a projection multiplies by a non-zero attention weight
        queries = attention_rows(ctx.base.attentions, ctx.batch.attention_mask, settings.attention_query)
        # a sampled document has no projection (it needs every attended row): its rows stay undefined
        wanted |= (queries != 0).any(dim=2) & ~sample.sampled[:, None, None]
    # Only the wanted rows, each example at its own length where a layout saves work (length buckets or one row
    # per wanted (example, position)): an example without a position never pays for it.
    return Eq5(input_to_representation(ctx, wanted, mode=p.input_to_repr), sampled)


def _eq5_cost(shape, model, config, demands) -> Cost:
    """One backward pass per (layer, position) through the layers below, batched over the examples."""
    from ..position_sample import measured_count

    p = config.params_of("input_to_repr")
    if "attended" in demands:
        positions = shape.length
    elif p.input_to_repr_sample:
        positions = min(p.input_to_repr_sample, max(shape.n_content))
    else:
        positions = max(measured_count(config, c) for c in shape.n_content)
    per_layer = model.layer_flops(shape.size, shape.length)
    layers = sum(range(model.n_layers))  # layer l's representations lie l layers above the embeddings
    flops = 2 * positions * per_layer * layers * _layout_share(shape, model, positions)
    calls = positions * (2 * layers / model.n_layers + 0.1 * model.n_layers)
    if p.input_to_repr == "jacobian":
        flops, calls = flops * model.d_model, calls * model.d_model
    return Cost(flops, calls)


def _layout_share(shape, model, positions: int) -> float:
    """The share of the per-position loop's work that the layout ``input_to_representation`` picks is forecast to
    need on a batch of these lengths (length buckets or replicated rows save the padding of ragged batches)."""
    import torch

    from ..input_to_representation import forecast_work

    lengths = torch.tensor(shape.lengths)
    mask = (torch.arange(shape.length)[None, :] < lengths[:, None]).long()
    counts = torch.tensor([min(positions, n) for n in shape.n_content])
    wanted = (torch.arange(shape.length)[None, :] < counts[:, None])[:, None, :].expand(-1, model.n_layers, -1)
    work = forecast_work(mask, wanted)
    return min(work.values()) / work["per_position"] if work["per_position"] > 0 else 1.0


EQ5 = Shared("input_to_repr", _eq5, _eq5_cost, label="eq. 5", needs_graph=True)


def _rows(ctx, settings, state, out: dict) -> None:
    """Eq. 5 restricted to content inputs i, summarised over content positions p (or a sample of them)."""
    import torch

    from .. import metrics as M

    eq5 = state.shared[EQ5.name]
    content = ctx.batch.content_mask
    g = M.normalise(eq5.rows.double(), content[:, None, None, :])  # [B, n, L(p), L(i)]
    entropy_p = M.normalised_entropy(g, content[:, None, None, :])  # [B, n, L]
    share_p = torch.diagonal(g, dim1=-2, dim2=-1)  # [B, n, L]
    positions = content if eq5.sampled is None else eq5.sampled
    weights = positions[:, None, :].double()
    denominator = weights.sum(dim=-1)
    for key, values in (("entropy", entropy_p), ("coindexed_share", share_p)):
        out[f"input_to_repr.{key}"] = torch.nansum(values * weights, dim=-1) / denominator
        if eq5.sampled is not None:
            out[f"input_to_repr.{key}_se"] = M.sampled_mean_standard_error(
                torch.nan_to_num(values, nan=0.0), weights, content.sum(dim=-1)[:, None].double())
    if eq5.sampled is not None:
        out["input_to_repr.positions"] = denominator


def _sampling(agg, layer_select) -> dict | None:
    """The eq. 5 estimator's own error when its summaries come from sampled positions: the standard error of the
    mean over examples that position sampling alone adds, sqrt(sum of per-example squared errors) / n."""
    import numpy as np

    from ..statistics import finite_or_none

    if "input_to_repr.positions" not in agg.rows:
        return None
    out = {"positions_per_example": finite_or_none(np.nanmax(agg.rows["input_to_repr.positions"])),
           "estimator": "mean over a seeded uniform sample of content positions per example (unbiased); "
                        "standard error with the finite-population correction"}
    for key in ("entropy", "coindexed_share"):
        se = agg.rows[f"input_to_repr.{key}_se"][:, layer_select].astype(np.float64)
        values = agg.rows[f"input_to_repr.{key}"][:, layer_select]
        finite = np.isfinite(se) & np.isfinite(values)
        out[f"{key}_standard_error"] = finite_or_none(np.sqrt((se[finite] ** 2).sum()) / finite.sum()) \
            if finite.any() else None
    return out


def _per_layer(agg, layer: int) -> dict:
    out = {"input_to_repr_entropy": agg.stats("input_to_repr.entropy").at(layer),
           "coindexed_share": agg.stats("input_to_repr.coindexed_share").at(layer)}
    sampling = _sampling(agg, [layer])
    if sampling is not None:
        out["input_to_repr_sampling"] = sampling
    return out


def _deep_layers(agg):
    import numpy as np

    deep = np.zeros(agg.n_layers, dtype=bool)
    deep[1:] = True  # layer 0 attends over the embeddings: its input-to-representation entropy is 0 by construction
    return deep


def _summary(agg, results) -> dict:
    deep = _deep_layers(agg)
    out = {"input_to_repr_entropy": agg.pooled("input_to_repr.entropy", deep),
           "coindexed_share": agg.pooled("input_to_repr.coindexed_share", deep),
           "input_to_repr_layers": "layers 1..n-1 (layer 0 attends over the embeddings themselves)"}
    sampling = _sampling(agg, deep)
    if sampling is not None:
        out["input_to_repr_sampling"] = sampling
    return out


def _summary_text(s: dict, results: dict) -> list[str]:
    from ..statistics import format_stat

    sampled = s.get("input_to_repr_sampling")
    note = (f" (estimated from {sampled['positions_per_example']:g} sampled positions per example; sampling "
            f"standard error {format_stat({'mean': sampled['entropy_standard_error']})})" if sampled else "")
    return [f"input-to-representation (layers >= 1): entropy {format_stat(s['input_to_repr_entropy'])}, co-indexed "
            f"share {format_stat(s['coindexed_share'])}{note}"]


def _projected(ctx, settings, state):
    from ..attribution import ProjectedAttention
    from ..position_sample import measured_positions

    projected = ProjectedAttention(settings.attention_query)(ctx, state.shared[EQ5.name].rows)
    projected[measured_positions(ctx, settings, state).sampled] = float("nan")  # needs every row: undefined
    return projected


def projected_cost(shape, model, config, measures) -> Cost:
    return Cost(2 * shape.size * model.n_layers * model.n_heads * shape.length ** 2, 1)


def _projected_left_out(settings) -> str | None:
    if settings.params_of("input_to_repr").input_to_repr_sample:
        # A projection needs every attended row of eq. 5, which sampling is there to avoid.
        return "needs every attended row of eq. 5, not a sample (--input-to-repr-sample); name it in --measures to add it"
    return None


declare(
    Measure("input_to_repr", "summary", "paper",
            "eq. 5: how many inputs each representation mixes (entropy, co-indexed share)", order=80,
            params=InputToRepresentationParams, uses=((EQ5, "content"),), rows=_rows, per_layer=_per_layer,
            summary=_summary, summary_text=_summary_text, sampled_positions=True),
    Measure("projected", "map", "paper", "attention projected onto the inputs through eq. 5", order=90,
            cost=projected_cost, compute=_projected, uses=((EQ5, "attended"),), left_out=_projected_left_out,
            token_heads=True,
            token_map=lambda values, ranking, n_layers: (f"projected layer {n_layers - 1} (head mean)",
                                                         values[:, n_layers - 1].mean(dim=1))),
)
