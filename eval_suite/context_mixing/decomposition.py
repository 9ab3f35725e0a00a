"""Each layer's attention block split into what every token sends to every other: the shared ground of the
context-mixing methods.

For layer ``l`` with input ``x`` (= ``h^(l)``), the mapping's attention ``alpha^h`` (as the model returns it), the
value projection ``(W_V, b_V)``, the output projection ``(W_O, b_O)`` and the attention block's LayerNorm ``LN``
(gain ``gamma``, bias ``beta``, ``eps``)::

    u_j        = x_j (post-LN)  or  LN(x_j) (pre-LN)     what the value projection reads
    f^h(x_j)   = (u_j W_V^h + b_V^h) W_O^h               head h's transformed value of token j (b_O excluded)
    g_ij       = sum_h alpha^h_ij f^h(x_j)                what token j sends to token i through attention
    s_i        = sum_j g_ij + b_O + x_i                   the residual sum
    y_i        = LN(s_i) (post-LN)  or  s_i (pre-LN)      the attention block's output
    h^(l+1)_i  = FFN_block(y_i)                           token-wise: feed-forward, its residual (and LayerNorm)

Post-LN, the LayerNorm is linear in ``s_i`` once its standard deviation ``sigma_i = sqrt(Var(s_i) + eps)`` is
fixed, so ``y_i = sum_j T_i(x_j) + gamma * (b_O - mean(b_O)) / sigma_i + beta`` with the *transformed vectors*
``T_i(x_j) = gamma * (c_ij - mean(c_ij)) / sigma_i`` and ``c_ij = g_ij + [i = j] x_j`` (Kobayashi et al. 2021,
Ferrando et al. 2022). Pre-LN, ``T_i(x_j) = c_ij`` and ``y_i = sum_j T_i(x_j) + b_O``.

The split is computed in float64 whatever the model's dtype: value zeroing and ALTI subtract nearly equal vectors
(a layer output with and without one head's small share of one token; ``||y|| - ||y - T||``), where float32
rounding would leave differences that change with the batch's make-up and the number of threads. For a model in
lower precision the recorded activations are upcast and the layers' modules are read through float64 copies
(made once per model and weights version; the model itself is left as it is).

Everything is read from one forward pass of the unmodified model: forward hooks on the layer modules record each
layer's input and output, the attention comes from ``output_attentions=True`` (through the suite's AttentionTap),
and module weights are read, never changed. Before a method uses the split it is checked, on every batch, to
reproduce every layer's recorded output on the real tokens; a family whose layout is unknown, or whose layer
computes something else, is refused in one line (:class:`~eval_suite.errors.EvalError`).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import EvalError


def _feed_forward_chunk(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return layer.feed_forward_chunk(y)  # BERT-style layers: intermediate, output (+ residual, + LayerNorm)


def _distilbert_feed_forward(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return layer.output_layer_norm(layer.ffn(y) + y)


@dataclass(frozen=True)
class Layout:
    """Where an encoder family keeps the parts of one layer (attribute paths from the layer module)."""

    name: str
    value: str
    output: str
    norm: str
    pre_norm: bool
    feed_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]


# Tried in order; a layout fits a layer when every path resolves to the right kind of module, and the split must
# then reproduce the layer's outputs. Transformers has no pre-LN BERT; its pre-LN encoders are RoBERTa-PreLayerNorm
# and XLM-RoBERTa-XL.
LAYOUTS = (
    Layout("post-LN BERT (BERT, RoBERTa, ELECTRA, XLM-RoBERTa, CamemBERT)", "attention.self.value",
           "attention.output.dense", "attention.output.LayerNorm", False, _feed_forward_chunk),
    Layout("pre-LN RoBERTa (RoBERTa-PreLayerNorm)", "attention.self.value", "attention.output.dense",
           "attention.LayerNorm", True, _feed_forward_chunk),
    Layout("pre-LN XLM-RoBERTa-XL", "attention.self.value", "attention.output.dense",
           "attention.self_attn_layer_norm", True, _feed_forward_chunk),
    Layout("post-LN DistilBERT", "attention.v_lin", "attention.out_lin", "sa_layer_norm", False,
           _distilbert_feed_forward),
)


def _get(module: nn.Module, path: str):
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


@dataclass
class LayerParts:
    """The modules of one layer that the split reads."""

    module: nn.Module
    value: nn.Linear
    output: nn.Linear
    norm: nn.LayerNorm
    layout: Layout

    @property
    def pre_norm(self) -> bool:
        return self.layout.pre_norm

    def value_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) if self.pre_norm else x

    def block_output(self, s: torch.Tensor) -> torch.Tensor:
        """y from the residual sum s (any leading dimensions)."""
        return s if self.pre_norm else self.norm(s)

    def layer_output(self, y: torch.Tensor) -> torch.Tensor:
        """h^(l+1) from the attention block's output y (token-wise, any leading dimensions)."""
        return self.layout.feed_forward(self.module, y)

    def norm_gain_bias(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = like.shape[-1]
        gain = self.norm.weight if self.norm.weight is not None else torch.ones(d, dtype=like.dtype, device=like.device)
        bias = self.norm.bias if self.norm.bias is not None else torch.zeros(d, dtype=like.dtype, device=like.device)
        return gain, bias


def _fit(layer: nn.Module) -> LayerParts | None:
    for layout in LAYOUTS:
        value, output, norm = (_get(layer, p) for p in (layout.value, layout.output, layout.norm))
        if isinstance(value, nn.Linear) and isinstance(output, nn.Linear) and isinstance(norm, nn.LayerNorm):
            return LayerParts(layer, value, output, norm, layout)
    return None


def layer_parts(classifier) -> list[LayerParts]:
    """The :class:`LayerParts` of every layer of ``classifier`` (EvalError, one line, if a layer fits no layout)."""
    tap, kind = classifier.tap, type(classifier.model).__name__
    layers = tap.layer_modules or tap._find_layer_modules(classifier.n_layers)
    if layers is None:
        raise EvalError(f"cannot find the layer stack of {kind}; the context-mixing methods need one module per layer")
    parts = [_fit(layer) for layer in layers]
    if any(p is None for p in parts):
        raise EvalError(f"the context-mixing methods do not know the layer layout of {kind} "
                        f"({type(layers[0]).__name__}); supported: " + "; ".join(l.name for l in LAYOUTS))
    return parts


_FLOAT64_PARTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _weights_version(module: nn.Module) -> tuple:
    # in-place updates (an optimizer step) bump a tensor's version: a copy made before them is stale
    return tuple((id(p), p._version) for p in module.parameters())


def _float64_copy(parts: LayerParts) -> LayerParts:
    """The same layer with float64 parameters (its hooks are not copied: the split calls its sub-modules only)."""
    memo = {}
    for sub in parts.module.modules():
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks):
            for hook in hooks.values():
                memo[id(hook)] = hook  # shared, not deep-copied (a hook may hold the whole model)
    layer = copy.deepcopy(parts.module, memo).to(torch.float64)
    for sub in layer.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    found = _fit(layer)
    assert found is not None and found.layout == parts.layout
    return found


