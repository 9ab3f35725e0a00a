"""What the context-mixing methods cost on the embedded MiniLM and MR, and where attention flow stops being affordable.

    python bench/context_mixing.py                              # 64 MR test sentences, softmax/sparsemax/entmax15
    python bench/context_mixing.py --n 200 --impls softmax --threads 1
    python bench/context_mixing.py --agreement --n 64           # also a first reading of the agreement
    python bench/context_mixing.py --what flow --flow-lengths 16 32 64 128 --flow-layers 6 12

1. cost: for each mapping, ``--n`` seeded MR test sentences batched as the runner batches them (sorted by length,
   ``--batch-size``), MiniLM with a probe head (bench/evaluation.py's ``build_probe_checkpoint``). Seconds per
   sentence (wall, and this process's CPU time) of: the base pass every evaluation already pays (forward with
   graph + the backward pass that gives every gradient importance), the recorded pass with the split check that
   all decomposition methods share, and each method's views: whole-layer mixing, per-head [CLS] rows, per-head
   all rows, aggregation to the inputs. ``x base`` is each time divided by the base pass of the same batches.
2. flow: attention flow alone on random residual attention (Dirichlet rows, seeded) for ``--flow-lengths`` x
   ``--flow-layers``: seconds per example by scipy (what the suite uses) and, for lengths <= 32, networkx's
   Edmonds-Karp (the reference), and their ratio.
3. agreement (``--agreement``): a first reading, not results.json's statistics: per layer, Kendall tau-b (plain,
   ties as scipy counts them) between each method's view and the importance it is like for like with (layer views
   and attention vs the representation methods of that layer; aggregated views and rollout vs the input
   methods), mean over sentences with n and a 95% bootstrap interval (scipy.stats.bootstrap, seeded), and the
   normalised entropies. Costs the LOO passes (about 1.5 s per sentence on one thread).

Timings on a shared machine are noisy: compare ratios within one run. ``--threads 1`` (default) measures work.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from bench.startup import bench_parser, finish, start  # noqa: E402

METHODS = ("attention_norm", "attention_norm_res_ln", "value_zeroing", "alti", "attention_flow")


class Clock:
    """Accumulates wall and process CPU seconds per named stage."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def time(self, stage, fn):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - w
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - c
        return result


def _batches(classifier, n: int, batch_size: int, seed: int):
    from hf_sparse_attn.data import load_text_classification

    from eval_suite.batching import collate, encode_texts
    from eval_suite.runner import plan_batches, select_examples

    test = load_text_classification("mr")["test"]
    indices = select_examples(len(test), n, seed)
    texts = [test[i]["text"] for i in indices]
    encodings, _ = encode_texts(classifier.tokenizer, texts, classifier.max_length)
    plan = plan_batches(indices, [len(e["input_ids"]) for e in encodings], batch_size)
    return [collate([encodings[k] for k in batch], classifier.tokenizer.pad_token_id) for batch in plan]


def cost(checkpoint: Path, impl: str, n: int, batch_size: int, seed: int, agreement: bool) -> dict:
    from eval_suite.attribution import (AttentionRollout, ForwardContext, GradientNorm, LeaveOneOut,
                                        RepresentationGradientNorm, RepresentationLeaveOneOut, attention_rows)
    from eval_suite.context_mixing import context_mixing_method, context_mixing_rows
    from eval_suite.context_mixing.decomposition import decomposition
    from eval_suite.model_access import load_classifier

    classifier = load_classifier(str(checkpoint), attn_impl=impl)
    clock = Clock()
    batches = _batches(classifier, n, batch_size, seed)
    collected = []
    n_sentences = 0
    for batch in batches:
        ctx = ForwardContext(classifier, batch)
        n_sentences += batch.size
        clock.time("base pass (forward + backward)", lambda: ctx.gradients)
        clock.time("recorded pass + split check", lambda: decomposition(ctx))
        mixings = {}
        for name in METHODS:
            method = context_mixing_method(name)
            if method.defines_layer:
                mixings[name] = clock.time(f"{name}: layer mixing", lambda: method(ctx))
            if method.defines_heads:
                clock.time(f"{name}: heads, [CLS] rows", lambda: method.heads(ctx, queries=[0]))
                clock.time(f"{name}: heads, all rows", lambda: method.heads(ctx))
            if method.defines_inputs:
                clock.time(f"{name}: to inputs", lambda: method.to_inputs(ctx, mixings.get(name)))
        if agreement:
            rows = context_mixing_rows(ctx, METHODS)
            importance = {
                "grad_norm": GradientNorm()(ctx), "repr_grad_norm": RepresentationGradientNorm()(ctx),
            }
            ctx.release()
            importance["loo"] = LeaveOneOut()(ctx)
            importance["repr_loo"] = RepresentationLeaveOneOut()(ctx)
            attention = attention_rows(ctx.base.attentions, batch.attention_mask, "cls")
            collected.append((rows, importance, attention, AttentionRollout()(ctx), batch.content_mask))
    per_sentence = {k: v / n_sentences for k, v in clock.wall.items()}
    per_sentence_cpu = {k: v / n_sentences for k, v in clock.cpu.items()}
    base = per_sentence["base pass (forward + backward)"]
    out = {"impl": impl, "sentences": n_sentences, "batches": len(batches),
           "mean_tokens": float(np.mean([float(b.attention_mask.sum(dim=1).float().mean()) for b in batches])),
           "seconds_per_sentence": per_sentence, "cpu_seconds_per_sentence": per_sentence_cpu,
           "ratio_to_base_pass": {k: v / base for k, v in per_sentence.items()}}
    if agreement:
        out["agreement"] = agreement_reading(collected, classifier.n_layers, seed)
    return out


