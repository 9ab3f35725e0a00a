"""Read an evaluation suite ``results.json`` (docs/CONTRACTS.md section 4), check it, and reduce it to card scores.

Everything a card shows is derived here from the per layer x head records, with the definitions written next to
the numbers in the card, so the card never depends on how the evaluation suite chose to summarise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hf_sparse_attn.constants import TOKEN_EXAMPLES_FILE

from .errors import CardError

# The importance method whose agreement with attention the card summarises: gradient feature importance of the
# inputs, g(x_i) = ||d y_hat / d e_i|| normalised (measurement 1 in shared/PAPER.md).
GRADIENT_METHOD = "grad_norm"

_NUMBER = (int, float)
_TOP_LEVEL_FIELDS = {
    "weights_fingerprint": str,
    "attn_impl": str,
    "dataset": str,
    "split": str,
    "n_examples": int,
    "accuracy": _NUMBER,
    "macro_f1": _NUMBER,
    "n_layers": int,
    "n_heads": int,
    "importance_methods": list,
    "per_layer_head": list,
    "per_layer": list,
}
_RERUN = "re-run the evaluation suite on this checkpoint to get a complete results.json"


def _is_number(value) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _finite_or_none(value) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _mean(values) -> float | None:
    """Mean of the finite values (tau-b is NaN when a vector is constant); None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


@dataclass(frozen=True)
class CardScores:
    """The summary interpretability scores a card reports (each None when it cannot be computed)."""

    mean_attention_sparsity: float
    mean_support_size: float | None
    tau_by_layer: list[float | None]  # mean over heads of the per-instance mean tau-b, per layer
    best_layer: int | None
    tau_best_layer: float | None
    last_layer: int
    tau_last_layer: float | None
    mean_input_to_repr_entropy: float | None
    gradient_method: str


def load_results(results_path, *, gradient_method: str = GRADIENT_METHOD) -> dict:
    """Parse and check a results.json; raise CardError naming the first problem. Returns the parsed dict."""
    path = Path(results_path)
    if not path.is_file():
        raise CardError(f"results file {path} does not exist; run the evaluation suite first or pass --results PATH")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CardError(f"{path} is not valid JSON ({err}); {_RERUN}") from None
    if not isinstance(results, dict):
        raise CardError(f"{path} holds a JSON {type(results).__name__}, not an object; {_RERUN}")

    missing = [k for k in _TOP_LEVEL_FIELDS if k not in results]
    if missing:
        raise CardError(f"{path.name} lacks required field(s) {', '.join(missing)}; {_RERUN}")
    for key, kind in _TOP_LEVEL_FIELDS.items():
        value = results[key]
        ok = _is_number(value) if kind is _NUMBER else isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            raise CardError(f"{path.name} field {key!r} should be {getattr(kind, '__name__', 'a number')}, "
                            f"got {type(value).__name__}; {_RERUN}")
    if not str(results["weights_fingerprint"]).startswith("sha256:"):
        raise CardError(f"{path.name} weights_fingerprint {results['weights_fingerprint']!r} is not 'sha256:<hex>'; {_RERUN}")
    if gradient_method not in results["importance_methods"]:
        raise CardError(f"{path.name} has no {gradient_method!r} importance (has: {', '.join(map(str, results['importance_methods'])) or 'none'}); "
                        f"re-run the evaluation with it or pass --gradient-method NAME")
    plots = results.get("plots", [])
    if not isinstance(plots, list) or not all(isinstance(p, str) for p in plots):
        raise CardError(f"{path.name} field 'plots' should be a list of relative paths; {_RERUN}")

    n_layers, n_heads = results["n_layers"], results["n_heads"]
    seen = set()
    for i, rec in enumerate(results["per_layer_head"]):
        where = f"{path.name} per_layer_head[{i}]"
        if not isinstance(rec, dict):
            raise CardError(f"{where} is not an object; {_RERUN}")
        for key in ("layer", "head", "sparsity", "kendall_tau_b"):
            if key not in rec:
                raise CardError(f"{where} lacks required field {key!r}; {_RERUN}")
        if not _is_number(rec["sparsity"]):
            raise CardError(f"{where} sparsity should be a number; {_RERUN}")
        tau = rec["kendall_tau_b"].get(gradient_method) if isinstance(rec["kendall_tau_b"], dict) else None
        if not isinstance(tau, dict) or "mean" not in tau:
            raise CardError(f"{where} lacks kendall_tau_b.{gradient_method}.mean; {_RERUN}")
        seen.add((rec["layer"], rec["head"]))
    expected = {(layer, head) for layer in range(n_layers) for head in range(n_heads)}
    if seen != expected:
        raise CardError(f"{path.name} per_layer_head covers {len(seen)} of the {n_layers} x {n_heads} layer/head pairs "
                        f"(0-based); {_RERUN}")
    layers_seen = set()
    for i, rec in enumerate(results["per_layer"]):
        entropy = rec.get("input_to_repr_entropy") if isinstance(rec, dict) else None
        if not isinstance(entropy, dict) or "mean" not in entropy or "layer" not in rec:
            raise CardError(f"{path.name} per_layer[{i}] lacks layer or input_to_repr_entropy.mean; {_RERUN}")
        layers_seen.add(rec["layer"])
    if layers_seen != set(range(n_layers)):
        raise CardError(f"{path.name} per_layer covers layers {sorted(layers_seen)}, expected 0..{n_layers - 1}; {_RERUN}")
    return results


