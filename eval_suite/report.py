"""report.html: one self-contained interactive page per evaluation (and per comparison of two evaluations).

    write_report(out_dir, results, token_examples) -> Path          # OUTDIR/report.html
    write_compare_report(path, results_a, results_b, differences)  # two checkpoints' grids and their differences

The page embeds its data as JSON and its script and styles inline (``report_assets/``): no network, no CDN, no
JavaScript library, so it opens by double-click, offline, years later. It shows a layer x head grid of any
metric of :data:`GRID_METRICS` (numbers on hover, undefined cells hatched with their reason), the token view of a
clicked head for the stored examples (its attention beside each importance and context-mixing map), per-layer
charts and the faithfulness of every ranking. The page reads only what results.json and token_examples.json hold:
it never recomputes a measurement.

Written by hand because no library installed with the project draws an offline, dependency-free interactive
page: matplotlib's outputs are static, and the interactive plotting libraries load their script from a CDN or
embed megabytes of it.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hf_sparse_attn.constants import REPORT_FILE
from hf_sparse_attn.files import atomic_write_text

from .agreement import grid_metrics
from .errors import EvalError

TOKEN_DIGITS = 4  # significant digits of token weights on the page: exact zeros stay 0, small ones non-zero
FINGERPRINT_META = "hf-sparse-attn-weights-fingerprint"


@dataclass(frozen=True)
class GridMetric:
    """A layer x head quantity the grid can show, read from ``results["per_layer_head"][i][key]``."""

    key: str
    label: str
    help: str
    per_method: bool = False  # a dict {importance method: statistic} rather than one statistic
    scale: str = "sequential"  # "diverging" (centred on 0) or "sequential"
    domain: tuple | None = (0.0, 1.0)  # fixed colour range; None: symmetric around 0 from the data
    fallback: str | None = None  # older name of the same field in results files written before it was renamed


HEAD_QUANTITIES: tuple[GridMetric, ...] = (
    GridMetric("attention_entropy", "attention entropy",
               "Normalised entropy of the head's attention over content tokens: 1 uniform, 0 one token."),
    GridMetric("attention_sparsity", "attention sparsity",
               "Share of content tokens with exactly zero attention.", fallback="sparsity"),
    GridMetric("special_mass", "mass on special tokens",
               "Share of the head's attention on [CLS], [SEP] and other tokenizer-added tokens."),
    GridMetric("defined_share", "defined share",
               "Share of examples where the head's agreement metrics are defined."),
    GridMetric("support_size", "support size", "Number of tokens with non-zero attention.", domain=None),
)
# The agreement metrics the grid offers (declared in eval_suite.agreement, the headline first), then the heads' own.
GRID_METRICS: tuple[GridMetric, ...] = tuple(
    GridMetric(m.name, m.label, m.help, per_method=True, scale=m.scale, domain=m.domain) for m in grid_metrics()
) + HEAD_QUANTITIES
LAYER_METRICS = (
    ("input_to_repr_entropy", "input-to-representation entropy",
     "Normalised entropy of how much each input token contributes to a layer's representations (eq. 5)."),
    ("coindexed_share", "co-indexed share",
     "Share of a representation's input attribution that comes from its own position's token."),
)


def _finite(value):
    """A number as it is (so the page's numbers are the file's numbers, rounded once); NaN, None -> None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _rounded(values):
    """Nested lists of token weights rounded for the page (``TOKEN_DIGITS`` significant digits); NaN -> None."""
    if isinstance(values, (list, tuple)):
        return [_rounded(v) for v in values]
    value = _finite(values)
    return None if value is None else float(f"{value:.{TOKEN_DIGITS}g}")


def statistic(value, entry: dict | None = None, key: str | None = None) -> list:
    """One statistic as ``[mean, std, n, ci_lo, ci_hi, defined, reason]`` for the page.

    Takes a ``{"mean", "std", "n", "ci95", "defined", "reason"}`` dict, a dict with only some of them, or a bare
    number (then ``std`` and ``n`` come from ``entry[key + "_std"]`` and ``entry["n_defined"]`` where present).
    Undefined always carries a reason.
    """
    if isinstance(value, dict):
        mean, std, n = value.get("mean"), value.get("std"), value.get("n")
        ci = value.get("ci95")
        defined = value.get("defined", mean is not None)
        reason = value.get("reason")
    else:
        mean, ci = value, None
        std = (entry or {}).get(f"{key}_std") if key else None
        n = (entry or {}).get("n_defined")
        defined, reason = value is not None, None
    mean = _finite(mean)
    defined = bool(defined) and mean is not None
    if not defined and not reason:
        reason = f"defined in {n} examples" if isinstance(n, int) else "not defined for this head"
    lo, hi = (ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None))
    return [mean, _finite(std), n if isinstance(n, int) else None, _finite(lo), _finite(hi), defined,
            None if defined else str(reason)]


