"""Paper eq. 5 (input-to-representation influence) with the vector-Jacobian products of many positions per call.

G[b, l, p, i] = ||d ||h^(l)_p||_2 / d x_i||_2, normalised over the inputs i (Meister et al. 2021, eq. 5): one
vector-Jacobian product (VJP) per (example, layer, position p). :class:`eval_suite.attribution.InputToRepresentation`
runs them as one backward pass per (layer, p-th wanted position) over the whole padded batch: every example pays for
every p up to the batch's largest count, at the batch's padded length.

:func:`input_to_representation_replicated` instead lays the wanted (example, position) pairs out as rows of a
replicated batch: row r is a copy of example b_r, cut to its own length, and carries one cotangent, the unit vector
h / ||h|| at its position p_r. One forward pass of a chunk of rows (with its graph) then serves every layer: the VJP
of layer l for all rows of the chunk is ONE backward call from sum_r ||h^(l)_{p_r}|| (the rows are independent, so
row r's gradient is exactly its own VJP). Rows are grouped by length, so short examples never run at a long one's
length, and an example that lacks position p has no row for it. A batch needs (chunks) x (1 + layers) calls instead
of layers x (largest count of wanted positions).

The price is the forward pass of every row. A backward pass w.r.t. the inputs only, through l layers, costs about
l / 1.5 layers of forward (measured on MiniLM with entmax15), so per row the replicated layout does about
1.5 n + sum_l l layer-units of work against sum_l l for the per-position loop (n = 6: 24 against 15).

:func:`input_to_representation_length_buckets` keeps the per-position loop and removes most of its waste instead:
the batch's examples are grouped by length and count of wanted positions (the grouping that minimises the forecast
work, by dynamic programming over the cut points of the sorted examples) and each group runs the loop at its own
length, after a forward pass of its own (1.5 n layer-units per token, once, not per position).

:func:`input_to_representation` picks the strategy with the least forecast work (:func:`forecast_work`). Measured
on MiniLM (bench/agreement.py): on a runner batch of MR sentences, length buckets 1.8x and the replicated batch
1.7x faster than the loop; on documents of similar lengths (nothing to save) the loop, which ``auto`` keeps.

Sampling (long documents): :func:`sampled_position_summaries` turns the rows of a seeded sample of K content
positions per document (:func:`eval_suite.attribution.sample_positions`) into the per-layer means of eq. 5's
entropy and co-indexed share with their standard errors under sampling without replacement,
sqrt((1 - n / N) s^2 / n) (the finite-population correction; 0 when the sample is every position), exactly the
figures ``eval_suite.measure`` computes; with K >= the number of content positions they equal the exact means.

Why hand-written: ``torch.func.vmap`` over ``torch.func.vjp`` (``autograd.grad(is_grads_batched=True)``, the
``vectorize`` option of the per-position class) batches the cotangents without a forward pass per row, but keeps
the padded batch and every example for every p, and in torch 2.13 several backward ops (layer_norm, gelu, softmax)
have no batching rule on CPU and fall back to a per-sample loop: measured 0.9x the loop's time on one MiniLM
document, nothing like the waste removed here. captum computes input gradients of one scalar output per call.
"""

from __future__ import annotations

import math

import torch

from . import metrics as M
from .attribution import ForwardContext, InputToRepresentation
from .batching import TokenBatch, length_sorted_chunks

__all__ = ["forecast_work", "input_to_representation", "input_to_representation_length_buckets",
           "input_to_representation_replicated", "length_buckets", "sampled_position_summaries"]

# A forward pass through a layer costs this many backward passes (w.r.t. the inputs only) through it, per token.
FORWARD_COST = 1.5
# The fixed cost of one forward or backward call, in token-layers of backward work (MiniLM, one thread).
CALL_COST = 120


STRATEGIES = ("per_position", "length_buckets", "replicated")