def card_scores(results: dict, *, gradient_method: str = GRADIENT_METHOD) -> CardScores:
    """Summary scores, computed from the per layer x head records of a checked results dict."""
    n_layers = results["n_layers"]
    heads = results["per_layer_head"]
    tau_by_layer = []
    for layer in range(n_layers):
        taus = [_finite_or_none(r["kendall_tau_b"][gradient_method]["mean"]) for r in heads if r["layer"] == layer]
        tau_by_layer.append(_mean(taus))
    ranked = [layer for layer in range(n_layers) if tau_by_layer[layer] is not None]
    best_layer = max(ranked, key=lambda layer: (tau_by_layer[layer], -layer)) if ranked else None
    entropies = [_finite_or_none(r["input_to_repr_entropy"]["mean"]) for r in results["per_layer"]]
    support = [_finite_or_none(r.get("support_size")) for r in heads]
    return CardScores(
        mean_attention_sparsity=_mean(float(r["sparsity"]) for r in heads),
        mean_support_size=_mean(support),
        tau_by_layer=tau_by_layer,
        best_layer=best_layer,
        tau_best_layer=tau_by_layer[best_layer] if best_layer is not None else None,
        last_layer=n_layers - 1,
        tau_last_layer=tau_by_layer[n_layers - 1],
        mean_input_to_repr_entropy=_mean(entropies),
        gradient_method=gradient_method,
    )


def plot_sources(results: dict, results_path) -> list[tuple[str, Path]]:
    """(relative path, absolute source) for each plot results.json lists; refuses paths outside its folder."""
    base = Path(results_path).resolve().parent
    sources = []
    for rel in results.get("plots", []):
        source = (base / rel).resolve()
        if Path(rel).is_absolute() or base not in source.parents:
            raise CardError(f"plot path {rel!r} in results.json must be relative and inside {base}; {_RERUN}")
        if not source.is_file():
            raise CardError(f"plot {rel!r} listed in results.json is missing next to it ({source}); {_RERUN}")
        if source.suffix.lower() != ".png":
            raise CardError(f"plot {rel!r} is not a .png; the card embeds PNG images only")
        sources.append((source.relative_to(base).as_posix(), source))
    return sources


def load_token_examples(results_path) -> dict | None:
    """The token_examples.json the evaluation wrote beside ``results_path`` (None when there is none), for the
    report's token view; CardError when it is there but unreadable."""
    path = Path(results_path).resolve().parent / TOKEN_EXAMPLES_FILE
    if not path.is_file():
        return None
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CardError(f"{path} is not valid JSON ({err}); {_RERUN}") from None
    if not isinstance(examples, dict) or not all(isinstance(v, dict) and "tokens" in v for v in examples.values()):
        raise CardError(f"{path.name} should map example indices to their tokens and maps; {_RERUN}")
    return examples