def float64_layer_parts(classifier) -> list[LayerParts]:
    """:func:`layer_parts` with float64 parameters: the model's own modules when it is float64, else copies."""
    parts = layer_parts(classifier)
    if all(p.value.weight.dtype == torch.float64 for p in parts):
        return parts
    version = tuple(_weights_version(p.module) for p in parts)
    cached = _FLOAT64_PARTS.get(classifier.model)
    if cached is None or cached[0] != version:
        cached = _FLOAT64_PARTS[classifier.model] = (version, [_float64_copy(p) for p in parts])
    return cached[1]


@dataclass
class BlockSplit:
    """One example's attention block in one layer, over its real positions only (n of them)."""

    x: torch.Tensor  # [n, d] layer input
    alpha: torch.Tensor  # [H, n, n] attention (query i, key j)
    f: torch.Tensor  # [H, n, d] transformed values f^h(x_j)
    out_bias: torch.Tensor  # [d] b_O
    s: torch.Tensor  # [n, d] residual sum
    sigma: torch.Tensor | None  # [n, 1] the block LayerNorm's standard deviation (post-LN), None pre-LN
    parts: LayerParts

    @property
    def y(self) -> torch.Tensor:
        """[n, d] the attention block's output."""
        return self.parts.block_output(self.s)

    def bias(self) -> torch.Tensor:
        """[n, d] the part of y_i no token is credited with: gamma (b_O - mean(b_O)) / sigma_i + beta post-LN,
        b_O pre-LN; so that y_i = sum_j T_i(x_j) + bias_i exactly."""
        n = self.x.shape[0]
        if self.parts.pre_norm:
            return self.out_bias.expand(n, -1)
        gain, beta = self.parts.norm_gain_bias(self.x)
        return gain * (self.out_bias - self.out_bias.mean()) / self.sigma + beta

    def sent(self, rows: torch.Tensor) -> torch.Tensor:
        """g_ij for the queries ``rows``: [r, n, d]."""
        return torch.einsum("hrj,hjd->rjd", self.alpha[:, rows], self.f)

    def with_residual(self, rows: torch.Tensor, sent: torch.Tensor | None = None) -> torch.Tensor:
        """c_ij = g_ij + [i = j] x_j for the queries ``rows``: [r, n, d]."""
        c = (self.sent(rows) if sent is None else sent).clone()
        c[torch.arange(rows.numel(), device=rows.device), rows] += self.x[rows]
        return c

    def transformed(self, rows: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """T_i(x_j) from c_ij for the queries ``rows`` (module docstring): [r, n, d]."""
        if self.parts.pre_norm:
            return c
        gain, _ = self.parts.norm_gain_bias(c)
        return gain * (c - c.mean(dim=-1, keepdim=True)) / self.sigma[rows, None]


@dataclass
class LayerRecord:
    inputs: torch.Tensor  # [B, L, d]
    outputs: torch.Tensor  # [B, L, d]
    attention: torch.Tensor  # [B, H, L, L]


class Decomposition:
    """The recorded forward pass of one batch and the per-example, per-layer :class:`BlockSplit`."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.model_dtype = next(ctx.model.parameters()).dtype
        self.parts = float64_layer_parts(ctx.classifier)
        self.records = self._record()
        mask = ctx.batch.attention_mask.bool()
        self.positions = [torch.nonzero(mask[b]).squeeze(-1) for b in range(mask.shape[0])]
        self._check()

    @property
    def n_layers(self) -> int:
        return len(self.parts)

    @property
    def n_heads(self) -> int:
        return int(self.records[0].attention.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.records[0].inputs.dtype

    def _record(self) -> list[LayerRecord]:
        seen_inputs, seen_outputs = {}, {}

        def record_input(index):
            def hook(module, args, kwargs):
                seen_inputs[index] = args[0] if args else kwargs["hidden_states"]
            return hook

        def record_output(index):
            def hook(module, args, kwargs, output):
                seen_outputs[index] = output if torch.is_tensor(output) else output[0]
            return hook

        handles = []
        for i, part in enumerate(layer_parts(self.ctx.classifier)):  # the model's own layers (self.parts: copies)
            handles.append(part.module.register_forward_pre_hook(record_input(i), with_kwargs=True))
            handles.append(part.module.register_forward_hook(record_output(i), with_kwargs=True))
        try:
            with torch.no_grad():
                out = self.ctx.model(**self.ctx.batch.model_inputs(), output_attentions=True)
        finally:
            for handle in handles:
                handle.remove()
        return [LayerRecord(seen_inputs[i].detach().double(), seen_outputs[i].detach().double(),
                            out.attentions[i].detach().double()) for i in range(len(self.parts))]

    @torch.no_grad()
    def block(self, example: int, layer: int) -> BlockSplit:
        """The split of ``example``'s attention block in ``layer`` over its real positions."""
        record, parts = self.records[layer], self.parts[layer]
        pos = self.positions[example]
        x = record.inputs[example, pos]
        alpha = record.attention[example][:, pos][:, :, pos]
        n_heads = alpha.shape[0]
        values = parts.value(parts.value_input(x))  # [n, H * dh]
        head_dim = values.shape[-1] // n_heads
        w_out = parts.output.weight.view(parts.output.out_features, n_heads, head_dim)  # [d, H, dh]
        f = torch.einsum("jhk,dhk->hjd", values.view(-1, n_heads, head_dim), w_out)
        out_bias = parts.output.bias if parts.output.bias is not None else torch.zeros_like(x[0])
        s = torch.einsum("hij,hjd->id", alpha, f) + out_bias + x
        sigma = None
        if not parts.pre_norm:
            sigma = torch.sqrt(s.var(dim=-1, unbiased=False, keepdim=True) + parts.norm.eps)
        return BlockSplit(x, alpha, f, out_bias, s, sigma, parts)

    def _check(self) -> None:
        tolerance = 1e-9 if self.model_dtype == torch.float64 else 2e-4  # the recorded outputs' own rounding
        for layer in range(self.n_layers):
            for example, pos in enumerate(self.positions):
                split = self.block(example, layer)
                with torch.no_grad():
                    rebuilt = split.parts.layer_output(split.y)
                recorded = self.records[layer].outputs[example, pos]
                error = float((rebuilt - recorded).abs().max()) / max(1.0, float(recorded.abs().max()))
                if not error <= tolerance:
                    raise EvalError(f"the context-mixing split does not reproduce layer {layer} of "
                                    f"{type(self.ctx.model).__name__} (relative error {error:.1e}, layout "
                                    f"{split.parts.layout.name!r}); this model's layers compute something else")

    def query_chunks(self, n_queries: int, width: int):
        """Index chunks of ``n_queries`` queries such that queries x ``width`` (the d-vectors one query needs at
        once) stays within ``ctx.max_tokens``."""
        step = max(1, self.ctx.max_tokens // max(1, width))
        for start in range(0, n_queries, step):
            yield torch.arange(start, min(n_queries, start + step), device=self.records[0].inputs.device)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def decomposition(ctx) -> Decomposition:
    """The :class:`Decomposition` of ``ctx``'s batch, computed once per context."""
    found = _CACHE.get(ctx)
    if found is None:
        found = _CACHE[ctx] = Decomposition(ctx)
    return found