def input_to_representation(ctx: ForwardContext, positions: torch.Tensor | None = None, *, mode: str = "norm",
                            strategy: str = "auto") -> torch.Tensor:
    """Eq. 5 rows ``[B, n_layers, L(p), L(i)]`` for the positions ``positions[b, l, p]`` (default: every non-padding
    position), equal to ``InputToRepresentation(mode=mode)(ctx, positions)``.

    ``strategy``: ``"per_position"`` (one backward pass per layer and p-th position over the padded batch, on the base
    pass's graph), ``"length_buckets"`` (:func:`input_to_representation_length_buckets`), ``"replicated"``
    (:func:`input_to_representation_replicated`) or ``"auto"``: the one :func:`forecast_work` finds cheapest.
    """
    if strategy not in ("auto", *STRATEGIES):
        raise ValueError(f"strategy must be 'auto' or one of {STRATEGIES}, got {strategy!r}")
    wanted = _wanted(ctx, positions)
    if strategy == "auto":
        work = forecast_work(ctx.batch.attention_mask, wanted, ctx.max_grad_tokens)
        strategy = min(STRATEGIES, key=work.get)
    if strategy == "per_position":
        return InputToRepresentation(mode=mode)(ctx, wanted)
    if strategy == "length_buckets":
        return input_to_representation_length_buckets(ctx, wanted, mode=mode)
    return input_to_representation_replicated(ctx, wanted, mode=mode)


def forecast_work(attention_mask: torch.Tensor, wanted: torch.Tensor, max_tokens: int = 4096) -> dict[str, float]:
    """Forecast work of each strategy for one batch, in token-layers of an input-gradient backward pass.

    The per-position loop runs, per layer l, one call per p-th wanted position over the padded batch (B x L tokens
    through l layers); length buckets run that loop on groups of examples of similar length and count (each group's
    own forward pass first, :func:`length_buckets`); the replicated layout runs every row at its example's length
    through a forward pass of all n layers and a backward pass per wanted layer. A forward pass through a layer costs
    :data:`FORWARD_COST` backward ones and every call :data:`CALL_COST`, both fitted on MiniLM (entmax15, one thread;
    bench/agreement.py). ``attention_mask`` [B, L], ``wanted`` [B, n_layers, L] bool.
    """
    B, n_layers, L = wanted.shape
    wanted = wanted & attention_mask.bool()[:, None, :]
    depth = _depth(n_layers)
    counts = wanted.sum(dim=2).to(torch.float64)  # [B, n]
    lengths = attention_mask.sum(dim=1).to(torch.float64)
    row_tokens = float((wanted.any(dim=1).sum(dim=1) * lengths).sum())
    needed = counts.sum(dim=0) > 0
    replicated = (row_tokens * (FORWARD_COST * n_layers + float(depth[needed].sum()))
                  + CALL_COST * math.ceil(row_tokens / max(1, max_tokens)) * (1 + int(needed.sum())))
    return {"per_position": _loop_work(counts, L), "length_buckets": length_buckets(attention_mask, wanted)[1],
            "replicated": replicated}


def length_buckets(attention_mask: torch.Tensor, wanted: torch.Tensor) -> tuple[list[list[int]], float]:
    """The grouping of a batch's examples that minimises the forecast work of the per-position loop run per group
    (each group at its own longest length, its calls up to its own largest count of wanted positions, plus its own
    forward pass unless it is the whole batch): groups of consecutive examples in (length, count) order, chosen by
    dynamic programming over the cut points. Returns (groups of example indices, forecast work)."""
    B, n_layers, _ = wanted.shape
    lengths = attention_mask.sum(dim=1)
    counts = (wanted & attention_mask.bool()[:, None, :]).sum(dim=2).to(torch.float64)
    order = sorted(range(B), key=lambda b: (int(lengths[b]), float(counts[b].sum()), b))
    best = [0.0] + [math.inf] * B  # best[j]: the first j examples of ``order`` grouped
    cut = [0] * (B + 1)
    for j in range(1, B + 1):
        for i in range(j):
            members = order[i:j]
            group_length = int(lengths[members].max())
            cost = _loop_work(counts[members], group_length)
            if j - i < B:  # a group of its own: its forward pass with graph
                cost += FORWARD_COST * n_layers * len(members) * group_length + CALL_COST
            if best[i] + cost < best[j]:
                best[j], cut[j] = best[i] + cost, i
    groups, j = [], B
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1], best[B]


