"""Context mixing: how much each token contributes to each token's representation, per layer (and head), and
through the layers to the inputs; one method family per module, a registry of names.

=========================  ==========================================================  =====  ==========
name                       what                                                        heads  to inputs
=========================  ==========================================================  =====  ==========
``attention_norm``         ||alpha f(x)|| (Kobayashi et al. 2020)                      yes    no
``attention_norm_res_ln``  ||T_i(x_j)||, attention + residual + LayerNorm (K. 2021)    no     rollout
``value_zeroing``          cosine distance of layer outputs, value j zeroed (M. 2023)  yes    rollout
``alti``                   L1 proximity of T_i(x_j) to the block output (F. 2022)      no     rollout
``attention_flow``         max-flow through residual attention (Abnar & Zuidema 2020)  no     max-flow
=========================  ==========================================================  =====  ==========

Every method is a :class:`~.base.ContextMixing`: ``method(ctx) -> [B, n_layers, L, L]`` (whole-layer mixing),
``method.heads(ctx, queries)`` and ``method.to_inputs(ctx)`` where defined. The instrumentation is the suite's:
one recorded forward pass of the unmodified model (hooks on the layer modules, attention through the
AttentionTap); :mod:`.decomposition` splits each attention block and checks the split reproduces every layer.
:func:`~.rows.context_mixing_rows` turns a batch into the per-example vectors and summaries the metrics need.
"""

from __future__ import annotations

from .alti import ALTI
from .base import ContextMixing
from .flow import AttentionFlow
from .norms import AttentionNorm, AttentionNormResidualLN
from .value_zeroing import ValueZeroing

CONTEXT_MIXING_METHODS: dict[str, type[ContextMixing]] = {
    cls.name: cls for cls in (AttentionNorm, AttentionNormResidualLN, ValueZeroing, ALTI, AttentionFlow)
}


def context_mixing_method(name: str) -> ContextMixing:
    """A new instance of the method registered as ``name`` (ValueError, one line, for an unknown name)."""
    if name not in CONTEXT_MIXING_METHODS:
        raise ValueError(f"unknown context-mixing method {name!r}; choose from {', '.join(CONTEXT_MIXING_METHODS)}")
    return CONTEXT_MIXING_METHODS[name]()


__all__ = [
    "ALTI",
    "AttentionFlow",
    "AttentionNorm",
    "AttentionNormResidualLN",
    "CONTEXT_MIXING_METHODS",
    "ContextMixing",
    "ValueZeroing",
    "context_mixing_method",
    "context_mixing_rows",
]

from .rows import context_mixing_rows  # noqa: E402  (rows resolves names through the registry above)
