"""Compare two evaluations of the same examples: which differences between two checkpoints (or mappings) hold up.

    python -m eval_suite.compare OUT_A OUT_B --output-dir OUT_COMPARE

``OUT_A`` and ``OUT_B`` are evaluation folders (``results.json`` plus the per-example rows in ``rows/``) made on
the same dataset, split and examples (same ``--limit`` and ``--seed``); when they measured different methods
(``--measures``), the methods both measured are compared and the others listed. For every layer x head x metric x
method that both define, the per-example differences ``b - a`` on the examples defined in both are tested with the
Wilcoxon signed-rank test (scipy; paired, no normality assumed), with a seeded bootstrap interval of the mean
difference; p-values are adjusted over all tests of the comparison with Benjamini-Hochberg (scipy's
``false_discovery_control``), and a difference is significant when the adjusted p-value is below ``alpha``.
Accuracy is compared with McNemar's exact test on the discordant examples (a binomial test). Layer-level pooled
values are compared the same way (each example's mean over the layer's defined heads). Context-mixing methods
(``--measures mixing``) that both measured are compared the same way per view (``source`` ``<method>.<view>``):
their agreement with each importance method both compared them with, and their entropy, sparsity and mass on
special tokens, per layer (and head, for the per-head view).

Writes ``compare.json`` and prints the significant differences. Exit status 2 with a one-line error when the two
folders cannot be compared like for like.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_sparse_attn.constants import PLAN_FILE, RESULTS_FILE, ROWS_DIR
from hf_sparse_attn.files import atomic_write_json

from .agreement import PAIRED
from .errors import EvalError
from .statistics import AggregateConfig, Bootstrap

COMPARE_FILE = "compare.json"
# The per-head summaries compared per layer x head (the agreement metrics: those declared ``paired``).
HEAD_SUMMARIES = ("sparsity", "entropy", "special_mass")


@dataclass
class Evaluation:
    folder: Path
    results: dict
    rows: dict


def load_evaluation(folder) -> Evaluation:
    """results.json and the per-example rows of an evaluation folder; EvalError when either is missing."""
    from .aggregate import concatenate_rows
    from .runner import load_shard

    folder = Path(folder)
    results_path = folder / RESULTS_FILE
    if not results_path.is_file():
        raise EvalError(f"{folder} holds no {RESULTS_FILE}; pass an evaluation's --output-dir")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    rows_dir = folder / ROWS_DIR
    plan_path = rows_dir / PLAN_FILE
    if not plan_path.is_file():
        raise EvalError(f"{folder} has no per-example rows ({ROWS_DIR}/); a paired comparison needs them: re-run the "
                        "evaluation into this folder")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    shards = []
    for batch_id in range(plan["n_batches"]):
        loaded = load_shard(rows_dir, batch_id, plan["plan_id"])
        if loaded is None:
            raise EvalError(f"batch {batch_id} of {rows_dir} is missing or unreadable; re-run the evaluation")
        shards.append(loaded[0])
    return Evaluation(folder, results, concatenate_rows(shards))


def _check_like_for_like(a: Evaluation, b: Evaluation) -> None:
    for key in ("dataset", "split", "n_layers", "n_heads"):
        if a.results.get(key) != b.results.get(key):
            raise EvalError(f"the two evaluations differ in {key} ({a.results.get(key)!r} vs {b.results.get(key)!r}); "
                            "compare evaluations of the same data with models of the same shape")
    if not np.array_equal(a.rows["example.index"], b.rows["example.index"]):
        raise EvalError("the two evaluations measured different examples; run both with the same --limit and --seed")


def _paired(diff_a: np.ndarray, diff_b: np.ndarray, bootstrap: Bootstrap) -> dict | None:
    """Wilcoxon signed-rank p-value and bootstrap interval of mean(b - a) over examples defined in both."""
    from scipy.stats import wilcoxon

    both = np.isfinite(diff_a) & np.isfinite(diff_b)
    if both.sum() < 2:
        return None
    d = np.where(both, diff_b - diff_a, 0.0)
    if np.allclose(d[both], 0.0):
        p = 1.0
    else:
        p = float(wilcoxon(d[both], zero_method="wilcox").pvalue)
    low, high = bootstrap.interval(d[:, None], both.astype(np.float64)[:, None])
    return {"difference": float(d[both].mean()), "ci95": [float(low[0]), float(high[0])], "n": int(both.sum()),
            "a": float(diff_a[both].mean()), "b": float(diff_b[both].mean()), "p_value": p}


def compare_evaluations(a: Evaluation, b: Evaluation, *, alpha: float = 0.05,
                        config: AggregateConfig | None = None) -> dict:
    """Every paired test (module docstring); returns the compare.json dict."""
    from scipy.stats import binomtest, false_discovery_control

    _check_like_for_like(a, b)
    config = config or AggregateConfig()
    bootstrap = Bootstrap(len(a.rows["example.index"]), config)
    # Only what both measured is compared; each evaluation's rows index its own methods list.
    methods_a, methods_b = a.results["importance_methods"], b.results["importance_methods"]
    methods = [m for m in methods_a if m in methods_b]
    n_layers, n_heads = a.results["n_layers"], a.results["n_heads"]
    tests = []
    for layer in range(n_layers):
        for metric in PAIRED if methods else ():
            va, vb = a.rows[f"attention.{metric}"], b.rows[f"attention.{metric}"]
            for method in methods:
                i, j = methods_a.index(method), methods_b.index(method)
                for head in range(n_heads):
                    found = _paired(va[:, layer, head, i], vb[:, layer, head, j], bootstrap)
                    if found:
                        tests.append({"layer": layer, "head": head, "metric": metric, "method": method, **found})
                with warnings.catch_warnings():  # an example with no defined head in the layer: NaN, left out
                    warnings.simplefilter("ignore", RuntimeWarning)
                    layer_a, layer_b = np.nanmean(va[:, layer, :, i], axis=1), np.nanmean(vb[:, layer, :, j], axis=1)
                found = _paired(layer_a, layer_b, bootstrap)
                if found:
                    tests.append({"layer": layer, "head": None, "metric": metric, "method": method, **found})
        for summary in HEAD_SUMMARIES:
            va, vb = a.rows[f"attention.{summary}"], b.rows[f"attention.{summary}"]
            for head in range(n_heads):
                found = _paired(va[:, layer, head], vb[:, layer, head], bootstrap)
                if found:
                    tests.append({"layer": layer, "head": head, "metric": f"attention_{summary}", "method": None,
                                  **found})
    tests += _mixing_tests(a, b, bootstrap)
    if tests:
        adjusted = false_discovery_control([t["p_value"] for t in tests], method="bh")
        for test, p in zip(tests, adjusted):
            test["p_adjusted"] = float(p)
            test["significant"] = bool(p < alpha)
    correct_a = a.rows["example.prediction"] == a.rows["example.label"]
    correct_b = b.rows["example.prediction"] == b.rows["example.label"]
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((correct_b & ~correct_a).sum())
    mcnemar = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "a": {"folder": a.folder.name, "attn_impl": a.results.get("attn_impl"),
              "weights_fingerprint": a.results.get("weights_fingerprint")},
        "b": {"folder": b.folder.name, "attn_impl": b.results.get("attn_impl"),
              "weights_fingerprint": b.results.get("weights_fingerprint")},
        "dataset": a.results["dataset"], "split": a.results["split"], "n_examples": int(len(correct_a)),
        "methods_compared": methods,
        "mixing_compared": sorted({t["source"] for t in tests if "source" in t}),
        "methods_only_in_a": [m for m in methods_a if m not in methods_b],
        "methods_only_in_b": [m for m in methods_b if m not in methods_a],
        "accuracy": {"a": float(correct_a.mean()), "b": float(correct_b.mean()), "only_a_correct": only_a,
                     "only_b_correct": only_b, "p_value": float(mcnemar)},
        "alpha": alpha,
        "method": "Wilcoxon signed-rank per cell on examples defined in both, Benjamini-Hochberg over all cells; "
                  "bootstrap 95% interval of the mean difference (b - a)",
        "n_tests": len(tests),
        "n_significant": sum(t["significant"] for t in tests),
        "tests": tests,
    }


def _mixing_tests(a: Evaluation, b: Evaluation, bootstrap: Bootstrap) -> list[dict]:
    """The paired tests of every context-mixing view both evaluations measured (rows ``mixing.<method>.<view>.*``)."""
    mixing_a, mixing_b = a.results.get("mixing_methods") or {}, b.results.get("mixing_methods") or {}
    compared_a, compared_b = a.results.get("mixing_compared_with") or {}, b.results.get("mixing_compared_with") or {}
    n_layers, n_heads = a.results["n_layers"], a.results["n_heads"]
    tests = []
    for method in (m for m in mixing_a if m in mixing_b):
        for view in (v for v in mixing_a[method] if v in mixing_b[method]):
            prefix, source = f"mixing.{method}.{view}", f"{method}.{view}"
            heads = range(n_heads) if view == "head" else [None]

            def add(va, vb, layer, head, metric, against):
                found = _paired(va, vb, bootstrap)
                if found:
                    tests.append({"layer": layer, "head": head, "metric": metric, "method": against,
                                  "source": source, **found})

            against = [m for m in compared_a.get(view, []) if m in compared_b.get(view, [])]
            for layer in range(n_layers):
                for metric in PAIRED if against else ():
                    va, vb = a.rows[f"{prefix}.{metric}"], b.rows[f"{prefix}.{metric}"]
                    for m in against:
                        i, j = compared_a[view].index(m), compared_b[view].index(m)
                        for head in heads:
                            cell = (slice(None), layer) if head is None else (slice(None), layer, head)
                            add(va[cell + (i,)], vb[cell + (j,)], layer, head, metric, m)
                        if view == "head":
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore", RuntimeWarning)
                                add(np.nanmean(va[:, layer, :, i], axis=1), np.nanmean(vb[:, layer, :, j], axis=1),
                                    layer, None, metric, m)
                for summary in HEAD_SUMMARIES:
                    va, vb = a.rows[f"{prefix}.{summary}"], b.rows[f"{prefix}.{summary}"]
                    for head in heads:
                        cell = (slice(None), layer) if head is None else (slice(None), layer, head)
                        add(va[cell], vb[cell], layer, head, f"mixing_{summary}", None)
    return tests


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval_suite.compare", description=__doc__.splitlines()[0])
    p.add_argument("a", help="first evaluation folder (its --output-dir)")
    p.add_argument("b", help="second evaluation folder, same data and examples")
    p.add_argument("--output-dir", required=True, help="folder for compare.json")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate (default 0.05)")
    p.add_argument("--bootstrap-resamples", type=int, default=AggregateConfig.bootstrap_resamples)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 < args.alpha < 1:
            raise EvalError(f"--alpha must lie in (0, 1), got {args.alpha}")
        config = AggregateConfig(bootstrap_resamples=args.bootstrap_resamples, bootstrap_seed=args.seed)
        out = Path(args.output_dir)
        if out.exists() and not out.is_dir():
            raise EvalError(f"--output-dir {out} is a file; pass a folder")
        result = compare_evaluations(load_evaluation(args.a), load_evaluation(args.b), alpha=args.alpha, config=config)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / COMPARE_FILE, result)
    acc = result["accuracy"]
    print(f"{result['n_examples']} paired examples; accuracy {acc['a']:.3f} -> {acc['b']:.3f} (McNemar p = "
          f"{acc['p_value']:.3g}); {result['n_significant']} of {result['n_tests']} differences significant at FDR "
          f"{result['alpha']}")
    for side in ("a", "b"):
        if result[f"methods_only_in_{side}"]:
            print(f"  not compared (measured in {side} only): {', '.join(result[f'methods_only_in_{side}'])}")
    for t in sorted((t for t in result["tests"] if t["significant"]), key=lambda t: t["p_adjusted"])[:20]:
        where = f"layer {t['layer']}" + (f" head {t['head']}" if t["head"] is not None else " (pooled)")
        what = (f"{t['source']} " if t.get("source") else "") + t["metric"] + (f" vs {t['method']}" if t["method"] else "")
        print(f"  {where}: {what}: {t['a']:.3f} -> {t['b']:.3f} ({t['difference']:+.3f} [{t['ci95'][0]:+.3f}, "
              f"{t['ci95'][1]:+.3f}], p_adj {t['p_adjusted']:.2g})")
    print(f"wrote {out / COMPARE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