def _depth(n_layers: int) -> torch.Tensor:
    return torch.arange(n_layers, dtype=torch.float64).clamp_min(0.1)  # layer 0: the embeddings only


def _loop_work(counts: torch.Tensor, length: int) -> float:
    """The per-position loop over examples with ``counts`` [b, n] wanted positions per layer, padded to ``length``."""
    calls = counts.max(dim=0).values
    return float((calls * _depth(counts.shape[1])).sum()) * counts.shape[0] * length + CALL_COST * float(calls.sum())


def input_to_representation_length_buckets(ctx: ForwardContext, positions: torch.Tensor | None = None, *,
                                           mode: str = "norm") -> torch.Tensor:
    """Eq. 5 rows (see :func:`input_to_representation`) from the per-position loop run on groups of examples of
    similar length and count (:func:`length_buckets`), each group a forward pass of its own at its own length; a
    single group is the batch itself, on the base pass's graph."""
    wanted = _wanted(ctx, positions)
    groups, _ = length_buckets(ctx.batch.attention_mask, wanted)
    method = InputToRepresentation(mode=mode)
    if len(groups) == 1:
        return method(ctx, wanted)
    ctx._check_graph()
    batch = ctx.batch
    B, n_layers, L = wanted.shape
    dtype = torch.promote_types(ctx.base.embeddings.dtype, torch.float32)
    out = torch.zeros(B, n_layers, L, L, dtype=dtype, device=wanted.device)
    lengths = batch.attention_mask.sum(dim=1)
    for done, members in enumerate(groups, start=1):
        rows = torch.tensor(members, device=wanted.device)
        n = int(lengths[rows].max())
        sub = TokenBatch(batch.input_ids[rows, :n], batch.attention_mask[rows, :n], batch.content_mask[rows, :n],
                         None if batch.token_type_ids is None else batch.token_type_ids[rows, :n])
        group = ForwardContext(ctx.classifier, sub, max_tokens=ctx.max_tokens, max_grad_tokens=ctx.max_grad_tokens)
        out[rows, :, :n, :n] = method(group, wanted[rows, :, :n]).to(dtype)
        group.release()
        ctx.tick(done / len(groups))
    return out


def input_to_representation_replicated(ctx: ForwardContext, positions: torch.Tensor | None = None, *,
                                       mode: str = "norm") -> torch.Tensor:
    """Eq. 5 rows (see :func:`input_to_representation`) from a replicated batch: one row per wanted (example,
    position), rows of similar length chunked to ``ctx.max_grad_tokens`` tokens, one forward pass per chunk and one
    backward call per layer (``mode="jacobian"``: one per layer and hidden unit)."""
    if mode not in InputToRepresentation.MODES:
        raise ValueError(f"input-to-representation mode must be one of {InputToRepresentation.MODES}, got {mode!r}")
    ctx._check_graph()
    batch, base = ctx.batch, ctx.base
    wanted = _wanted(ctx, positions)
    B, n_layers, L = wanted.shape
    keep = batch.attention_mask.bool()
    dtype = torch.promote_types(base.embeddings.dtype, torch.float32)
    out = torch.zeros(B, n_layers, L, L, dtype=dtype, device=keep.device)
    examples, where = torch.nonzero(wanted.any(dim=1), as_tuple=True)  # one row per wanted (example, position)
    lengths = keep.sum(dim=1)
    order = torch.sort(lengths[examples], stable=True).indices  # shortest rows first: chunks of similar length
    examples, where = examples[order], where[order]
    done = 0
    for rows in length_sorted_chunks(lengths[examples].tolist(), ctx.max_grad_tokens):
        b, p = examples[rows], where[rows]
        n = int(lengths[b].max())
        grads = _row_gradients(ctx, b, p, n, wanted[b, :, p], mode)  # [n_layers] x ([R, n] or None)
        for layer, values in enumerate(grads):
            if values is not None:
                out[b, layer, p, :n] = values.to(dtype) * wanted[b, layer, p, None]
        done = rows.stop
        ctx.tick(done / max(1, examples.numel()))
    out = out * keep[:, None, :, None] * keep[:, None, None, :]
    totals = out.sum(dim=-1, keepdim=True)
    return torch.where(totals > 0, out / torch.where(totals > 0, totals, torch.ones_like(totals)), out)


