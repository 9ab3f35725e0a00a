"""Benchmark of the measurement tiers (--measures): MiniLM on MR sentences, and 512-token documents on MiniLM and
on a BERT-base-size encoder.

    python bench/measures.py                                  # 64 MR sentences per tier, one 512-token document
    python bench/measures.py --n 200 --threads 2 --doc-models minilm bert-base
    python bench/measures.py --run-up-to 120                  # run only what the forecast puts under 2 minutes

1. Sentences. For each tier (``--tiers``, default quick, paper, full), ``eval_suite.run_evaluation`` on ``--n``
   seeded MR test sentences with MiniLM (all-MiniLM-L6-v2, embedded offline) and a probe head (built as
   ``bench/evaluation.py`` builds it, cached in ``--work-dir``). Prints examples/s (the measuring loop, from
   run_info.json), the extrapolated seconds for 1,000 sentences, the forecast next to the measured time, and the
   ratio to the tier's FLOP floor: matmul FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` on
   ``--flop-batches`` batches of the same plan (a stratified sample: work grows with the square of the length),
   divided by a float32 matmul of MiniLM's FFN shape timed in this process with the same threads (the best rate
   this machine reaches on this work). ``x floor`` = measured seconds / floor seconds.
2. Documents. For each model of ``--doc-models`` (MiniLM; ``bert-base``: random weights from a config of 12 layers,
   hidden 768, 12 heads, FFN 3072, with MiniLM's tokenizer) and each of ``quick`` and ``paper`` with eq. 5 sampled
   (``--input-to-repr-sample``, default 16 positions), one document of 512 tokens (MR test sentences joined) is
   forecast and, when the forecast is under ``--run-up-to`` seconds, measured: seconds per document (wall and CPU)
   and the peak resident memory of the process. A row that is only forecast says so.

Numbers are ratios within one run of this script (the floor and the times share the machine's state); the
machine's load average is printed with them.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from bench.evaluation import build_probe_checkpoint  # noqa: E402
from bench.startup import bench_parser, start  # noqa: E402

DOC_TOKENS = 512


def matmul_peak(threads: int) -> float:
    """FLOP/s of a float32 matmul of MiniLM's FFN shape ([4096, 384] @ [384, 1536]) on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):  # best of five: the machine is shared, the floor is what it reaches when not disturbed
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    torch.set_num_threads(previous)
    return 2 * 4096 * 384 * 1536 / best


def counted_flops(checkpoint: Path, n: int, batch_size: int, measures: str, n_batches: int) -> float:
    """Matmul FLOPs per example of the selection ``measures`` on a stratified sample of the n-sentence plan."""
    from torch.utils.flop_counter import FlopCounterMode

    from eval_suite.batching import collate, encode_texts
    from eval_suite.batch_rows import measure_batch
    from eval_suite.settings import MeasureConfig
    from eval_suite.model_access import load_classifier
    from eval_suite.runner import plan_batches, select_examples
    from hf_sparse_attn.data import load_text_classification

    classifier = load_classifier(str(checkpoint), device="cpu")
    split = load_text_classification("mr")["test"]
    indices = select_examples(len(split), n, seed=0)
    encodings, _ = encode_texts(classifier.tokenizer, [split[i]["text"] for i in indices], classifier.max_length)
    plan = plan_batches(indices, [len(e["input_ids"]) for e in encodings], batch_size, 4096)
    n_batches = min(n_batches, len(plan))
    sample = [plan[int((k + 0.5) * len(plan) / n_batches)] for k in range(n_batches)]
    config = MeasureConfig.of(measures=measures)
    flops = 0
    for members in sample:
        batch = collate([encodings[k] for k in members], classifier.tokenizer.pad_token_id)
        with FlopCounterMode(display=False) as counter:
            measure_batch(classifier, batch, [0] * len(members), [indices[k] for k in members], config)
        flops += counter.get_total_flops()
    return flops / sum(len(members) for members in sample)