def _field(entry: dict, metric: GridMetric):
    if metric.key in entry:
        return entry[metric.key]
    return entry.get(metric.fallback) if metric.fallback else None


def grid_payload(results: dict) -> dict:
    """The grid part of the page: the metrics this results file has and, per metric (and method), one statistic
    per head in layer-major order."""
    heads = sorted(results["per_layer_head"], key=lambda e: (e["layer"], e["head"]))
    n_layers, n_heads = results["n_layers"], results["n_heads"]
    if len(heads) != n_layers * n_heads:
        raise EvalError(f"results have {len(heads)} per_layer_head entries for {n_layers} x {n_heads} heads; "
                        "evaluate again to get a complete file")
    metrics, values = [], {}
    for metric in GRID_METRICS:
        fields = [_field(entry, metric) for entry in heads]
        if all(f is None for f in fields):
            continue
        key = metric.fallback if metric.key not in heads[0] and metric.fallback else metric.key
        if metric.per_method:
            methods = [m for m in results.get("importance_methods", [])
                       if any(isinstance(f, dict) and m in f for f in fields)]
            series = {m: [statistic((f or {}).get(m)) for f in fields] for m in methods}
        else:
            methods = []
            series = {"": [statistic(f, entry, key) for f, entry in zip(fields, heads)]}
        metrics.append({"key": metric.key, "label": metric.label, "help": metric.help, "scale": metric.scale,
                        "domain": list(metric.domain) if metric.domain else None, "methods": methods})
        values[metric.key] = series
    return {"n_layers": n_layers, "n_heads": n_heads, "metrics": metrics, "values": values}


def _layer_payload(results: dict) -> list[dict]:
    charts = []
    layers = sorted(results.get("per_layer", []), key=lambda e: e["layer"])
    for key, label, help_text in LAYER_METRICS:
        if any(key in entry for entry in layers):
            charts.append({"key": key, "label": label, "help": help_text,
                           "layers": [entry["layer"] for entry in layers],
                           "values": [statistic(entry.get(key)) for entry in layers]})
    return charts


def _faithfulness_payload(results: dict) -> dict | None:
    faith = results.get("faithfulness") or {}
    rankings = faith.get("rankings") or {}
    if not rankings:
        return None
    return {"fractions": faith.get("fractions", []),
            "rankings": [{"name": name, "comprehensiveness": statistic(block.get("comprehensiveness")),
                          "sufficiency": statistic(block.get("sufficiency"))} for name, block in rankings.items()]}


def _examples_payload(token_examples: dict | None) -> list[dict]:
    examples = []
    for index in sorted(token_examples or {}, key=int):
        example = token_examples[index]
        examples.append({
            "index": int(index), "tokens": list(example["tokens"]), "label": example.get("label"),
            "prediction": example.get("prediction"), "probability": _finite(example.get("probability")),
            "maps": {name: _rounded(v) for name, v in example.get("maps", {}).items()},
            "heads": _rounded(example.get("heads")), "special_mass": _rounded(example.get("special_mass")),
            "projected": _rounded(example.get("projected")),
            "representation": {m: _rounded(v) for m, v in (example.get("representation") or {}).items()},
            "mixing": {m: {view: _rounded(v) for view, v in views.items()}
                       for m, views in (example.get("mixing") or {}).items()},
            "segments": example.get("segments"),  # a text pair: 0 / 1 per token (the [SEP] between them)
        })
    return examples


def _meta(results: dict) -> dict:
    config = results.get("config") or {}
    return {
        "checkpoint": results.get("checkpoint"), "weights_fingerprint": results.get("weights_fingerprint"),
        "attn_impl": results.get("attn_impl"), "dataset": results.get("dataset"), "split": results.get("split"),
        "n_examples": results.get("n_examples"), "accuracy": _finite(results.get("accuracy")),
        "macro_f1": _finite(results.get("macro_f1")), "label_names": config.get("label_names"),
        "attention_query": config.get("attention_query"),
        "input_methods": results.get("input_methods", []),
        "representation_methods": results.get("representation_methods", []),
        "summary": (results.get("summary") or {}).get("text", []),
        "plots": "skipped (--no-plots)" if config.get("no_plots") else f"{len(results.get('plots') or [])} PNG files",
    }


