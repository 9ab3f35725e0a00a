"""Faithfulness of token rankings: comprehensiveness and sufficiency (AOPC) of the rankings by each layer's
attention, every map's whole-network ranking, every input method and a seeded random ranking
(:mod:`eval_suite.faithfulness` computes them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..cost import Cost, chunks, forward_flops
from ..errors import EvalError
from ..registry import Measure, declare, methods_with_role, selected

DEFAULT_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
AOPC_BOUNDS = ("none", "greedy")


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--fractions takes comma-separated numbers in (0, 1], got {text!r}") from None


@dataclass
class FaithfulnessParams:
    fractions: tuple = field(default=DEFAULT_FRACTIONS, metadata={
        "help": "removal fractions of comprehensiveness / sufficiency", "metavar": "F,F,...",
        "parse": _fractions})
    faithfulness_attention: str = field(default="layers", metadata={
        "help": "rank tokens by each layer's head-mean attention too (layers) or not (none)",
        "choices": ("layers", "none")})
    aopc_bounds: str = field(default="none", metadata={
        "help": "'greedy': greedy best/worst removal orders per example, for normalised AOPC (about n_content x "
                "k_max forward passes per example)", "choices": AOPC_BOUNDS})

    def validate(self) -> None:
        if self.aopc_bounds not in AOPC_BOUNDS:
            raise EvalError(f"--aopc-bounds must be one of {', '.join(AOPC_BOUNDS)}, got {self.aopc_bounds!r}")
        if self.faithfulness_attention not in ("layers", "none"):
            raise EvalError(f"--faithfulness-attention must be 'layers' or 'none', got "
                            f"{self.faithfulness_attention!r}")
        if not self.fractions or any(not (0 < f <= 1) for f in self.fractions):
            raise EvalError(f"--fractions must be numbers in (0, 1], got {list(self.fractions)}")


def ranking_names(settings, n_layers: int) -> list[str]:
    """Every ranking faithfulness scores, in results order: each layer's attention, each map's whole-network
    ranking, each input method, random."""
    p = settings.params_of("faithfulness")
    names = [f"attention_layer_{l}" for l in range(n_layers)] if p.faithfulness_attention == "layers" else []
    maps = [m.name for m in selected(settings.measures) if m.role == "map" and m.ranking is not None]
    return names + maps + [*methods_with_role(settings.measures, "input"), "random"]


def _random_scores(indices: list[int], lengths: list[int], padded_length: int, seed: int):
    """A random ranking per example from (seed, example index, its own length) alone, not from its batch."""
    import numpy as np
    import torch

    scores = np.zeros((len(indices), padded_length))
    for row, (index, length) in enumerate(zip(indices, lengths)):
        scores[row, :length] = np.random.default_rng([seed, index]).random(length)
    return torch.tensor(scores)


def _rows(ctx, settings, state, out: dict) -> None:
    from ..faithfulness import faithfulness_curves, greedy_comprehensiveness_bounds, tie_break_keys

    p = settings.params_of("faithfulness")
    n_layers = state.attention.shape[1]
    rankings = {}
    if p.faithfulness_attention == "layers":
        for layer in range(n_layers):
            rankings[f"attention_layer_{layer}"] = state.attention[:, layer].mean(dim=1)
    rankings.update(state.rankings)
    rankings.update({m: state.values[m] for m in methods_with_role(settings.measures, "input")})
    lengths = ctx.batch.attention_mask.sum(dim=1).tolist()
    rankings["random"] = _random_scores(state.indices, lengths, ctx.batch.length, settings.seed).to(
        ctx.batch.content_mask.device)
    assert list(rankings) == ranking_names(settings, n_layers)
    keys = tie_break_keys(state.indices, lengths, ctx.batch.length, settings.seed)
    comprehensiveness, sufficiency = faithfulness_curves(ctx, rankings, p.fractions, tie_break=keys)
    out["faithfulness.comprehensiveness"] = comprehensiveness
    out["faithfulness.sufficiency"] = sufficiency
    if p.aopc_bounds == "greedy":
        upper, lower = greedy_comprehensiveness_bounds(ctx, p.fractions)
        out["faithfulness.comprehensiveness_upper"] = upper
        out["faithfulness.comprehensiveness_lower"] = lower


def _cost(shape, model, config, measures) -> Cost:
    p = config.params_of("faithfulness")
    rankings = (model.n_layers if p.faithfulness_attention == "layers" else 0) + \
        sum(1 for m in selected(measures) if (m.role == "map" and m.ranking is not None) or m.role == "input") + 1
    lengths = []
    for t, c in zip(shape.lengths, shape.n_content):
        for fraction in p.fractions:
            k = min(max(1, math.ceil(fraction * c - 1e-9)), max(c, 1))
            lengths += [t - k, t - c + k]  # without the top k; only the top k (and the special tokens)
    variants = rankings * len(lengths)
    flops = rankings * forward_flops(model, lengths)
    if p.aopc_bounds == "greedy":
        for t, c in zip(shape.lengths, shape.n_content):
            k_max = min(max(1, math.ceil(max(p.fractions) * c - 1e-9)), max(c, 1))
            flops += 2 * sum((c - s) * forward_flops(model, [t - s - 1]) for s in range(k_max))
            variants += 2 * sum(c - s for s in range(k_max))
    return Cost(flops, chunks(variants, shape.length, config.max_tokens))


def _results(agg, settings) -> dict:
    import numpy as np

    from ..statistics import Stats, finite_or_none

    names, fractions = ranking_names(settings, agg.n_layers), list(settings.params_of("faithfulness").fractions)

    def stat(values):
        return Stats(values, agg.bootstrap, agg.min_n).at()

    rows = agg.rows
    comprehensiveness, sufficiency = rows["faithfulness.comprehensiveness"], rows["faithfulness.sufficiency"]
    random = names.index("random")
    aopc_c, aopc_s = comprehensiveness.mean(axis=-1), sufficiency.mean(axis=-1)  # [N, R]
    upper, lower = rows.get("faithfulness.comprehensiveness_upper"), rows.get("faithfulness.comprehensiveness_lower")
    rankings = {}
    for r, name in enumerate(names):
        entry = {
            "comprehensiveness": stat(aopc_c[:, r]),
            "sufficiency": stat(aopc_s[:, r]),
            "comprehensiveness_minus_random": stat(aopc_c[:, r] - aopc_c[:, random]),
            "sufficiency_minus_random": stat(aopc_s[:, r] - aopc_s[:, random]),
            "comprehensiveness_per_fraction": [finite_or_none(np.nanmean(comprehensiveness[:, r, f]))
                                               for f in range(len(fractions))],
            "sufficiency_per_fraction": [finite_or_none(np.nanmean(sufficiency[:, r, f]))
                                         for f in range(len(fractions))],
        }
        if upper is not None:
            span = upper.mean(axis=-1) - lower.mean(axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                normalised = np.where(span > 1e-6, (aopc_c[:, r] - lower.mean(axis=-1)) / span, np.nan)
            entry["normalised_comprehensiveness"] = stat(normalised)
        rankings[name] = entry
    out = {"fractions": fractions, "rankings": rankings,
           "tie_breaking": "seeded random order among equal scores, per example",
           "bounds": "greedy" if upper is not None else None}
    if upper is not None:
        out["comprehensiveness_upper"] = stat(upper.mean(axis=-1))
        out["comprehensiveness_lower"] = stat(lower.mean(axis=-1))
    return out


def _summary(agg, results) -> dict:
    faith = results["faithfulness"]["rankings"]
    scored = [(v["comprehensiveness_minus_random"]["mean"], k) for k, v in faith.items()
              if k != "random" and v["comprehensiveness_minus_random"]["mean"] is not None]
    return {"most_comprehensive_ranking": max(scored)[1] if scored else None}


declare(Measure(
    "faithfulness", "check", "full",
    "comprehensiveness / sufficiency (AOPC) of rankings by attention, rollout and each input method", order=100,
    cost=_cost, params=FaithfulnessParams, rows=_rows, results_block=_results, summary=_summary,
    summary_text=lambda s, results: [f"most comprehensive ranking (AOPC minus random): "
                                     f"{s['most_comprehensive_ranking']}"]))
