"""One batch of examples -> per-example metric arrays (the rows that the runner stores and aggregates).

Every array has the examples as its first dimension. Keys (``n`` layers, ``H`` heads, ``M`` importance methods
compared with attention, ``M_in`` input methods, ``M_all`` methods defined at every position, ``R`` rankings,
``F`` removal fractions):

* ``example.*``: label, prediction, probability (y_hat), n_tokens, n_content, index                 [B]
* ``attention.{entropy,sparsity,support_size,special_mass}``                                       [B, n, H]
* ``attention.<metric>`` for metric in COMPARISON_METRICS, against every method in ``methods``     [B, n, H, M]
* ``all_positions.{entropy,sparsity,support_size}`` and ``all_positions.<metric>`` against ALL_POSITIONS_METHODS:
  the same over every non-padding position, special tokens included (no renormalisation to content)
  ([B, n, H] and [B, n, H, M_all])
* ``rollout.*`` / ``projected.*``: the same, for attention carried to the inputs, against input methods
  ([B, n, H] and [B, n, H, M_in])
* ``importance.entropy``: normalised entropy of each method's importance (input methods repeated per layer) [B, n, M]
* ``input_to_repr.{entropy,coindexed_share}``: eq. 5 per layer, mean over content positions p      [B, n]
* ``integrated_gradients.{completeness_gap,steps}``: quadrature error and steps used               [B]
* ``faithfulness.{comprehensiveness,sufficiency}``                                                 [B, R, F]
* ``faithfulness.comprehensiveness_{upper,lower}`` (with ``aopc_bounds="greedy"``)                 [B, F]

Distributions are over content tokens (see :mod:`eval_suite.batching`) unless the key says all positions; NaN
marks undefined values.
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
from .faithfulness import DEFAULT_FRACTIONS, faithfulness_curves, greedy_comprehensiveness_bounds, tie_break_keys

INPUT_METHODS = ("grad_norm", "grad_x_input", "integrated_gradients", "loo")
REPRESENTATION_METHODS = ("repr_grad_norm", "repr_loo")
IMPORTANCE_METHODS = INPUT_METHODS + REPRESENTATION_METHODS
# Methods with a value at special-token positions too: leave-one-out deletes content tokens only, and integrated
# gradients' baseline keeps special tokens' embeddings, so their importance there is 0 by construction.
ALL_POSITIONS_METHODS = ("grad_norm", "grad_x_input", "repr_grad_norm")
COMPARISON_METRICS = ("kendall_tau_b", "kendall_tau_b_on_support", "kendall_tau_b_on_union", "kendall_tau_b_null",
                      "kendall_tau_b_excess", "jensen_shannon", "support_mass", "topk_mass", "support_coverage")
SOURCE_SUMMARIES = ("entropy", "sparsity", "support_size")
AOPC_BOUNDS = ("none", "greedy")


@dataclass
class MeasureConfig:
    """Settings of the measurements (all recorded in results.json)."""

    attention_query: str = "cls"  # "cls": classification-token query; "mean": mean over non-padding queries
    ig_steps: int = 16  # Gauss-Legendre nodes to start with
    ig_baseline: str = "pad"
    ig_tolerance: float | None = 0.05  # recompute with doubled steps while the completeness gap exceeds this
    ig_max_steps: int = 128
    fractions: tuple = DEFAULT_FRACTIONS
    faithfulness_attention: str = "layers"  # "layers": one ranking per layer (head mean); "none"
    aopc_bounds: str = "none"  # "greedy": greedy best/worst removal orders, for normalised AOPC
    input_to_repr: str = "norm"  # "norm": paper eq. 5; "jacobian": Frobenius norm of the Jacobian block
    seed: int = 0
    max_tokens: int = 16384
    max_grad_tokens: int = 4096
    token_map_indices: frozenset = field(default_factory=frozenset)  # examples whose token-level maps to keep

    def ranking_names(self, n_layers: int) -> list[str]:
        names = [f"attention_layer_{l}" for l in range(n_layers)] if self.faithfulness_attention == "layers" else []
        return names + ["rollout", *INPUT_METHODS, "random"]

    def to_dict(self) -> dict:
        return {"attention_query": self.attention_query, "ig_steps": self.ig_steps, "ig_baseline": self.ig_baseline,
                "ig_tolerance": self.ig_tolerance, "ig_max_steps": self.ig_max_steps,
                "fractions": list(self.fractions), "faithfulness_attention": self.faithfulness_attention,
                "aopc_bounds": self.aopc_bounds, "input_to_repr": self.input_to_repr, "seed": self.seed}


def _compare(source: torch.Tensor, importance: torch.Tensor, mask: torch.Tensor, prefix: str, out: dict) -> None:
    """Every comparison metric between source [B, n, H, L] and importance [B, n, M, L] -> out[prefix.metric] [B, n, H, M].

    ``mask`` [B, L] marks the positions compared. The raw tau-b, tau-b on attention's support, on the union of the
    two supports, its expectation under the structure-preserving permutation null and the excess over that null.
    """
    mask = mask[:, None, :]
    out[f"{prefix}.kendall_tau_b"] = M.kendall_tau_b_cross(source, importance, mask)
    out[f"{prefix}.kendall_tau_b_on_support"] = M.kendall_tau_b_cross(source, importance, mask, on_support=True)
    out[f"{prefix}.kendall_tau_b_on_union"] = M.kendall_tau_b_on_union_cross(source, importance, mask)
    out[f"{prefix}.kendall_tau_b_null"] = M.kendall_tau_b_null_cross(source, importance, mask)
    out[f"{prefix}.kendall_tau_b_excess"] = out[f"{prefix}.kendall_tau_b"] - out[f"{prefix}.kendall_tau_b_null"]
    x = source[:, :, :, None, :]
    y = importance[:, :, None, :, :]
    pair_mask = mask[:, :, None, None, :]
    out[f"{prefix}.jensen_shannon"] = M.jensen_shannon(x, y, pair_mask)
    for key, value in M.support_coverage(x, y, pair_mask).items():
        out[f"{prefix}.{key}"] = value


def _summarise(source: torch.Tensor, mask: torch.Tensor, prefix: str, out: dict) -> None:
    mask = mask[:, None, None, :]
    out[f"{prefix}.entropy"] = M.normalised_entropy(source, mask)
    out[f"{prefix}.sparsity"] = M.sparsity(source, mask)
    out[f"{prefix}.support_size"] = M.support_size(source, mask)


def _metric_rows(attention, inputs, representations, rolled, projected, input_to_repr, content, real) -> dict:
    """Every per-example metric of the module docstring except faithfulness, IG's gap and the example facts."""
    n_layers = attention.shape[1]

    out: dict[str, torch.Tensor] = {}
    input_stack = torch.stack([inputs[m] for m in INPUT_METHODS], dim=1).double()  # [B, M_in, L]
    per_layer_inputs = input_stack[:, None].expand(-1, n_layers, -1, -1)
    representation_stack = torch.stack([representations[m] for m in REPRESENTATION_METHODS], dim=2).double()
    all_methods = torch.cat([per_layer_inputs, representation_stack], dim=2)  # [B, n, M, L]

    _summarise(attention, content, "attention", out)
    content_mass = (attention * content[:, None, None, :]).sum(dim=-1)
    out["attention.special_mass"] = 1 - content_mass / attention.sum(dim=-1)
    _compare(attention, all_methods, content, "attention", out)

    everywhere = torch.stack([all_methods[:, :, IMPORTANCE_METHODS.index(m)] for m in ALL_POSITIONS_METHODS], dim=2)
    _summarise(attention, real, "all_positions", out)
    _compare(attention, everywhere, real, "all_positions", out)

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