def report_payload(results: dict, token_examples: dict | None = None) -> dict:
    """Everything the page shows for one evaluation, as a JSON-ready dict (numbers rounded for the page)."""
    return {"kind": "evaluation", "meta": _meta(results), "grid": grid_payload(results),
            "layers": _layer_payload(results), "faithfulness": _faithfulness_payload(results),
            "examples": _examples_payload(token_examples)}


def compare_payload(results_a: dict, results_b: dict, differences: list[dict] | None = None,
                    names: tuple[str, str] | None = None) -> dict:
    """Two evaluations' grids and the listed differences (``{"layer", "head", "metric", "method", "difference",
    "ci95", "p_value", "significant"}``); EvalError when the two models' layer x head shapes differ."""
    shape_a = (results_a["n_layers"], results_a["n_heads"])
    shape_b = (results_b["n_layers"], results_b["n_heads"])
    if shape_a != shape_b:
        raise EvalError(f"cannot compare {shape_a[0]} x {shape_a[1]} heads with {shape_b[0]} x {shape_b[1]}; "
                        "compare two checkpoints of the same architecture")
    names = names or (str(results_a.get("attn_impl") or "A"), str(results_b.get("attn_impl") or "B"))
    if names[0] == names[1]:
        names = (f"{names[0]} (A)", f"{names[1]} (B)")
    warnings = [f"{key} differs: {results_a.get(key)!r} vs {results_b.get(key)!r}"
                for key in ("dataset", "split", "n_examples") if results_a.get(key) != results_b.get(key)]
    listed = []
    for d in differences or []:
        listed.append({"layer": int(d["layer"]), "head": int(d["head"]), "metric": d["metric"],
                       "method": d.get("method") or "", "difference": _finite(d.get("difference")),
                       "ci95": [_finite(v) for v in d["ci95"]] if d.get("ci95") else None, "p_value": _finite(d.get("p_value")),
                       "significant": bool(d.get("significant"))})
    return {"kind": "compare", "names": list(names), "meta": [_meta(results_a), _meta(results_b)],
            "grids": [grid_payload(results_a), grid_payload(results_b)], "differences": listed,
            "warnings": warnings}


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("report_assets", name).read_text(encoding="utf-8")


def _script_json(payload: dict) -> str:
    """JSON safe inside <script>: "<" escaped so no text (a token such as "</script>") can end the element."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render_report_html(payload: dict, *, title: str, fingerprint: str | None = None) -> str:
    """The page for a payload of :func:`report_payload` or :func:`compare_payload`, as one HTML string."""
    page = _asset("report.html")
    replacements = {
        "{{TITLE}}": html.escape(title),
        "{{FINGERPRINT}}": html.escape(fingerprint or ""),
        "{{FINGERPRINT_META}}": FINGERPRINT_META,
        "{{STYLE}}": _asset("report.css"),
        "{{DATA}}": _script_json(payload),
        "{{SCRIPT}}": _asset("report.js"),
    }
    for marker, text in replacements.items():
        page = page.replace(marker, text)
    return page


def _title(results: dict) -> str:
    name = Path(str(results.get("checkpoint") or "model")).name or "model"
    return f"{name} ({results.get('attn_impl')}) on {results.get('dataset')} {results.get('split')}"


def report_html(results: dict, token_examples: dict | None = None) -> str:
    """The page of one evaluation (what report.html holds), as one HTML string."""
    return render_report_html(report_payload(results, token_examples), title=_title(results),
                              fingerprint=results.get("weights_fingerprint"))


def write_report(out_dir, results: dict, token_examples: dict | None = None) -> Path:
    """Write OUTDIR/report.html for one evaluation (atomically); returns its path."""
    path = Path(out_dir) / REPORT_FILE
    atomic_write_text(path, report_html(results, token_examples))
    return path


def write_compare_report(path, results_a: dict, results_b: dict, differences: list[dict] | None = None,
                         names: tuple[str, str] | None = None) -> Path:
    """Write a comparison page of two evaluations to ``path`` (atomically); returns it."""
    payload = compare_payload(results_a, results_b, differences, names)
    title = f"{payload['names'][0]} vs {payload['names'][1]}: {_title(results_a)}"
    path = Path(path)
    atomic_write_text(path, render_report_html(payload, title=title))
    return path


def read_fingerprint(path) -> str | None:
    """The weights fingerprint a report.html was rendered for (None if it records none)."""
    import re

    text = Path(path).read_text(encoding="utf-8", errors="replace")[:4096]
    match = re.search(rf'<meta name="{FINGERPRINT_META}" content="([^"]*)"', text)
    return html.unescape(match.group(1)) or None if match else None
