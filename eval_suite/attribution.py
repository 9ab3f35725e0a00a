"""Attention and importance as tensors, one class per method behind a common call (captum-like).

Each method is called with a :class:`ForwardContext` (one batch of examples under one classifier) and returns
a tensor ``[B, L]`` (input methods), ``[B, n_layers, L]`` (methods over the representations each layer attends
over) or, for attention-derived maps, ``[B, n_layers, n_heads, L]``. Values are non-negative importances over
positions; comparisons restrict them to content tokens (see :mod:`eval_suite.batching`).

Shared work is done once per batch by the context (:mod:`eval_suite.forward_context`); everything else is batched
across examples (and across integrated-gradient steps, removal variants, and positions for the
input-to-representation gradients).

Notation: ``x_i`` is the word embedding of token i (``model.get_input_embeddings()``; position and type
embeddings are added inside the model), ``h^(l)_i`` the hidden state after ``l`` layers
(``hidden_states[l]``; ``hidden_states[0]`` is the embedding output), so layer ``l`` (0-based) attends over
``h^(l)``. ``y_hat`` is the probability of the predicted class.
"""

from __future__ import annotations

import numpy as np
import torch

from .batching import TokenBatch, length_sorted_chunks
from .forward_context import ForwardContext, attention_rows

__all__ = [
    "Attribution",
    "AttentionRollout",
    "GradientNorm",
    "GradientXInput",
    "InputToRepresentation",
    "IntegratedGradients",
    "LeaveOneOut",
    "ProjectedAttention",
    "RepresentationGradientNorm",
    "RepresentationLeaveOneOut",
    "sample_positions",
]


class Attribution:
    """Common call: ``method(ctx) -> tensor`` of non-negative importances. The measures that use a class are
    declared (with their names) in :mod:`eval_suite.methods`; a context-mixing class names itself for the
    registry of :mod:`eval_suite.context_mixing`."""

    name: str = ""
    per_layer: bool = False

    def __call__(self, ctx: ForwardContext) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- input importance


class GradientNorm(Attribution):
    """||d y_hat / d x_i||_2 (paper eq. 4 before normalisation)."""


    def __call__(self, ctx):
        return ctx.gradients[0].norm(dim=-1)


class GradientXInput(Attribution):
    """|sum_d x_id * d y_hat / d x_id|: the first-order contribution of token i."""


    def __call__(self, ctx):
        return (ctx.gradients[0] * ctx.base.embeddings.detach()).sum(dim=-1).abs()


