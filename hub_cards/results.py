"""Read an evaluation suite ``results.json`` (docs/CONTRACTS.md section 4), check it, and pick the card's scores.

The card shows the evaluation suite's own aggregates (each with its n, its 95% interval and its defined flag), never
a re-averaging of them: one definition of each number across results, cards and reports. The headline agreement is
the excess of tau-b over the structure-preserving null (docs/eval_suite.md), with the raw tau-b beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from eval_suite.agreement import HEADLINE, NULL, RAW
from hf_sparse_attn.constants import TOKEN_EXAMPLES_FILE
from hf_sparse_attn.files import read_json

from .errors import CardError

# The importance method whose agreement with attention the card summarises: gradient feature importance of the
# inputs, g(x_i) = ||d y_hat / d e_i|| normalised (measurement 1 of Meister et al. 2021).
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
    "summary": dict,
}
_RERUN = "re-run the evaluation suite on this checkpoint to get a complete results.json"
# What an evaluation measured (results.json "measures"); files written before measurement selection measured all.
LEGACY_MEASURES = ("grad_norm", "grad_x_input", "integrated_gradients", "loo", "repr_grad_norm", "repr_loo", "rollout",
                   "input_to_repr", "projected", "faithfulness")


def measured(results: dict) -> list[str]:
    """The measurements a results dict holds (every one, for files older than measurement selection)."""
    value = results.get("measures")
    return list(value) if isinstance(value, list) else list(LEGACY_MEASURES)


def _is_number(value) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def null_is_zero(stat) -> bool:
    """Whether a defined null stat is exactly 0 on every value it pools (mean and spread both 0), so that the excess
    equals the raw tau-b: the zero patterns alone predict no agreement."""
    if not is_stat(stat) or not stat.get("defined") or not stat.get("n"):
        return False
    spread = stat.get("std") if "std" in stat else max(map(abs, stat.get("ci95") or [1.0]))
    return stat.get("mean") == 0 and spread == 0


def is_stat(value) -> bool:
    return isinstance(value, dict) and "mean" in value and "n" in value and "defined" in value


def stat_mean(stat) -> float | None:
    """The mean of a defined stat, else None (undefined stays undefined)."""
    if not is_stat(stat) or not stat.get("defined"):
        return None
    value = stat.get("mean")
    return float(value) if _is_number(value) and math.isfinite(value) else None


@dataclass(frozen=True)
class LayerScore:
    """Attention's agreement with the card's importance method in one layer (pooled over its defined heads)."""

    layer: int
    excess: dict  # stat: tau-b minus its structure-preserving null
    raw: dict  # stat: raw tau-b over content tokens
    on_support: dict  # stat: tau-b over attention's support
    n_heads_defined: int
    n_heads: int
    null: dict | None = None  # stat: the structure-preserving null subtracted from raw (None: older results)


@dataclass(frozen=True)
class CardScores:
    """The interpretability scores a card reports, as the evaluation suite aggregated them."""

    gradient_method: str
    n_examples: int
    layers: list[LayerScore]
    last_layer: int  # the one layer a card reports alone: fixed in advance, never picked on the numbers
    attention_sparsity: dict  # stat, [CLS] (or mean-query) attention over content tokens, pooled
    special_mass: dict  # stat
    heads_defined: dict  # {"n", "of", "share"}
    input_to_repr_entropy: dict | None  # stat, layers >= 1 (None: eq. 5 not measured)
    overall_excess: dict  # stat over every defined head: the card's headline agreement
    overall_raw: dict
    diagnostics: tuple  # (label, value, meaning) per measured diagnostic, as its measure declares
    overall_null: dict | None
    warnings: list[str]
    measures: tuple = ()  # what the evaluation measured
    not_measured: tuple = ()  # registered measurements it left out

    def layer(self, index: int | None) -> LayerScore | None:
        return None if index is None else self.layers[index]


def load_results(results_path, *, gradient_method: str = GRADIENT_METHOD) -> dict:
    """Parse and check a results.json; raise CardError naming the first problem. Returns the parsed dict."""
    path = Path(results_path)
    if not path.is_file():
        raise CardError(f"results file {path} does not exist; run the evaluation suite first or pass --results PATH")
    results = read_json(path, CardError, _RERUN)
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
    _check_heads(results, path.name, gradient_method)
    _check_layers(results, path.name, gradient_method)
    _check_reported_numbers(results, path.name, gradient_method)
    return results


def _check_number(value, where: str, low: float, high: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and low <= value <= high):
        raise CardError(f"{where} is {value!r}; it should be a number in [{low:g}, {high:g}]; {_RERUN}")


def _check_reported_numbers(results: dict, name: str, gradient_method: str) -> None:
    """The numbers a card shows on its first screen and in its model-index: finite and in range (a NaN, an inf or
    an accuracy of 12345 is a damaged or edited file, never a score to publish)."""
    for key in ("accuracy", "macro_f1"):
        _check_number(results[key], f"{name} field {key!r}", 0, 1)
    for bound in results.get("accuracy_ci95") or []:
        _check_number(bound, f"{name} field 'accuracy_ci95'", 0, 1)
    if results["n_examples"] < 1:
        raise CardError(f"{name} field 'n_examples' is {results['n_examples']}; it should be at least 1; {_RERUN}")
    summary = results["summary"]
    blocks = [("summary", summary["agreement"].get(gradient_method) or {})]
    blocks += [(f"per_layer[{i}]", rec["agreement"][gradient_method]) for i, rec in enumerate(results["per_layer"])]
    stats = [(f"{where}.agreement.{gradient_method}.{key}", block.get(key), low)
             for where, block in blocks for key, low in ((RAW, -1), (NULL, -1), (HEADLINE, -2))]
    stats += [(f"summary.{key}", summary.get(key), 0) for key in ("attention_sparsity", "input_to_repr_entropy")]
    for where, stat, low in stats:
        if is_stat(stat) and stat.get("defined"):
            for part, value in [("mean", stat["mean"])] + [("ci95", v) for v in stat.get("ci95") or []]:
                _check_number(value, f"{name} {where}.{part}", low, 1 if low >= -1 else 2)


def _check_heads(results: dict, name: str, gradient_method: str) -> None:
    n_layers, n_heads = results["n_layers"], results["n_heads"]
    records = len(results["per_layer_head"])
    for key in ("n_layers", "n_heads"):
        if results[key] < 1:
            raise CardError(f"{name} field {key!r} must be >= 1, got {results[key]}; {_RERUN}")
    # Checked before the expected pairs are enumerated: a tampered count (1e9 x 1e9) must not allocate them.
    if n_layers * n_heads != records:
        largest = "n_layers" if n_layers >= n_heads else "n_heads"
        raise CardError(f"{name} field {largest} {results[largest]} does not match its per_layer_head: "
                        f"{n_layers} x {n_heads} layer/head pairs, but {records} records; {_RERUN}")
    seen = set()
    for i, rec in enumerate(results["per_layer_head"]):
        where = f"{name} per_layer_head[{i}]"
        if not isinstance(rec, dict):
            raise CardError(f"{where} is not an object; {_RERUN}")
        for key in ("layer", "head", "attention_sparsity", RAW, HEADLINE):
            if key not in rec:
                raise CardError(f"{where} lacks required field {key!r} (written by an older evaluation suite?); "
                                f"{_RERUN}")
        if not is_stat(rec["attention_sparsity"]):
            raise CardError(f"{where} attention_sparsity should be a stat (mean, n, defined); {_RERUN}")
        for metric in (RAW, HEADLINE):
            block = rec[metric]
            if not isinstance(block, dict) or not is_stat(block.get(gradient_method)):
                raise CardError(f"{where} lacks {metric}.{gradient_method} (mean, n, defined); {_RERUN}")
        seen.add((rec["layer"], rec["head"]))
    expected = {(layer, head) for layer in range(n_layers) for head in range(n_heads)}
    if seen != expected:
        raise CardError(f"{name} per_layer_head covers {len(seen)} of the {n_layers} x {n_heads} layer/head pairs "
                        f"(0-based); {_RERUN}")


def _check_layers(results: dict, name: str, gradient_method: str) -> None:
    layers_seen = set()
    eq5 = "input_to_repr" in measured(results)
    for i, rec in enumerate(results["per_layer"]):
        agreement = rec.get("agreement", {}).get(gradient_method, {}) if isinstance(rec, dict) else {}
        entropy_ok = not eq5 or is_stat(rec.get("input_to_repr_entropy") if isinstance(rec, dict) else None)
        if not entropy_ok or "layer" not in rec or not is_stat(agreement.get(HEADLINE)):
            raise CardError(f"{name} per_layer[{i}] lacks layer, input_to_repr_entropy or "
                            f"agreement.{gradient_method}.{HEADLINE}; {_RERUN}")
        layers_seen.add(rec["layer"])
    if layers_seen != set(range(results["n_layers"])):
        raise CardError(f"{name} per_layer covers layers {sorted(layers_seen)}, expected "
                        f"0..{results['n_layers'] - 1}; {_RERUN}")
    summary = results["summary"]
    for key in ("agreement", "heads_defined", "attention_sparsity") + (("input_to_repr_entropy",) if eq5 else ()):
        if key not in summary:
            raise CardError(f"{name} summary lacks {key!r} (written by an older evaluation suite?); {_RERUN}")


def card_scores(results: dict, *, gradient_method: str = GRADIENT_METHOD) -> CardScores:
    """The scores of a checked results dict: per layer, the pooled agreement; overall, the suite's summary."""
    layers = []
    for rec in sorted(results["per_layer"], key=lambda r: r["layer"]):
        agreement = rec["agreement"][gradient_method]
        layers.append(LayerScore(rec["layer"], agreement[HEADLINE], agreement[RAW],
                                 agreement.get("kendall_tau_b_on_support", {}), rec.get("n_heads_defined", 0),
                                 rec.get("n_heads", results["n_heads"]), agreement.get(NULL)))
    summary = results["summary"]
    overall = summary["agreement"][gradient_method]
    return CardScores(
        gradient_method=gradient_method,
        n_examples=results["n_examples"],
        layers=layers,
        last_layer=results["n_layers"] - 1,
        attention_sparsity=summary["attention_sparsity"],
        special_mass=summary.get("special_mass", {}),
        heads_defined=summary["heads_defined"],
        input_to_repr_entropy=summary.get("input_to_repr_entropy"),
        overall_excess=overall[HEADLINE],
        overall_raw=overall[RAW],
        diagnostics=diagnostic_rows(results),
        overall_null=overall.get(NULL),
        warnings=list(summary.get("warnings", [])),
        measures=tuple(measured(results)),
        not_measured=tuple(results.get("measures_left_out") or ()),
    )


def diagnostic_rows(results: dict) -> tuple:
    """The card row of every diagnostic the evaluation recorded, as the measure that records it declares."""
    from eval_suite.errors import EvalError
    from eval_suite.registry import get

    rows = []
    for name in measured(results):
        try:
            diagnostics = get(name).diagnostics
        except EvalError:  # a measure this version does not know: nothing to show for it
            continue
        if diagnostics is not None and diagnostics.card is not None and isinstance(results.get(name), dict):
            row = diagnostics.card(results[name])
            if row is not None:
                rows.append(row)
    return tuple(rows)


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
    examples = read_json(path, CardError, _RERUN)
    if not isinstance(examples, dict) or not all(isinstance(v, dict) and "tokens" in v for v in examples.values()):
        raise CardError(f"{path.name} should map example indices to their tokens and maps; {_RERUN}")
    return examples
