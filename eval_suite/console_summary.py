"""An evaluation's closing summary for the console: accuracy, attention sparsity per layer, and, where heads are
undefined, why in words and what to try. The main job (scripts/main_job.sh) prints it.

    python -m eval_suite.console_summary OUTDIR/results.json [--training-metrics CKPT/final_metrics.json]

A layer with no defined head gets no figure: its line says it is undefined and why. The reasons are the ones
results.json records per head (``per_layer_head[i].undefined_reason``); nothing is recomputed. Reads JSON only, so
it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# The wording eval_suite.aggregate gives a head whose attention never reaches a content token in some examples.
_ALL_ON_SPECIAL = re.compile(r"all attention on special tokens in (\d+) of (\d+) examples")
SPECIAL_TOKENS = "special tokens ([CLS]/[SEP], <s>/</s>)"


def query_words(results: dict) -> str:
    """Whose attention the evaluation measured, in words."""
    query = (results.get("config") or {}).get("attention_query", "cls")
    return "[CLS] attention" if query == "cls" else "attention (mean over all queries)"


def _percent(stat: dict) -> str:
    ci = stat.get("ci95")
    return f"{stat['mean']:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


def _heads_all_on_special(heads: list[dict]) -> list[tuple[int, int]]:
    """(examples with all attention on special tokens, examples) of each undefined head whose reason says so."""
    found = []
    for head in heads:
        match = _ALL_ON_SPECIAL.search(str(head.get("undefined_reason") or ""))
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return found


def _examples_range(counts: list[tuple[int, int]]) -> str:
    low, high = min(k for k, _ in counts), max(k for k, _ in counts)
    of = counts[0][1]
    return f"{low} of {of}" if low == high else f"{low} to {high} of {of}"


def layer_line(results: dict, layer: dict) -> str:
    """One layer: its pooled sparsity over content tokens with the interval, or "undefined" and why."""
    heads = [h for h in results["per_layer_head"] if h["layer"] == layer["layer"] and not h.get("defined")]
    n_defined, n_heads = layer["n_heads_defined"], layer["n_heads"]
    sparsity = layer.get("attention_sparsity") or {}
    if n_defined == 0 or not sparsity.get("defined"):
        on_special = _heads_all_on_special(heads)
        if on_special and len(on_special) == len(heads):
            why = (f"every head puts all its {query_words(results)} on {SPECIAL_TOKENS} in "
                   f"{_examples_range(on_special)} examples, so the content tokens get exactly zero and no "
                   "distribution over them is left to measure")
        else:
            why = f"e.g. head {heads[0]['head']}: {heads[0].get('undefined_reason')}" if heads else "no value"
        return f"  layer {layer['layer']}: undefined (0 of {n_heads} heads defined): {why}"
    line = f"  layer {layer['layer']}: {_percent(sparsity)} ({n_defined} of {n_heads} heads defined"
    if n_defined < n_heads:
        line += (f"; the figure counts the {n_heads - n_defined} undefined heads too, whose content tokens all get "
                 "zero")
    return line + ")"


def undefined_heads_lines(results: dict) -> list[str]:
    """Why heads are undefined (from the results' reasons) and what to try; empty when every head is defined."""
    undefined = [h for h in results["per_layer_head"] if not h.get("defined")]
    if not undefined:
        return []
    n_all = len(results["per_layer_head"])
    config = results.get("config") or {}
    min_examples = (config.get("aggregation") or {}).get("min_examples")
    on_special = _heads_all_on_special(undefined)
    lines = [f"{len(undefined)} of {n_all} heads are undefined, so they are left out of every agreement figure "
             "(reasons per head: per_layer_head[].undefined_reason in results.json):"]
    if on_special:
        lines.append(f"  - {len(on_special)} put all their {query_words(results)} on {SPECIAL_TOKENS} in "
                     f"{_examples_range(on_special)} examples: they attend to no word of the text")
    other = len(undefined) - len(on_special)
    if other:
        lines.append(f"  - {other} rest on fewer than {min_examples} examples with attention on content tokens "
                     f"(e.g. {undefined[-1].get('undefined_reason')})")
    lines.append("what to try:")
    if config.get("attention_query", "cls") == "cls":
        lines.append("  - --attention-query mean: measure the mean attention of every query, the content tokens' "
                     "own included, instead of the [CLS] query's alone")
    layers = (results.get("sparse_attention") or {}).get("layers")
    if layers != [results["n_layers"] - 1]:
        lines.append("  - sparse attention in the last layer only: train with --attn-layers=-1 (attn_layers=[-1] in "
                     "Python); the other layers keep softmax, which gives every token some weight")
    partly = sum(1 for h in undefined if 0 < (h.get("defined_share") or 0))
    which = "the undefined head that reaches" if partly == 1 else f"the {partly} undefined heads that reach"
    helps = (f"this can define {which} content tokens in some examples" if partly
             else "no undefined head here reaches content tokens in any example, so this alone will not define them")
    lines.append(f"  - more examples (--limit; now {results['n_examples']}) or a lower --min-examples (now "
                 f"{min_examples}): a head is defined when its attention reaches content tokens in at least that "
                 f"many examples; {helps}")
    return lines


def summary_lines(results: dict, training_metrics: dict | None = None) -> list[str]:
    """The summary's lines: test accuracy (from training's final_metrics.json when given), the evaluation's
    accuracy with its interval, attention sparsity per layer, and the undefined heads explained."""
    lines = []
    what = f"{results.get('attn_impl')} {results.get('checkpoint')} on {results.get('dataset')}"
    ci = results.get("accuracy_ci95")
    evaluated = (f"evaluated {results['n_examples']} of {results.get('n_split')} {results.get('split')} examples: "
                 f"accuracy {results['accuracy']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    test = (training_metrics or {}).get("test")
    if test:
        lines.append(f"{what}: test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} "
                     f"({test['n_examples']} test examples); {evaluated}")
    else:
        lines.append(f"{what}: {evaluated}")
    lines.append(f"{query_words(results)} sparsity over content tokens per layer (share of exact zeros, pooled over "
                 "heads, [95% bootstrap interval]):")
    lines += [layer_line(results, layer) for layer in sorted(results.get("per_layer", []), key=lambda e: e["layer"])]
    return lines + undefined_heads_lines(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suite.console_summary",
                                     description="Print an evaluation's summary: accuracy, attention sparsity per "
                                                 "layer, and why heads are undefined.")
    parser.add_argument("results", help="results.json of an evaluation")
    parser.add_argument("--training-metrics", default=None,
                        help="final_metrics.json of the training run, for its test accuracy")
    args = parser.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text(encoding="utf-8"))
        training = (json.loads(Path(args.training_metrics).read_text(encoding="utf-8"))
                    if args.training_metrics else None)
    except (OSError, ValueError) as error:
        print(f"error: cannot read {error}; pass the results.json of an evaluation", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(results, training)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