class IntegratedGradients(Attribution):
    """|sum_d (x_id - x'_id) * integral_0^1 d y_hat(x' + a (x - x')) / d x_id da| (Sundararajan et al. 2017).

    The integral uses ``steps``-point Gauss-Legendre quadrature (captum's default rule). The baseline x' is the
    padding token's embedding (``baseline="pad"``) or zeros (``"zero"``) at content positions; special tokens keep
    their embeddings. All examples x steps run as one batch (chunked by ``ctx.max_grad_tokens``).

    Completeness says the signed attributions sum to ``y_hat(x) - y_hat(x')``; how far they miss is the
    quadrature's error, reported per example as ``|sum_i a_i - (y_hat(x) - y_hat(x'))| / max(|y_hat(x) -
    y_hat(x')|, 0.01)`` (the floor keeps near-equal predictions from dividing by almost nothing). With
    ``tolerance`` set, an example whose gap exceeds it is recomputed with twice the steps, up to ``max_steps``:
    sparse mappings make the integrand piecewise smooth with kinks, where a fixed rule converges slowly.
    """

    GAP_FLOOR = 0.01

    def __init__(self, steps: int = 16, baseline: str = "pad", tolerance: float | None = None, max_steps: int = 256):
        if steps < 1:
            raise ValueError(f"integrated gradients needs steps >= 1, got {steps}")
        if baseline not in ("pad", "zero"):
            raise ValueError(f"baseline must be 'pad' or 'zero', got {baseline!r}")
        if tolerance is not None and not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.steps, self.baseline, self.tolerance, self.max_steps = steps, baseline, tolerance, max(steps, max_steps)

    @staticmethod
    def rule(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss-Legendre nodes and weights on [0, 1]."""
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (torch.tensor((nodes + 1) / 2, dtype=torch.float32), torch.tensor(weights / 2, dtype=torch.float32))

    def baseline_embeddings(self, ctx) -> torch.Tensor:
        x = ctx.base.embeddings.detach()
        content = ctx.batch.content_mask[..., None]
        pad_id = getattr(ctx.classifier.tokenizer, "pad_token_id", None)
        if self.baseline == "pad" and pad_id is not None:
            reference = ctx.classifier.word_embeddings(torch.tensor([pad_id], device=x.device)).detach()[0]
        else:
            reference = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        return torch.where(content, reference.expand_as(x), x)

    def __call__(self, ctx):
        return self.attribute(ctx)[0].abs()

    @torch.no_grad()
    def baseline_probability(self, ctx) -> torch.Tensor:
        """y_hat(x') per example: the predicted class's probability at the baseline [B]."""
        batch = ctx.batch
        other_inputs = {k: v for k, v in batch.model_inputs().items() if k != "input_ids"}
        logits = ctx.model(inputs_embeds=self.baseline_embeddings(ctx), **other_inputs).logits
        return torch.softmax(logits.float(), dim=-1).gather(1, ctx.base.prediction[:, None]).squeeze(1)

    def attribute(self, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(signed attributions [B, L], completeness gap [B], steps used [B]); see the class docstring."""
        rows = torch.arange(ctx.batch.size, device=ctx.base.embeddings.device)
        delta = ctx.base.target.detach().float() - self.baseline_probability(ctx)
        signed = self.signed(ctx, self.steps, rows)
        steps_used = torch.full((ctx.batch.size,), self.steps, dtype=torch.long, device=rows.device)
        gap = self._gap(signed, delta)
        steps = self.steps
        while self.tolerance is not None and steps < self.max_steps:
            redo = rows[gap > self.tolerance]
            if redo.numel() == 0:
                break
            steps = min(2 * steps, self.max_steps)
            signed[redo] = self.signed(ctx, steps, redo)
            steps_used[redo] = steps
            gap[redo] = self._gap(signed[redo], delta[redo])
        return signed, gap, steps_used

    def _gap(self, signed: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (signed.sum(dim=-1) - delta).abs() / delta.abs().clamp_min(self.GAP_FLOOR)

    def signed(self, ctx, steps: int | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Signed attributions [len(rows), L] with ``steps`` nodes; over all positions they sum to about
        y_hat(x) - y_hat(x') (completeness)."""
        batch, base = ctx.batch, ctx.base
        steps = steps or self.steps
        x = base.embeddings.detach()
        x0 = self.baseline_embeddings(ctx)
        rows = torch.arange(batch.size, device=x.device) if rows is None else rows
        alphas, weights = (t.to(x.device) for t in self.rule(steps))
        pair_rows = rows.repeat_interleave(steps)
        pair_steps = torch.arange(steps, device=x.device).repeat(rows.numel())
        total = torch.zeros_like(x)
        other_inputs = {k: v for k, v in batch.model_inputs().items() if k != "input_ids"}
        lengths = batch.attention_mask.sum(dim=1)
        for sl in ctx.chunks(pair_rows.numel(), batch.length, grad=True):
            r, s = pair_rows[sl], pair_steps[sl]
            n = int(lengths[r].max())  # a chunk of short examples runs at their length, not the batch's
            scaled = (x0[r, :n] + alphas[s, None, None] * (x[r, :n] - x0[r, :n])).requires_grad_(True)
            with torch.enable_grad():
                logits = ctx.model(inputs_embeds=scaled, **{k: v[r, :n] for k, v in other_inputs.items()}).logits
                probs = torch.softmax(logits.float(), dim=-1).gather(1, base.prediction[r, None]).squeeze(1)
                (grad,) = torch.autograd.grad(probs.sum(), scaled)
            total[:, :n].index_add_(0, r, grad * weights[s, None, None])
        return ((x - x0) * total).sum(dim=-1)[rows]


class LeaveOneOut(Attribution):
    """|y_hat - y_hat_{-i}| with content token i deleted from the sequence (paper eq. 6 before normalisation)."""


    def __call__(self, ctx, measured: torch.Tensor | None = None):
        """[B, L]; ``measured`` [B, L] bool: the content positions to delete (default: all; 0 at the others)."""
        batch = ctx.batch
        rows, positions = ctx.content_variants(measured)
        keep = batch.attention_mask[rows].bool().clone()
        keep[torch.arange(rows.numel()), positions] = False
        reduced = ctx.kept_probability(rows, keep)
        out = torch.zeros(batch.size, batch.length, dtype=torch.float32, device=reduced.device)
        out[rows, positions] = (ctx.base.target.detach()[rows] - reduced).abs()
        return out


# ----------------------------------------------------------------------------------------------- representations


class RepresentationGradientNorm(Attribution):
    """||d y_hat / d h^(l)_i||_2 for the representations h^(l) that layer l attends over: [B, n, L]."""

    per_layer = True

    def __call__(self, ctx):
        return torch.stack([g.norm(dim=-1) for g in ctx.gradients[1]], dim=1)


class RepresentationLeaveOneOut(Attribution):
    """|y_hat - y_hat(key i masked in layer l)|: every query of layer l loses key h^(l)_i, other layers unchanged.

    The variants of all examples run as one batch per layer; layers before l are not recomputed (their output is
    the cached ``hidden_states[l]``) when the model's layer stack allows it (checked on a probe at load time).
    """

    per_layer = True

    def __call__(self, ctx, measured: torch.Tensor | None = None):
        """[B, n, L]; ``measured`` [B, L] bool: the content positions to mask (default: all; 0 at the others)."""
        batch, base, tap = ctx.batch, ctx.base, ctx.classifier.tap
        rows, positions = ctx.content_variants(measured)
        n_layers = len(base.attentions)
        out = torch.zeros(batch.size, n_layers, batch.length, dtype=torch.float32, device=batch.input_ids.device)
        target = base.target.detach()
        # shortest examples first, each chunk cut to its own longest example: no variant runs at a longer one's length
        lengths = batch.attention_mask.sum(dim=1)
        order = torch.sort(lengths[rows], stable=True).indices
        rows, positions = rows[order], positions[order]
        chunks = list(length_sorted_chunks(lengths[rows].tolist(), ctx.max_tokens))
        for layer in range(n_layers):
            hidden = base.hidden_states[layer].detach()
            with torch.inference_mode():
                for sl in chunks:
                    r, p = rows[sl], positions[sl]
                    n = int(lengths[r].max())
                    sub = TokenBatch(batch.input_ids[r, :n], batch.attention_mask[r, :n], batch.content_mask[r, :n],
                                     None if batch.token_type_ids is None else batch.token_type_ids[r, :n])
                    with tap.mask_keys(layer, p):
                        if tap.can_skip_layers:
                            with tap.start_at_layer(layer, hidden[r, :n]):
                                logits = ctx.model(**sub.model_inputs()).logits
                        else:
                            logits = ctx.model(**sub.model_inputs()).logits
                    probs = torch.softmax(logits.float(), dim=-1).gather(1, base.prediction[r, None]).squeeze(1)
                    out[r, layer, p] = (target[r] - probs).abs()
        return out


class InputToRepresentation(Attribution):
    """Paper eq. 5 for every layer and position: G[b, l, p, i] = ||d ||h^(l)_p||_2 / d x_i||_2, normalised over i.

    Returns ``[B, n_layers, L(p), L(i)]``, each row p a distribution over the non-padding inputs (padding rows 0).
    One vector-Jacobian product per (layer, position) is unavoidable; each is batched over the examples of the
    batch (they are independent, so one backward pass from the sum over examples serves all of them) and runs
    through only the l layers below h^(l), on the base pass's graph. ``vectorize=True`` also batches positions
    with ``torch.autograd.grad(..., is_grads_batched=True)`` (vmap).

    ``mode="jacobian"`` replaces the gradient of the norm by the whole Jacobian block: G[b, l, p, i] =
    ||d h^(l)_p / d x_i||_F. In post-LayerNorm encoders ||h_p|| is nearly the same at every position (LayerNorm
    fixes it up to its gain and bias), so the norm's gradient measures little there; the Frobenius norm counts every
    direction in which x_i moves h_p. It costs one vector-Jacobian product per hidden dimension instead of one per
    position: d_model times the default (384x for MiniLM).

    Only the rows a caller needs are computed (``positions``): eq. 5's summaries need the content positions,
    projected attention the positions some head attends to, and the sampled estimator a seeded sample of them
    (:func:`sample_positions`).
    """

    per_layer = True
    MODES = ("norm", "jacobian")

    def __init__(self, vectorize: bool = False, mode: str = "norm"):
        # vmap (is_grads_batched) is off by default: in torch 2.13 layer_norm, gelu and softmax backward have no
        # batching rule, so vmap loops per sample and is slower on CPU than one backward per position over the
        # whole batch (measured on MiniLM; see docs/eval_suite.md). Larger batches make the loop efficient.
        if mode not in self.MODES:
            raise ValueError(f"input-to-representation mode must be one of {self.MODES}, got {mode!r}")
        self.vectorize = vectorize
        self.mode = mode

    def __call__(self, ctx, positions: torch.Tensor | None = None):
        """Rows G[b, l, p, :] for the positions ``positions[b, l, p]`` (bool ``[B, n_layers, L]``; default: every
        non-padding position); the other rows are 0. Each backward pass serves one position of every example at
        once (examples are independent), so a batch needs as many passes per layer as its example with the most
        positions."""
        ctx._check_graph()
        base, batch = ctx.base, ctx.batch
        n_layers = len(base.attentions)
        B, L = batch.size, batch.length
        keep = batch.attention_mask.bool()
        wanted_all = keep[:, None, :].expand(B, n_layers, L) if positions is None else positions & keep[:, None, :]
        # float32 at least (a half-precision model's rows are summed in float32), a float64 model's own dtype
        dtype = torch.promote_types(base.embeddings.dtype, torch.float32)
        out = torch.zeros(B, n_layers, L, L, dtype=dtype, device=batch.input_ids.device)
        work = [max(layer, 0.1) for layer in range(n_layers)]  # a backward pass through the l layers below
        for layer in range(n_layers):
            wanted = wanted_all[:, layer]
            counts = wanted.sum(dim=1)
            n_rows = int(counts.max()) if B else 0
            if n_rows:
                # order[b, j]: example b's j-th wanted position (wanted ones first, in position order)
                order = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :n_rows]
                valid = torch.arange(n_rows, device=order.device)[None, :] < counts[:, None]
                if self.mode == "jacobian":
                    rows = self._jacobian_rows(base.hidden_states[layer], base.embeddings, order, valid)
                else:
                    rows = self._vjp_rows(base.hidden_states[layer].norm(dim=-1), base.embeddings, order, valid,
                                          ctx.max_grad_tokens)
                out[:, layer].scatter_(1, order[:, :, None].expand(B, n_rows, L), (rows * valid[:, :, None]).to(dtype))
            ctx.tick(sum(work[:layer + 1]) / sum(work))
        out = out * keep[:, None, :, None] * keep[:, None, None, :]
        totals = out.sum(dim=-1, keepdim=True)
        return torch.where(totals > 0, out / torch.where(totals > 0, totals, torch.ones_like(totals)), out)

    @staticmethod
    def _jacobian_rows(hidden, embeddings, order, valid) -> torch.Tensor:
        """[B, J, L(i)]: ||d hidden[b, order[b, j]] / d embeddings[b, i]||_F, one backward pass per (j, hidden unit)."""
        B, L, d = hidden.shape
        examples = torch.arange(B, device=hidden.device)
        squares = torch.zeros(B, order.shape[1], L, dtype=torch.float64, device=hidden.device)
        for j in range(order.shape[1]):
            selected = hidden[examples, order[:, j]]  # [B, d]
            weight = valid[:, j].to(hidden.dtype)
            for k in range(d):
                (grad,) = torch.autograd.grad((selected[:, k] * weight).sum(), embeddings, retain_graph=True)
                squares[:, j, :] += grad.double().pow(2).sum(dim=-1)
        return squares.sqrt().float()

    def _vjp_rows(self, norms, embeddings, order, valid, max_grad_tokens: int) -> torch.Tensor:
        """[B, J, L]: ||d norms[b, order[b, j]] / d embeddings[b]|| (each example its own gradient)."""
        B, L = norms.shape
        n_rows = order.shape[1]
        weights = valid.to(norms.dtype)
        if self.vectorize:
            try:
                result = []
                per_chunk = max(1, max_grad_tokens * 4 // max(1, B * L))
                for start in range(0, n_rows, per_chunk):
                    stop = min(n_rows, start + per_chunk)
                    selector = torch.zeros(stop - start, B, L, dtype=norms.dtype, device=norms.device)
                    j = torch.arange(start, stop, device=norms.device)
                    selector[(j - start)[:, None], torch.arange(B, device=norms.device)[None, :], order[:, j].T] = \
                        weights[:, j].T
                    (grads,) = torch.autograd.grad(norms, embeddings, grad_outputs=selector, is_grads_batched=True,
                                                   retain_graph=True)
                    result.append(grads.norm(dim=-1).permute(1, 0, 2))
                return torch.cat(result, dim=1)
            except RuntimeError:  # e.g. a custom autograd.Function without vmap support
                self.vectorize = False
        result = []
        for j in range(n_rows):
            selected = norms.gather(1, order[:, j:j + 1]).squeeze(1)
            (grad,) = torch.autograd.grad((selected * weights[:, j]).sum(), embeddings, retain_graph=True)
            result.append(grad.norm(dim=-1))
        return torch.stack(result, dim=1)


def sample_positions(indices: list[int], content: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """[B, L] bool: ``min(k, n_content)`` content positions of each example, uniformly without replacement, from
    (seed, its dataset index) alone -- not from its batch, so a run split over processes samples the same ones."""
    sampled = torch.zeros_like(content, dtype=torch.bool)
    for row, index in enumerate(indices):
        where = torch.nonzero(content[row]).squeeze(-1).cpu().numpy()
        if where.size:
            chosen = np.random.default_rng([seed, index, 2]).choice(where, size=min(k, where.size), replace=False)
            sampled[row, torch.as_tensor(chosen, device=content.device)] = True
    return sampled


# ----------------------------------------------------------------------------------------------- attention -> inputs


class AttentionRollout(Attribution):
    """Attention of each head carried back to the inputs through the rollout of the layers below it.

    Rollout (Abnar & Zuidema 2020): R_0 = I, R_{l+1} = (0.5 A_l + 0.5 I) R_l with A_l the head-mean attention of
    layer l over all non-padding positions. Head h of layer l maps to inputs as ``a_{l,h} R_l`` ([B, n, H, L]);
    :meth:`full` is the classification token's row of R_n (the whole network), used as a ranking.
    """


    def __init__(self, query: str = "cls"):
        self.query = query

    def matrices(self, ctx) -> list[torch.Tensor]:
        """[R_0, ..., R_n], each [B, L, L]."""
        base, batch = ctx.base, ctx.batch
        B, L = batch.size, batch.length
        eye = torch.eye(L, device=batch.input_ids.device).expand(B, L, L)
        rollout = [eye]
        for a in base.attentions:
            mixed = 0.5 * a.float().mean(dim=1) + 0.5 * eye
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
            rollout.append(mixed @ rollout[-1])
        return rollout

    def __call__(self, ctx):
        base, batch = ctx.base, ctx.batch
        rows = attention_rows(base.attentions, batch.attention_mask, self.query).float()  # [B, n, H, L]
        rollout = torch.stack(self.matrices(ctx)[:-1], dim=1)  # [B, n, L, L]
        return rows @ rollout

    def full(self, ctx) -> torch.Tensor:
        final = self.matrices(ctx)[-1]
        if self.query == "cls":
            return final[:, 0, :]
        weights = ctx.batch.attention_mask.float()
        return (final * weights[:, :, None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)


class ProjectedAttention(Attribution):
    """sum_p a_{l,h}(p) G[l, p, :]: attention over representations projected onto the inputs through eq. 5."""


    def __init__(self, query: str = "cls"):
        self.query = query

    def __call__(self, ctx, input_to_repr: torch.Tensor | None = None):
        if input_to_repr is None:
            input_to_repr = InputToRepresentation()(ctx)
        rows = attention_rows(ctx.base.attentions, ctx.batch.attention_mask, self.query).to(input_to_repr.dtype)
        return rows @ input_to_repr  # [B, n, H, L] @ [B, n, L, L]

