"""One batch of examples -> per-example metric arrays (the rows that the runner stores and aggregates).

Every array has the examples as its first dimension. Keys (``n`` layers, ``H`` heads, ``M`` importance methods
compared with attention, ``M_in`` input methods, ``R`` rankings, ``F`` removal fractions):

* ``example.*``: label, prediction, probability (y_hat), n_tokens, n_content                       [B]
* ``attention.{entropy,sparsity,support_size,special_mass}``                                       [B, n, H]
* ``attention.<metric>`` for metric in COMPARISON_METRICS, against every method in ``methods``     [B, n, H, M]
* ``rollout.*`` / ``projected.*``: the same, for attention carried to the inputs, against input methods
  ([B, n, H] and [B, n, H, M_in])
* ``importance.entropy``: normalised entropy of each method's importance (input methods repeated per layer) [B, n, M]
* ``input_to_repr.{entropy,coindexed_share}``: eq. 5 per layer, mean over content positions p      [B, n]
* ``faithfulness.{comprehensiveness,sufficiency}``                                                 [B, R, F]

All distributions are over content tokens (see :mod:`eval_suite.batching`); NaN marks undefined values.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .attribution import (
    AttentionRollout,
    ForwardContext,
    GradientNorm,
    GradientXInput,
    InputToRepresentation,
    IntegratedGradients,
    LeaveOneOut,
    ProjectedAttention,
    RepresentationGradientNorm,
    RepresentationLeaveOneOut,
    attention_rows,
)
from .batching import TokenBatch
from .faithfulness import DEFAULT_FRACTIONS, faithfulness_curves

INPUT_METHODS = ("grad_norm", "grad_x_input", "integrated_gradients", "loo")
REPRESENTATION_METHODS = ("repr_grad_norm", "repr_loo")
IMPORTANCE_METHODS = INPUT_METHODS + REPRESENTATION_METHODS
COMPARISON_METRICS = ("kendall_tau_b", "kendall_tau_b_on_support", "jensen_shannon", "support_mass", "topk_mass",
                      "support_coverage")
SOURCE_SUMMARIES = ("entropy", "sparsity", "support_size")


@dataclass
class MeasureConfig:
    """Settings of the measurements (all recorded in results.json)."""

    attention_query: str = "cls"  # "cls": classification-token query; "mean": mean over non-padding queries
    ig_steps: int = 20
    ig_baseline: str = "pad"
    fractions: tuple = DEFAULT_FRACTIONS
    faithfulness_attention: str = "layers"  # "layers": one ranking per layer (head mean); "none"
    seed: int = 0
    max_tokens: int = 16384
    max_grad_tokens: int = 4096
    token_map_indices: frozenset = field(default_factory=frozenset)  # examples whose token-level maps to keep

    def ranking_names(self, n_layers: int) -> list[str]:
        names = [f"attention_layer_{l}" for l in range(n_layers)] if self.faithfulness_attention == "layers" else []
        return names + ["rollout", *INPUT_METHODS, "random"]

    def to_dict(self) -> dict:
        return {"attention_query": self.attention_query, "ig_steps": self.ig_steps, "ig_baseline": self.ig_baseline,
                "fractions": list(self.fractions), "faithfulness_attention": self.faithfulness_attention,
                "seed": self.seed}


def _compare(source: torch.Tensor, importance: torch.Tensor, content: torch.Tensor, prefix: str, out: dict) -> None:
    """Every comparison metric between source [B, n, H, L] and importance [B, n, M, L] -> out[prefix.metric] [B, n, H, M]."""
    out[f"{prefix}.kendall_tau_b"] = M.kendall_tau_b_cross(source, importance, content[:, None, :])
    out[f"{prefix}.kendall_tau_b_on_support"] = M.kendall_tau_b_cross(source, importance, content[:, None, :],
                                                                      on_support=True)
    x = source[:, :, :, None, :]
    y = importance[:, :, None, :, :]
    mask = content[:, None, None, None, :]
    out[f"{prefix}.jensen_shannon"] = M.jensen_shannon(x, y, mask)
    for key, value in M.support_coverage(x, y, mask).items():
        out[f"{prefix}.{key}"] = value


def _summarise(source: torch.Tensor, content: torch.Tensor, prefix: str, out: dict) -> None:
    mask = content[:, None, None, :]
    out[f"{prefix}.entropy"] = M.normalised_entropy(source, mask)
    out[f"{prefix}.sparsity"] = M.sparsity(source, mask)
    out[f"{prefix}.support_size"] = M.support_size(source, mask)


def _metric_rows(attention, inputs, representations, rolled, projected, input_to_repr, content) -> dict:
    """Every per-example metric of the module docstring except faithfulness and the example facts."""
    n_layers = attention.shape[1]

    out: dict[str, torch.Tensor] = {}
    input_stack = torch.stack([inputs[m] for m in INPUT_METHODS], dim=1).double()  # [B, M_in, L]
    per_layer_inputs = input_stack[:, None].expand(-1, n_layers, -1, -1)
    all_methods = torch.cat(
        [per_layer_inputs, torch.stack([representations[m] for m in REPRESENTATION_METHODS], dim=2).double()], dim=2
    )  # [B, n, M, L]

    _summarise(attention, content, "attention", out)
    content_mass = (attention * content[:, None, None, :]).sum(dim=-1)
    out["attention.special_mass"] = 1 - content_mass / attention.sum(dim=-1)
    _compare(attention, all_methods, content, "attention", out)
    for name, source in (("rollout", rolled.double()), ("projected", projected.double())):
        _summarise(source, content, name, out)
        _compare(source, per_layer_inputs, content, name, out)
    out["importance.entropy"] = M.normalised_entropy(all_methods, content[:, None, None, :])

    # Eq. 5 restricted to content inputs i, summarised over content positions p.
    g = M.normalise(input_to_repr.double(), content[:, None, None, :])  # [B, n, L(p), L(i)]
    entropy_p = M.normalised_entropy(g, content[:, None, None, :])  # [B, n, L]
    share_p = torch.diagonal(g, dim1=-2, dim2=-1)  # [B, n, L]
    weights = content[:, None, :].double()
    denominator = weights.sum(dim=-1)
    out["input_to_repr.entropy"] = torch.nansum(entropy_p * weights, dim=-1) / denominator
    out["input_to_repr.coindexed_share"] = torch.nansum(share_p * weights, dim=-1) / denominator
    return out


def _random_scores(indices: list[int], length: int, seed: int) -> torch.Tensor:
    """A random ranking per example that depends only on (seed, example index), not on batching."""
    return torch.tensor(np.stack([np.random.default_rng([seed, i]).random(length) for i in indices]))


@contextmanager
def _timed(timings: dict | None, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def measure_batch(classifier, batch: TokenBatch, labels: list[int], indices: list[int], config: MeasureConfig,
                  timings: dict | None = None):
    """Run every measurement on one batch; return (arrays, token_maps).

    ``arrays`` maps keys (module docstring) to numpy float32 arrays with the examples first; ``token_maps`` maps
    an example index in ``config.token_map_indices`` to its token-level attention and importance vectors.
    ``timings``, if given, accumulates seconds per stage.
    """
    ctx = ForwardContext(classifier, batch, max_tokens=config.max_tokens, max_grad_tokens=config.max_grad_tokens)
    with _timed(timings, "forward_and_gradients"):
        base = ctx.base
        content = ctx.batch.content_mask
        n_layers = len(base.attentions)
        # Everything that needs the base pass's graph first, then free it.
        inputs = {"grad_norm": GradientNorm()(ctx), "grad_x_input": GradientXInput()(ctx)}
        representations = {"repr_grad_norm": RepresentationGradientNorm()(ctx)}
    with _timed(timings, "input_to_repr"):
        input_to_repr = InputToRepresentation()(ctx)
    ctx.release()
    with _timed(timings, "integrated_gradients"):
        inputs["integrated_gradients"] = IntegratedGradients(config.ig_steps, config.ig_baseline)(ctx)
    with _timed(timings, "loo"):
        inputs["loo"] = LeaveOneOut()(ctx)
    with _timed(timings, "repr_loo"):
        representations["repr_loo"] = RepresentationLeaveOneOut()(ctx)
    with _timed(timings, "rollout_projection"):
        rollout_method = AttentionRollout(config.attention_query)
        rolled = rollout_method(ctx)
        projected = ProjectedAttention(config.attention_query)(ctx, input_to_repr)
    attention = attention_rows(base.attentions, ctx.batch.attention_mask, config.attention_query).double()
    with _timed(timings, "metrics"):
        out = _metric_rows(attention, inputs, representations, rolled, projected, input_to_repr, content)

    rankings = {}
    if config.faithfulness_attention == "layers":
        for layer in range(n_layers):
            rankings[f"attention_layer_{layer}"] = attention[:, layer].mean(dim=1)
    rankings["rollout"] = rollout_method.full(ctx)
    rankings.update({m: inputs[m] for m in INPUT_METHODS})
    rankings["random"] = _random_scores(indices, ctx.batch.length, config.seed).to(content.device)
    assert list(rankings) == config.ranking_names(n_layers)
    with _timed(timings, "faithfulness"):
        comprehensiveness, sufficiency = faithfulness_curves(ctx, rankings, config.fractions)
    out["faithfulness.comprehensiveness"] = comprehensiveness
    out["faithfulness.sufficiency"] = sufficiency

    out["example.label"] = torch.tensor(labels)
    out["example.prediction"] = base.prediction
    out["example.probability"] = base.target
    out["example.n_tokens"] = ctx.batch.attention_mask.sum(dim=1)
    out["example.n_content"] = content.sum(dim=1)
    arrays = {k: v.detach().cpu().to(torch.float64).numpy().astype(np.float32) if k.startswith(("attention.", "rollout.", "projected.", "importance.", "input_to_repr.", "faithfulness."))
              else v.detach().cpu().numpy() for k, v in out.items()}
    arrays["example.index"] = np.asarray(indices, dtype=np.int64)

    token_maps = {}
    for row, index in enumerate(indices):
        if index not in config.token_map_indices:
            continue
        keep = content[row]
        maps = {f"attention layer {l} (head mean)": attention[row, l].mean(dim=0) for l in range(n_layers)}
        maps["rollout (whole network)"] = rankings["rollout"][row]
        maps[f"projected layer {n_layers - 1} (head mean)"] = projected[row, n_layers - 1].mean(dim=0)
        maps.update({m: inputs[m][row] for m in INPUT_METHODS})
        ids = ctx.batch.input_ids[row][keep].tolist()
        token_maps[int(index)] = {
            "tokens": classifier.tokenizer.convert_ids_to_tokens(ids),
            "label": int(labels[row]),
            "prediction": int(base.prediction[row]),
            "probability": float(base.target[row]),
            "maps": {name: [float(v) for v in M.normalise(vec.double()[keep])] for name, vec in maps.items()},
            # Per head, over the content tokens and renormalised there: exactly the distributions the metrics
            # compare with importance. special_mass says how much of the head's attention that leaves out.
            "heads": _token_values(M.normalise(attention[row][..., keep])),
            "special_mass": _token_values(out["attention.special_mass"][row]),
            "projected": _token_values(M.normalise(projected[row].double()[..., keep])),
            "representation": {m: _token_values(M.normalise(representations[m][row].double()[..., keep]))
                               for m in REPRESENTATION_METHODS},
        }
    return arrays, token_maps


def _token_values(values: torch.Tensor) -> list:
    """Nested lists for JSON at 6 significant digits (exact zeros stay 0, tiny weights stay non-zero); NaN -> None."""
    def convert(value):
        if isinstance(value, list):
            return [convert(v) for v in value]
        return float(f"{value:.6g}") if math.isfinite(value) else None

    return convert(values.detach().double().cpu().tolist())