def _wanted(ctx: ForwardContext, positions: torch.Tensor | None) -> torch.Tensor:
    keep = ctx.batch.attention_mask.bool()
    n_layers = len(ctx.base.attentions)
    if positions is None:
        return keep[:, None, :].expand(keep.shape[0], n_layers, keep.shape[1]).clone()
    return positions.to(torch.bool) & keep[:, None, :]


def _row_gradients(ctx: ForwardContext, examples, positions, n: int, layers_wanted, mode: str) -> list:
    """Per layer, [R, n] = ||d ||h^(l)_{p_r}|| / d x_i|| (``mode="norm"``) or ||d h^(l)_{p_r} / d x_i||_F
    (``"jacobian"``) for the rows (example, position) cut to length ``n``; None for a layer no row wants."""
    batch = ctx.batch
    embeddings = ctx.base.embeddings.detach()[examples, :n].clone().requires_grad_(True)
    inputs = {k: v[examples, :n] for k, v in batch.model_inputs().items() if k != "input_ids"}
    rows = torch.arange(examples.numel(), device=examples.device)
    needed = [layer for layer in range(layers_wanted.shape[1]) if bool(layers_wanted[:, layer].any())]
    grads: list = [None] * layers_wanted.shape[1]
    with torch.enable_grad():
        hidden = ctx.model(inputs_embeds=embeddings, **inputs, output_hidden_states=True).hidden_states
        for k, layer in enumerate(needed):
            selected = hidden[layer][rows, positions]  # [R, d]
            last = k == len(needed) - 1
            if mode == "norm":
                weight = layers_wanted[:, layer].to(selected.dtype)
                (grad,) = torch.autograd.grad((selected.norm(dim=-1) * weight).sum(), embeddings, retain_graph=not last)
                grads[layer] = grad.norm(dim=-1)
            else:
                grads[layer] = _jacobian_row_norms(selected, embeddings, retain_last=not last)
    return grads


def _jacobian_row_norms(selected: torch.Tensor, embeddings: torch.Tensor, retain_last: bool) -> torch.Tensor:
    """[R, n]: ||d selected[r] / d embeddings[r, i]||_F, one backward call per hidden unit for all rows at once."""
    d = selected.shape[-1]
    squares = torch.zeros(embeddings.shape[:2], dtype=torch.float64, device=embeddings.device)
    for k in range(d):
        retain = retain_last or k < d - 1
        (grad,) = torch.autograd.grad(selected[:, k].sum(), embeddings, retain_graph=retain)
        squares += grad.double().pow(2).sum(dim=-1)
    return squares.sqrt().float()  # float32, as the per-position implementation returns it


def sampled_position_summaries(g: torch.Tensor, content: torch.Tensor, sampled: torch.Tensor | None = None) -> dict:
    """Eq. 5's per-layer summaries from its rows ``g`` [B, n, L(p), L(i)] (any non-negative rows; renormalised over
    the content inputs ``content`` [B, L]): the means over content positions p (or over the ``sampled`` [B, L]
    positions) of each row's normalised entropy and co-indexed share G[p, p], [B, n] each, and with a sample their
    standard errors (``*_se``) and the sample size (``positions``). The same keys and values as
    ``eval_suite.measure``'s ``input_to_repr.*`` rows."""
    g = M.normalise(g.double(), content[:, None, None, :])
    entropy = M.normalised_entropy(g, content[:, None, None, :])  # [B, n, L]
    share = torch.diagonal(g, dim1=-2, dim2=-1)
    weights = (content if sampled is None else sampled)[:, None, :].double()
    size = weights.sum(dim=-1)
    out = {}
    for key, values in (("entropy", entropy), ("coindexed_share", share)):
        out[key] = torch.nansum(values * weights, dim=-1) / size
        if sampled is not None:
            out[f"{key}_se"] = M.sampled_mean_standard_error(torch.nan_to_num(values, nan=0.0), weights,
                                                             content.sum(dim=-1)[:, None].double())
    if sampled is not None:
        out["positions"] = size
    return out