def evaluate(checkpoint, out_dir: Path, dataset: str, split: str, limit, measures: str, batch_size: int,
             max_length: int | None = None, sample: int | None = None) -> dict:
    """One run_evaluation; its run_info.json plus the process CPU seconds (loading included) and peak memory."""
    from eval_suite.settings import MeasureConfig
    from eval_suite.runner import EvalRequest, run_evaluation

    request = EvalRequest(checkpoint=str(checkpoint), output_dir=str(out_dir), dataset=dataset, split=split,
                          limit=limit, batch_size=batch_size, plot_examples=0, max_length=max_length, overwrite=True,
                          cpu=True, measure=MeasureConfig.of(measures=measures, input_to_repr_sample=sample,
                                                          ig_steps=16))
    cpu, wall = time.process_time(), time.perf_counter()
    run_evaluation(request)
    info = json.loads((out_dir / "run_info.json").read_text())
    info["process_cpu_seconds"] = time.process_time() - cpu
    info["wall_seconds"] = time.perf_counter() - wall
    info["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return info


def forecast_only(checkpoint, encodings_text: str, measures: str, sample: int | None) -> float:
    """Uncalibrated forecast seconds of one document (the cost model with this machine's measured rates)."""
    from eval_suite.batching import encode_texts
    from eval_suite.forecast import Forecast, Machine, batch_shapes
    from eval_suite.settings import MeasureConfig
    from eval_suite.cost import ModelShape
    from eval_suite.model_access import load_classifier

    classifier = load_classifier(str(checkpoint), device="cpu")
    encodings, _ = encode_texts(classifier.tokenizer, [encodings_text], DOC_TOKENS)
    model = ModelShape.of(classifier.model.config)
    config = MeasureConfig.of(measures=measures, input_to_repr_sample=sample)
    forecast = Forecast(model, config, Machine.measure(classifier, model), batch_shapes(encodings, [[0]]))
    return forecast.total([[0]])[0]


def build_bert_base(folder: Path, tokenizer_source: str) -> Path:
    """A BERT-base-size sequence classifier with random weights (seeded) and MiniLM's tokenizer."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, num_labels=2)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return folder


def document_text(tokenizer, n_tokens: int) -> str:
    """MR test sentences joined until the text has at least ``n_tokens`` tokens (truncated to exactly that)."""
    from hf_sparse_attn.data import load_text_classification

    texts, total = [], 0
    for text in load_text_classification("mr")["test"]["text"]:
        texts.append(text)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if total >= n_tokens:
            break
    return " ".join(texts)


def main(argv=None) -> int:
    p = bench_parser(__doc__, threads=2)
    p.add_argument("--n", type=int, default=64, help="MR test sentences per tier")
    p.add_argument("--tiers", nargs="*", default=["quick", "paper", "full"], help="none: documents only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--flop-batches", type=int, default=2)
    p.add_argument("--doc-models", nargs="*", default=["minilm"], choices=["minilm", "bert-base"])
    p.add_argument("--doc-tiers", nargs="*", default=["quick", "paper"], choices=["quick", "paper"],
                   help="document rows: quick, and paper with eq. 5 sampled")
    p.add_argument("--input-to-repr-sample", type=int, default=16)
    p.add_argument("--run-up-to", type=float, default=600.0,
                   help="measure a document only when its forecast is under this many seconds (else: forecast)")
    p.add_argument("--work-dir", default=str(REPO / "out" / "bench_measures"))
    args = start(p, argv)
    from hf_sparse_attn.assets import embedded_minilm_path

    work = Path(args.work_dir)
    minilm = build_probe_checkpoint("softmax", work / "minilm_softmax", n_train=2000)
    peak = matmul_peak(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}; float32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s", flush=True)

    rows = []
    for tier in args.tiers:
        info = evaluate(minilm, work / f"mr_{tier}", "mr", "test", args.n, tier, args.batch_size)
        flops = counted_flops(minilm, args.n, args.batch_size, tier, args.flop_batches)
        per_second = info["examples_per_second"]
        floor = flops / peak  # seconds per example at matmul peak
        rows.append((tier, per_second, 1000 / per_second, info["forecast"]["measure_seconds"],
                     info["measure_seconds"], flops / 1e9, 1 / per_second / floor))
        print(f"  {tier}: {per_second:.2f} ex/s", flush=True)
    if rows:
        print(f"\nMiniLM + MR, {args.n} test sentences, batch {args.batch_size}, {args.threads} threads")
        print("| tier | examples/s | s per 1,000 | forecast s | measured s | GFLOP/example | x floor |")
        print("|---|---|---|---|---|---|---|")
        for tier, per_second, thousand, forecast, measured, gflop, ratio in rows:
            print(f"| {tier} | {per_second:.2f} | {thousand:.0f} | {forecast:.1f} | {measured:.1f} | {gflop:.1f} | "
                  f"{ratio:.2f} |")

    if args.doc_models:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(embedded_minilm_path())
        text = document_text(tokenizer, DOC_TOKENS)
        data = work / "document.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        with open(data, "w", newline="", encoding="utf-8") as handle:
            # the loader splits a file into train/validation/test and wants two classes: the same text 20 times
            csv.writer(handle).writerows([("text", "label")] + [(text, k % 2) for k in range(20)])
        checkpoints = {"minilm": minilm, "bert-base": build_bert_base(work / "bert_base_random",
                                                                      embedded_minilm_path())}
        print(f"\nOne {DOC_TOKENS}-token document (MR test sentences joined), {args.threads} threads")
        print("| model | tier | forecast s | measured s/doc | CPU s (whole run) | peak RSS GiB |")
        print("|---|---|---|---|---|---|")
        for name in args.doc_models:
            for tier, sample in (("quick", None), ("paper", args.input_to_repr_sample)):
                if tier not in args.doc_tiers:
                    continue
                label = tier if sample is None else f"{tier}, eq. 5 sampled ({sample} positions)"
                forecast = forecast_only(checkpoints[name], text, tier, sample)
                if forecast > args.run_up_to:
                    print(f"| {name} | {label} | {forecast:.0f} | not run (over --run-up-to) | | |", flush=True)
                    continue
                info = evaluate(checkpoints[name], work / f"doc_{name}_{tier}", str(data), "train", 1, tier, 1,
                                max_length=DOC_TOKENS, sample=sample)
                print(f"| {name} | {label} | {forecast:.0f} | {info['measure_seconds']:.1f} | "
                      f"{info['process_cpu_seconds']:.0f} | {info['peak_rss_gib']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