def _random_scores(indices: list[int], lengths: list[int], padded_length: int, seed: int) -> torch.Tensor:
    """A random ranking per example from (seed, example index, its own length) alone, not from its batch."""
    scores = np.zeros((len(indices), padded_length))
    for row, (index, length) in enumerate(zip(indices, lengths)):
        scores[row, :length] = np.random.default_rng([seed, index]).random(length)
    return torch.tensor(scores)


@contextmanager
def _timed(timings: dict | None, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


ROW_FLOAT_PREFIXES = ("attention.", "all_positions.", "rollout.", "projected.", "importance.", "input_to_repr.",
                      "faithfulness.", "integrated_gradients.completeness_gap")


def _faithfulness_rows(ctx, config: MeasureConfig, rankings: dict, indices: list[int], out: dict) -> None:
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    keys = tie_break_keys(indices, lengths, ctx.batch.length, config.seed)
    comprehensiveness, sufficiency = faithfulness_curves(ctx, rankings, config.fractions, tie_break=keys)
    out["faithfulness.comprehensiveness"] = comprehensiveness
    out["faithfulness.sufficiency"] = sufficiency
    if config.aopc_bounds == "greedy":
        upper, lower = greedy_comprehensiveness_bounds(ctx, config.fractions)
        out["faithfulness.comprehensiveness_upper"] = upper
        out["faithfulness.comprehensiveness_lower"] = lower


def measure_batch(classifier, batch: TokenBatch, labels: list[int], indices: list[int], config: MeasureConfig,
                  timings: dict | None = None):
    """Run every measurement on one batch; return (arrays, token_maps).

    ``arrays`` maps keys (module docstring) to numpy arrays with the examples first (metrics float32);
    ``token_maps`` maps an example index in ``config.token_map_indices`` to its token-level attention and
    importance vectors. ``timings``, if given, accumulates seconds per stage.
    """
    ctx = ForwardContext(classifier, batch, max_tokens=config.max_tokens, max_grad_tokens=config.max_grad_tokens)
    with _timed(timings, "forward_and_gradients"):
        base = ctx.base
        content = ctx.batch.content_mask
        real = ctx.batch.attention_mask.bool()
        n_layers = len(base.attentions)
        # Everything that needs the base pass's graph first, then free it.
        inputs = {"grad_norm": GradientNorm()(ctx), "grad_x_input": GradientXInput()(ctx)}
        representations = {"repr_grad_norm": RepresentationGradientNorm()(ctx)}
    with _timed(timings, "input_to_repr"):
        input_to_repr = InputToRepresentation(mode=config.input_to_repr)(ctx)
    ctx.release()
    with _timed(timings, "integrated_gradients"):
        ig = IntegratedGradients(config.ig_steps, config.ig_baseline, config.ig_tolerance, config.ig_max_steps)
        signed, ig_gap, ig_steps = ig.attribute(ctx)
        inputs["integrated_gradients"] = signed.abs()
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
        out = _metric_rows(attention, inputs, representations, rolled, projected, input_to_repr, content, real)
    out["integrated_gradients.completeness_gap"] = ig_gap
    out["integrated_gradients.steps"] = ig_steps

    rankings = {}
    if config.faithfulness_attention == "layers":
        for layer in range(n_layers):
            rankings[f"attention_layer_{layer}"] = attention[:, layer].mean(dim=1)
    rankings["rollout"] = rollout_method.full(ctx)
    rankings.update({m: inputs[m] for m in INPUT_METHODS})
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    rankings["random"] = _random_scores(indices, lengths, ctx.batch.length, config.seed).to(content.device)
    assert list(rankings) == config.ranking_names(n_layers)
    with _timed(timings, "faithfulness"):
        _faithfulness_rows(ctx, config, rankings, indices, out)

    out["example.label"] = torch.tensor(labels)
    out["example.prediction"] = base.prediction
    out["example.probability"] = base.target
    out["example.n_tokens"] = ctx.batch.attention_mask.sum(dim=1)
    out["example.n_content"] = content.sum(dim=1)
    arrays = {k: v.detach().cpu().to(torch.float64).numpy().astype(np.float32) if k.startswith(ROW_FLOAT_PREFIXES)
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
