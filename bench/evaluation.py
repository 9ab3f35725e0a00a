"""Benchmark of the evaluation suite: MiniLM on MR, the full measurement set, and a captum per-example loop.

    python bench/evaluation.py                       # 200 MR test sentences, captum comparison on 32
    python bench/evaluation.py --n 1000 --impls softmax
    python bench/evaluation.py --n 300 --processes 2 --captum-n 0   # both cores, accelerate launch

1. Builds MiniLM (all-MiniLM-L6-v2, embedded offline) sequence classifiers for MR, one per attention mapping: the
   encoder is frozen and only the classification head is fitted (logistic regression on the pooled output of
   ``--probe-train`` training sentences, computed under that mapping). Cached in ``--work-dir``.
2. For each mapping, runs ``eval_suite.run_evaluation`` (every measurement, every layer and head) on ``--n`` test
   sentences and prints examples/s, the extrapolated minutes for 1,000 sentences, the time per stage, and a first
   reading of the results (mean tau-b per importance method, sparsity, entropies, faithfulness).
3. Compares, on ``--captum-n`` sentences batched as the runner batches them, the suite with a captum loop over
   single examples computing the same numbers: (a) gradient importance of the inputs and of the representations
   of every layer (suite: one backward pass per batch serves all layers; captum: Saliency + one
   LayerGradientXActivation per layer), (b) integrated gradients (same steps, Gauss-Legendre rule and baseline).
   Prints both speed ratios (wall and CPU time) and the largest difference between the two. captum is a
   bench-only dependency: ``pip install --no-deps captum``.
4. Counts the floating-point work of the full set per sentence and stage (``--flops-batches`` batches of the
   1,000-sentence plan) and sets the rate the 10-minute target needs next to a float32 matmul timed here.

``--processes 2`` runs step 2 under ``accelerate launch`` with two CPU processes of one thread each (what "2 cores"
means for the 1,000-sentence target); the rate then counts from the launch to the written results.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from bench.startup import bench_parser, finish, start  # noqa: E402


def build_probe_checkpoint(impl: str, folder: Path, n_train: int, seed: int = 0) -> Path:
    """MiniLM + a logistic-regression head fitted on frozen pooled features of MR train sentences."""
    if (folder / "config.json").is_file():
        return folder
    import hf_sparse_attn
    from hf_sparse_attn.assets import embedded_minilm_path
    from hf_sparse_attn.data import load_text_classification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    source = embedded_minilm_path()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2, attn_impl=impl).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    train = load_text_classification("mr")["train"].shuffle(seed=seed).select(range(n_train))
    texts, labels = list(train["text"]), torch.tensor(train["label"])
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    features = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
            features[idx] = model.base_model(**enc).pooler_output
    weight = torch.zeros(2, features.shape[1], requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, labels) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
        train_accuracy = ((features @ weight.T + bias).argmax(1) == labels).float().mean().item()
    model.config.id2label, model.config.label2id = {0: "rotten", 1: "fresh"}, {"rotten": 0, "fresh": 1}
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"built {folder} ({impl}, probe train accuracy {train_accuracy:.3f} on {n_train} sentences)", flush=True)
    del hf_sparse_attn
    return folder


def evaluate_impl(checkpoint: Path, out_dir: Path, n: int, batch_size: int, ig_steps: int,
                  processes: int = 1) -> tuple[dict, dict]:
    """One full evaluation; with ``processes > 1`` under ``accelerate launch`` (1 torch thread per process)."""
    if processes > 1:
        return _evaluate_launched(checkpoint, out_dir, n, batch_size, ig_steps, processes)
    from eval_suite.settings import MeasureConfig
    from eval_suite.runner import EvalRequest, run_evaluation

    request = EvalRequest(checkpoint=str(checkpoint), output_dir=str(out_dir), dataset="mr", split="test", limit=n,
                          batch_size=batch_size, plot_examples=2, measure=MeasureConfig.of(ig_steps=ig_steps))
    cpu_start = time.process_time()
    results = run_evaluation(request)
    info = json.loads((out_dir / "run_info.json").read_text())
    info["process_cpu_seconds"] = time.process_time() - cpu_start  # all threads; loading included
    return results, info


def _evaluate_launched(checkpoint: Path, out_dir: Path, n: int, batch_size: int, ig_steps: int,
                       processes: int) -> tuple[dict, dict]:
    """``accelerate launch`` of ``python -m eval_suite`` over ``processes`` CPU processes (the runner splits batches)."""
    import resource
    import subprocess

    from tests.helpers.launch import cpu_launch_command

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = cpu_launch_command("eval_suite", [
        str(checkpoint), "--dataset", "mr", "--split", "test", "--limit", str(n), "--batch-size", str(batch_size),
        "--ig-steps", str(ig_steps), "--plot-examples", "2", "--output-dir", str(out_dir), "--cpu", "--threads", "1",
    ], num_processes=processes)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"accelerate launch failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = json.loads((out_dir / "run_info.json").read_text())
    info["process_cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # The main process's measuring loop ends with its own share of the batches; count from its start to the
    # written results (loading and the gather included) so that the slowest process sets the rate.
    info["examples_per_second"] = info["examples_measured_this_run"] / info["total_seconds"]
    return json.loads((out_dir / "results.json").read_text()), info


def flop_budget(checkpoint: Path, n_batches: int, batch_size: int, ig_steps: int, n_plan: int = 1000) -> dict:
    """Floating-point work of the full measurement set per example, by stage, and the rate the target needs.

    Plans the ``n_plan`` seeded MR test sentences as the runner does (length-sorted batches), counts matmul FLOPs
    with ``torch.utils.flop_counter.FlopCounterMode`` on ``n_batches`` batches spread evenly over that plan (a
    stratified sample: work grows with the square of the length), and times a large float32 matmul of MiniLM's
    FFN shape in this process on one thread: the best rate one core reaches on this work.
    """
    from contextlib import contextmanager

    from torch.utils.flop_counter import FlopCounterMode

    import eval_suite.batch_rows as measure_module
    from eval_suite.settings import MeasureConfig
    from eval_suite.batching import collate, encode_texts
    from eval_suite.model_access import load_classifier
    from eval_suite.runner import plan_batches, select_examples
    from hf_sparse_attn.data import load_text_classification

    classifier = load_classifier(str(checkpoint))
    split = load_text_classification("mr")["test"]
    indices = select_examples(len(split), n_plan, seed=0)
    encodings, _ = encode_texts(classifier.tokenizer, [split[i]["text"] for i in indices], classifier.max_length)
    plan = plan_batches(indices, [len(e["input_ids"]) for e in encodings], batch_size)
    n_batches = min(n_batches, len(plan))
    sample = [plan[int((k + 0.5) * len(plan) / n_batches)] for k in range(n_batches)]
    stages: dict[str, float] = {}

    @contextmanager
    def counted(timings, stage):  # stands in for measure's stage timer: same stages, FLOPs instead of seconds
        with FlopCounterMode(display=False) as counter:
            yield
        stages[stage] = stages.get(stage, 0.0) + counter.get_total_flops()

    timer = measure_module._timed
    measure_module._timed = counted
    try:
        for members in sample:
            batch = collate([encodings[k] for k in members], classifier.tokenizer.pad_token_id)
            measure_module.measure_batch(classifier, batch, [0] * len(members), [indices[k] for k in members],
                                         MeasureConfig.of(ig_steps=ig_steps))
    finally:
        measure_module._timed = timer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    gemm_rate = repeats * 2 * 4096 * 384 * 1536 / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    counted_examples = sum(len(members) for members in sample)
    per_example = {k: v / counted_examples for k, v in stages.items()}
    total = sum(per_example.values())
    return {"planned": len(indices), "batches_counted": n_batches, "examples_counted": counted_examples,
            "gflop_per_example": {k: v / 1e9 for k, v in per_example.items()}, "gflop_per_example_total": total / 1e9,
            "target_gflop_per_second": 1000 * total / 600 / 1e9,
            "one_core_gemm_gflop_per_second": gemm_rate / 1e9}


def captum_comparison(checkpoint: Path, n: int, batch_size: int, ig_steps: int) -> dict:
    """The suite's batched gradient importances vs a captum loop over single examples (same quantities).

    Two parts, timed separately: (1) gradient importance of the inputs and of the representations every layer
    attends over (the suite: one backward pass per batch; captum: Saliency plus one LayerGradientXActivation
    call per layer, per example); (2) integrated gradients over the inputs (the suite: examples x steps batched;
    captum: one call per example with all steps in one internal batch).
    """
    import warnings

    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import LayerGradientXActivation, Saliency

    from eval_suite.attribution import ForwardContext, GradientNorm, IntegratedGradients, RepresentationGradientNorm
    from eval_suite.batching import collate, encode_texts
    from eval_suite.model_access import load_classifier
    from eval_suite.runner import plan_batches, select_examples
    from hf_sparse_attn.data import load_text_classification

    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    classifier = load_classifier(str(checkpoint))
    model = classifier.model
    split = load_text_classification("mr")["test"]
    indices = select_examples(len(split), n, seed=0)
    encodings, _ = encode_texts(classifier.tokenizer, [split[i]["text"] for i in indices], classifier.max_length)
    batches = plan_batches(indices, [len(e["input_ids"]) for e in encodings], batch_size)  # as the runner does
    ig = IntegratedGradients(steps=ig_steps, baseline="pad")

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        return value, time.perf_counter() - wall, time.process_time() - cpu

    def suite_gradients():
        out = {}
        for members in batches:
            ctx = ForwardContext(classifier, collate([encodings[k] for k in members], classifier.tokenizer.pad_token_id))
            g, r = GradientNorm()(ctx), RepresentationGradientNorm()(ctx)
            for row, k in enumerate(members):
                length = len(encodings[k]["input_ids"])
                out[k] = [g[row, :length]] + [r[row, layer, :length] for layer in range(classifier.n_layers)]
        return out

    def suite_ig():
        out = {}
        for members in batches:
            ctx = ForwardContext(classifier, collate([encodings[k] for k in members], classifier.tokenizer.pad_token_id))
            values = ig(ctx)
            for row, k in enumerate(members):
                out[k] = values[row, :len(encodings[k]["input_ids"])]
        return out

    def forward(embeds):
        return torch.softmax(model(inputs_embeds=embeds).logits, dim=-1)

    layers = [model.base_model.embeddings, *classifier.tap.layer_modules[:-1]]  # hidden_states[0 .. n-1]
    saliency = Saliency(forward)
    layer_gradients = [LayerGradientXActivation(forward, layer, multiply_by_inputs=False) for layer in layers]
    integrated = CaptumIG(forward)
    pad_embedding = classifier.word_embeddings(torch.tensor([classifier.tokenizer.pad_token_id])).detach()[0]

    def example(k):
        embeds = classifier.word_embeddings(torch.tensor([encodings[k]["input_ids"]])).detach()
        with torch.no_grad():
            target = int(forward(embeds).argmax(dim=-1))
        return embeds, target

    def captum_gradients():
        out = {}
        for k in range(len(encodings)):
            embeds, target = example(k)
            values = [saliency.attribute(embeds, target=target, abs=False)[0].norm(dim=-1)]
            values += [lg.attribute(embeds, target=target)[0].norm(dim=-1) for lg in layer_gradients]
            out[k] = [v.detach() for v in values]
        return out

    def captum_ig():
        out = {}
        for k in range(len(encodings)):
            embeds, target = example(k)
            special = torch.tensor(encodings[k]["special_tokens_mask"], dtype=torch.bool)[None, :, None]
            baseline = torch.where(special, embeds, pad_embedding.expand_as(embeds))
            attribution = integrated.attribute(embeds, baselines=baseline, target=target, n_steps=ig_steps,
                                               method="gausslegendre", internal_batch_size=ig_steps)
            out[k] = attribution[0].sum(dim=-1).abs().detach()
        return out

    ours_g, ours_g_wall, ours_g_cpu = timed(suite_gradients)
    theirs_g, theirs_g_wall, theirs_g_cpu = timed(captum_gradients)
    ours_ig, ours_ig_wall, ours_ig_cpu = timed(suite_ig)
    theirs_ig, theirs_ig_wall, theirs_ig_cpu = timed(captum_ig)

    def normalised(v):
        return v / v.sum()

    def max_difference(a, b):
        return max(float((normalised(a[k]) - normalised(b[k])).abs().max()) for k in a)

    grad_difference = max(max_difference({k: v[m] for k, v in ours_g.items()}, {k: v[m] for k, v in theirs_g.items()})
                          for m in range(classifier.n_layers + 1))
    n_examples = len(encodings)
    return {
        "examples": n_examples,
        "batch_size": batch_size,
        "gradient_importance": {
            "what": "grad_norm of the inputs + repr_grad_norm of every layer",
            "suite_examples_per_second": n_examples / ours_g_wall,
            "captum_examples_per_second": n_examples / theirs_g_wall,
            "speedup": theirs_g_wall / ours_g_wall,
            "speedup_cpu_time": theirs_g_cpu / ours_g_cpu,
            "max_abs_difference_of_normalised_importance": grad_difference,
        },
        "integrated_gradients": {
            "steps": ig_steps,
            "suite_examples_per_second": n_examples / ours_ig_wall,
            "captum_examples_per_second": n_examples / theirs_ig_wall,
            "speedup": theirs_ig_wall / ours_ig_wall,
            "speedup_cpu_time": theirs_ig_cpu / ours_ig_cpu,
            "max_abs_difference_of_normalised_importance": max_difference(ours_ig, theirs_ig),
        },
        "both": {
            "speedup": (theirs_g_wall + theirs_ig_wall) / (ours_g_wall + ours_ig_wall),
            "speedup_cpu_time": (theirs_g_cpu + theirs_ig_cpu) / (ours_g_cpu + ours_ig_cpu),
        },
    }


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def main(argv=None) -> int:
    from eval_suite.agreement import HEADLINE, RAW
    parser = bench_parser(__doc__, threads=2)
    parser.add_argument("--n", type=int, default=200, help="MR test sentences measured per mapping")
    parser.add_argument("--impls", default="softmax,sparsemax,entmax15", help="attention mappings to evaluate")
    parser.add_argument("--captum-n", type=int, default=64, help="sentences for the captum comparison (0: skip)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=20)
    parser.add_argument("--flops-batches", type=int, default=4,
                        help="batches of the 1,000-sentence plan whose floating-point work is counted (0: skip)")
    parser.add_argument("--probe-train", type=int, default=2000, help="training sentences for the probe head")
    parser.add_argument("--processes", type=int, default=1,
                        help="run each evaluation under accelerate launch with this many CPU processes, 1 thread each")
    parser.add_argument("--work-dir", default=str(REPO / "out" / "bench_eval_suite"))
    args = start(parser, argv)
    work = Path(args.work_dir)
    report = {"processes": args.processes, "n": args.n, "ig_steps": args.ig_steps, "mappings": {}}

    for impl in [s.strip() for s in args.impls.split(",") if s.strip()]:
        checkpoint = build_probe_checkpoint(impl, work / f"minilm-mr-{impl}", args.probe_train)
        results, info = evaluate_impl(checkpoint, work / f"eval-{impl}", args.n, args.batch_size, args.ig_steps,
                                      args.processes)
        rate = info["examples_per_second"]
        s = results["summary"]
        faith = results["faithfulness"]["rankings"]
        entry = {
            "examples_per_second": rate,
            "cpu_seconds_per_example": info["process_cpu_seconds"] / max(1, results["n_examples"]),
            "load_average": os.getloadavg(),
            "minutes_per_1000": (1000 / rate / 60) if rate else None,
            "stage_seconds": info["stage_seconds_main_process"],
            "accuracy": results["accuracy"], "macro_f1": results["macro_f1"],
            "agreement": {m: {k: v[k]["mean"] for k in (RAW, HEADLINE)}
                          for m, v in s["agreement"].items()},
            "heads_defined": s["heads_defined"],
            **{key: s[key]["mean"] for key in ("attention_sparsity", "attention_support_size", "attention_entropy",
                                               "special_mass", "input_to_repr_entropy", "coindexed_share")},
            "ig_completeness_gap_median": results["integrated_gradients"]["completeness_gap"]["median"],
            "comprehensiveness": {k: v["comprehensiveness"]["mean"] for k, v in faith.items()},
            "sufficiency": {k: v["sufficiency"]["mean"] for k, v in faith.items()},
        }
        report["mappings"][impl] = entry
        print(f"\n== MiniLM / MR test, attn_impl={impl}: {results['n_examples']} sentences, accuracy "
              f"{results['accuracy']:.3f}, macro-F1 {results['macro_f1']:.3f}")
        print(f"   {rate:.2f} examples/s -> {entry['minutes_per_1000']:.1f} min per 1,000 sentences "
              f"({f'{args.processes} processes x 1 thread' if args.processes > 1 else f'{args.threads} threads'}, "
              f"load average {entry['load_average'][0]:.1f}); "
              f"{entry['cpu_seconds_per_example']:.2f} CPU-s per example; seconds per stage: {entry['stage_seconds']}")
        for line in s["text"]:
            print("   " + line)
        print("   comprehensiveness: " + ", ".join(f"{k} {_fmt(v)}" for k, v in entry["comprehensiveness"].items()))

    if args.captum_n:
        try:
            import captum  # noqa: F401
        except ImportError:
            print("\ncaptum is not installed (pip install --no-deps captum): comparison skipped")
        else:
            checkpoint = build_probe_checkpoint("softmax", work / "minilm-mr-softmax", args.probe_train)
            comparison = captum_comparison(checkpoint, args.captum_n, args.batch_size, args.ig_steps)
            report["captum"] = comparison
            for part in ("gradient_importance", "integrated_gradients"):
                c = comparison[part]
                print(f"\n== {part} ({c.get('what', str(c.get('steps')) + ' steps')}) on {comparison['examples']} "
                      f"sentences: suite {c['suite_examples_per_second']:.2f} ex/s, captum loop "
                      f"{c['captum_examples_per_second']:.2f} ex/s -> {c['speedup']:.1f}x (CPU time "
                      f"{c['speedup_cpu_time']:.1f}x); max |difference| of normalised importance "
                      f"{c['max_abs_difference_of_normalised_importance']:.1e}")
            print(f"== both: {comparison['both']['speedup']:.1f}x (CPU time {comparison['both']['speedup_cpu_time']:.1f}x)")
    if args.flops_batches:
        checkpoint = build_probe_checkpoint("softmax", work / "minilm-mr-softmax", args.probe_train)
        budget = flop_budget(checkpoint, args.flops_batches, args.batch_size, args.ig_steps)
        report["flops"] = budget
        print(f"\n== floating-point work of the full set (softmax; {budget['batches_counted']} batches, "
              f"{budget['examples_counted']} of {budget['planned']} planned MR sentences): "
              f"{budget['gflop_per_example_total']:.0f} GFLOP per sentence ("
              + ", ".join(f"{k} {v:.1f}" for k, v in budget["gflop_per_example"].items() if v >= 0.05) + ")")
        print(f"   1,000 sentences in 10 minutes needs {budget['target_gflop_per_second']:.0f} GFLOP/s sustained; one "
              f"core of this machine multiplies MiniLM-sized float32 matrices at "
              f"{budget['one_core_gemm_gflop_per_second']:.0f} GFLOP/s "
              f"(x2 cores = {2 * budget['one_core_gemm_gflop_per_second']:.0f})")
    finish(args, report, work / "bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