def _mean_ci(values: np.ndarray, seed: int) -> dict:
    from scipy.stats import bootstrap

    values = values[np.isfinite(values)]
    if values.size < 2:
        return {"mean": float(values.mean()) if values.size else None, "ci95": None, "n": int(values.size)}
    ci = bootstrap((values,), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return {"mean": float(values.mean()), "ci95": [float(ci.low), float(ci.high)], "n": int(values.size)}


def agreement_reading(collected, n_layers: int, seed: int) -> dict:
    """Per layer: mean tau-b (with n and a 95% bootstrap interval) and mean normalised entropy, per source."""
    from eval_suite import metrics as M

    def taus(source, importance, content):  # source [B, n, (H,) L], importance [B, (n,) L] -> [B, n]
        if importance.dim() == 2:
            importance = importance[:, None, :].expand(-1, n_layers, -1)
        if source.dim() == 4:  # heads: tau per head, then the mean over heads of each sentence
            tau = M.kendall_tau_b(source, importance[:, :, None, :], content[:, None, None, :])
            return torch.nanmean(tau, dim=2)
        return M.kendall_tau_b(source, importance, content[:, None, :])

    def entropy(source, content):
        mask = content.reshape(content.shape[0], *([1] * (source.dim() - 2)), content.shape[-1])
        value = M.normalised_entropy(source.double(), mask)
        return torch.nanmean(value, dim=2) if value.dim() == 3 else value

    sources = {
        "attention (per head)": ("layer", lambda r, a, ro: a),
        "rollout (per head)": ("inputs", lambda r, a, ro: ro),
    }
    for name in METHODS:
        for view, kind in (("layer", "layer"), ("head", "layer"), ("inputs", "inputs")):
            sources[f"{name}.{view}"] = (kind, lambda r, a, ro, key=f"{name}.{view}": r.get(key))
    report = {}
    for label, (kind, pick) in sources.items():
        if pick(*collected[0][:1], collected[0][2], collected[0][3]) is None:
            continue  # the method does not define this view
        methods = ("repr_grad_norm", "repr_loo") if kind == "layer" else ("grad_norm", "loo")
        tau_rows = {m: [] for m in methods}
        entropies = []
        for rows, importance, attention, rolled, content in collected:
            source = pick(rows, attention, rolled).double()
            for m in methods:
                tau_rows[m].append(taus(source, importance[m].double(), content).cpu().numpy())
            entropies.append(entropy(source, content).cpu().numpy())
        report[label] = {
            "against": {m: [_mean_ci(np.concatenate(tau_rows[m])[:, l], seed) for l in range(n_layers)]
                        for m in methods},
            "entropy": [_mean_ci(np.concatenate(entropies)[:, l], seed) for l in range(n_layers)],
        }
    return report


def flow_scaling(lengths, layer_counts, seed: int) -> list[dict]:
    import networkx as nx

    from eval_suite.context_mixing.flow import flows_to_query

    rng = np.random.default_rng(seed)
    out = []
    for n_layers in layer_counts:
        for length in lengths:
            attention = rng.dirichlet(np.full(length, 0.3), size=(n_layers, length))
            capacities = 0.5 * attention + 0.5 * np.eye(length)
            capacities /= capacities.sum(axis=-1, keepdims=True)
            start = time.process_time()
            flows = flows_to_query(capacities)
            scipy_seconds = time.process_time() - start
            row = {"layers": n_layers, "length": length, "scipy_seconds_per_example": scipy_seconds,
                   "max_flows_per_example": n_layers * length}
            if length <= 32:
                graph = nx.DiGraph()
                for l in range(n_layers):
                    for i in range(length):
                        for j in range(length):
                            graph.add_edge((l + 1, i), (l, j), capacity=capacities[l, i, j])
                start = time.process_time()
                reference = np.zeros(length)
                for j in range(length):
                    reference[j] = nx.maximum_flow_value(graph, (n_layers, 0), (0, j),
                                                         flow_func=nx.algorithms.flow.edmonds_karp)
                networkx_seconds = (time.process_time() - start) * n_layers  # one layer's flows timed, x layers
                row["networkx_seconds_per_example"] = networkx_seconds
                row["networkx_over_scipy"] = networkx_seconds / scipy_seconds
                row["max_difference"] = float(np.abs(reference / reference.sum() - flows[-1]).max())
            out.append(row)
            print(f"   flow: {n_layers} layers x {length} tokens: scipy {scipy_seconds:.3f} s per example"
                  + (f", networkx {row['networkx_seconds_per_example']:.1f} s ({row['networkx_over_scipy']:.0f}x), "
                     f"max |difference| {row['max_difference']:.1e}" if "networkx_seconds_per_example" in row else ""),
                  flush=True)
    return out


def _fmt_ci(stat: dict) -> str:
    if stat["mean"] is None:
        return "undefined (n = 0)"
    ci = stat["ci95"]
    return (f"{stat['mean']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{stat['mean']:+.3f}") + f" (n = {stat['n']})"


def main(argv=None) -> int:
    parser = bench_parser(__doc__, threads=1, json=True)
    parser.add_argument("--what", choices=["all", "cost", "flow"], default="all")
    parser.add_argument("--n", type=int, default=64, help="MR test sentences per mapping")
    parser.add_argument("--impls", default="softmax,sparsemax,entmax15")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agreement", action="store_true", help="also the first reading of the agreement")
    parser.add_argument("--flow-lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--flow-layers", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--probe-train", type=int, default=2000, help="training sentences for the probe head")
    parser.add_argument("--work-dir", default=str(REPO / "out" / "bench_context_mixing"))
    args = start(parser, argv)
    from bench.evaluation import build_probe_checkpoint

    report = {"mappings": {}}
    if args.what in ("all", "cost"):
        for impl in [s.strip() for s in args.impls.split(",") if s.strip()]:
            checkpoint = build_probe_checkpoint(impl, Path(args.work_dir) / f"minilm-mr-{impl}", args.probe_train)
            entry = cost(checkpoint, impl, args.n, args.batch_size, args.seed, args.agreement)
            report["mappings"][impl] = entry
            print(f"\n== MiniLM / MR test, attn_impl={impl}: {entry['sentences']} sentences "
                  f"(mean {entry['mean_tokens']:.1f} tokens), {args.threads} thread(s)")
            print(f"   {'stage':44s} {'s/sentence':>11s} {'CPU-s':>8s} {'x base':>7s}")
            for stage, seconds in entry["seconds_per_sentence"].items():
                print(f"   {stage:44s} {seconds:11.4f} {entry['cpu_seconds_per_sentence'][stage]:8.4f} "
                      f"{entry['ratio_to_base_pass'][stage]:7.2f}")
            for label, block in entry.get("agreement", {}).items():
                for m, stats in block["against"].items():
                    print(f"   tau-b({label}, {m}) per layer: " + "; ".join(_fmt_ci(s) for s in stats))
                print(f"   entropy({label}) per layer: " + "; ".join(_fmt_ci(s) for s in block["entropy"]))
    if args.what in ("all", "flow"):
        print("\n== attention flow alone (random residual attention)")
        report["flow"] = flow_scaling(args.flow_lengths, args.flow_layers, args.seed)
    finish(args, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
