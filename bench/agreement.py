"""The agreement figures and eq. 5 of one batch: today's code against the one-pass tau-b forms, Knight's O(L log L)
counts, scipy, and eq. 5 by length buckets and from a replicated batch. CPU time of this process with one thread;
ratios within one run.

    python bench/agreement.py                               # everything: 38 min on the shared machine (load 5-6)
    python bench/agreement.py --what tau scipy --lengths 16 64 256
    python bench/agreement.py --what crossover --crossover-lengths 128 256 512 1024 2048
    python bench/agreement.py --what eq5 --eq5-lengths 16 32 64

1. tau, per L (``--lengths``): one runner batch of B = min(32, 4096 / L) examples of L tokens ([CLS], L - 2 content
   tokens, [SEP]), 6 layers x 12 heads: entmax15 attention of the [CLS] query (hf_sparse_attn's mapping on
   N(0, 2^2) scores: exact zeros, ties at zero), the quick tier's importance (grad_norm and grad_x_input dense,
   repr_grad_norm with a third of its values 0) and a dense rollout, seeded. ``today``: the tau-b lines of
   ``eval_suite.measure._compare`` (four function calls and the excess) for its three calls of a quick batch
   (attention vs every method over the content tokens, attention vs the all-positions methods over every token,
   rollout vs the input methods). ``one pass``: ``kendall_tau_b_forms_by_view(attention, methods, {content,
   real})`` and ``kendall_tau_b_forms(rollout, input methods, content)`` with the shared-sign matrix product, with
   Knight's counts, and with ``auto``. Every form is checked identical to today's (bit for bit).
2. scipy: ``scipy.stats.kendalltau`` per (x, y) pair for the forms it can give (raw, on support, on union: three
   calls per head x method and position set); ms per example extrapolated from 300 timed calls per L.
3. crossover: the matrix product against Knight for 12 heads x ``--crossover-methods`` methods (one position set)
   over ``--crossover-lengths``, and the length from which ``knight_from_length`` switches.
4. eq5, per L (``--eq5-lengths``): MiniLM (embedded all-MiniLM-L6-v2 with a seeded random head) with entmax15 on
   B = min(32, 1024 / L) documents of 0.75 L to L tokens (MR test sentences joined). Rows for every content position
   up to L = 64; above, a seeded sample of ``--eq5-sample`` content positions per document (what long documents
   use); and the runner's two batches of 64 MR test sentences (every content position). The per-position loop
   (eval_suite.attribution.InputToRepresentation), length buckets, the replicated batch and ``auto``; ``loop /
   best`` = the loop's time over the faster of the two new layouts; max |difference| of the rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

N_LAYERS, N_HEADS = 6, 12


def cpu_seconds(fn, repeats: int = 1):
    """Best CPU time of ``repeats`` calls (the first result is returned)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        value = fn()
        best = min(best, time.process_time() - start)
        result = value if result is None else result
    return best, result


def quick_batch(L: int, seed: int = 0) -> dict:
    """Tensors of one quick-tier batch of B examples of L tokens (see the module docstring)."""
    from hf_sparse_attn.sparse_attn_mappings import entmax15

    B = max(1, min(32, 4096 // L))
    g = torch.Generator().manual_seed(seed)
    attention = entmax15(2 * torch.randn(B, N_LAYERS, N_HEADS, L, generator=g)).double()
    inputs = torch.exp(torch.randn(B, 2, L, generator=g)).double()  # grad_norm, grad_x_input
    representation = torch.exp(torch.randn(B, N_LAYERS, 1, L, generator=g)).double()
    representation = representation * (torch.rand(B, N_LAYERS, 1, L, generator=g) > 1 / 3)
    per_layer_inputs = inputs[:, None].expand(-1, N_LAYERS, -1, -1)
    methods = torch.cat([per_layer_inputs, representation], dim=2)  # [B, n, 3, L]
    rollout = torch.softmax(torch.randn(B, N_LAYERS, N_HEADS, L, generator=g), dim=-1).double()
    real = torch.ones(B, L, dtype=torch.bool)
    content = real.clone()
    content[:, 0] = content[:, -1] = False
    return {"B": B, "attention": attention, "methods": methods, "inputs": per_layer_inputs, "rollout": rollout,
            "content": content, "real": real}


def today_tau_forms(source, importance, mask) -> dict:
    """The tau-b lines of eval_suite.measure._compare, as they are today."""
    from eval_suite import metrics as M
    from eval_suite.agreement import HEADLINE

    mask = mask[:, None, :]
    out = {"kendall_tau_b": M.kendall_tau_b_cross(source, importance, mask),
           "kendall_tau_b_on_support": M.kendall_tau_b_cross(source, importance, mask, on_support=True),
           "kendall_tau_b_on_union": M.kendall_tau_b_on_union_cross(source, importance, mask),
           "kendall_tau_b_null": M.kendall_tau_b_null_cross(source, importance, mask)}
    out[HEADLINE] = out["kendall_tau_b"] - out["kendall_tau_b_null"]
    return out


def today(batch) -> dict:
    return {"attention": today_tau_forms(batch["attention"], batch["methods"], batch["content"]),
            "all_positions": today_tau_forms(batch["attention"], batch["methods"], batch["real"]),
            "rollout": today_tau_forms(batch["rollout"], batch["inputs"], batch["content"])}


def one_pass(batch, algorithm: str) -> dict:
    from eval_suite.metrics.tau_b_forms import kendall_tau_b_forms, kendall_tau_b_forms_by_view

    masks = {"attention": batch["content"][:, None], "all_positions": batch["real"][:, None]}
    views = kendall_tau_b_forms_by_view(batch["attention"], batch["methods"], masks, algorithm=algorithm)
    views["rollout"] = kendall_tau_b_forms(batch["rollout"], batch["inputs"], batch["content"][:, None],
                                           algorithm=algorithm)
    return views


def _print_row(lines: list[str]) -> None:
    """Print a table's newest row (and its header first)."""
    if len(lines) == 3:
        print("\n".join(lines[:2]), flush=True)
    print(lines[-1], flush=True)


def identical(a: dict, b: dict) -> bool:
    return all(torch.equal(torch.nan_to_num(a[v][f], nan=7.0), torch.nan_to_num(b[v][f], nan=7.0))
               and torch.equal(torch.isnan(a[v][f]), torch.isnan(b[v][f])) for v in a for f in a[v])


def bench_tau(lengths, repeats: int) -> list[str]:
    lines = ["| L | B | today ms/ex | one pass, matmul | one pass, Knight | one pass, auto (engine) | today / auto | "
             "identical |", "|---|---|---|---|---|---|---|---|"]
    from eval_suite.metrics.tau_b_forms import knight_from_length

    for L in lengths:
        batch = quick_batch(L)
        B = batch["B"]
        t_today, reference = cpu_seconds(lambda: today(batch), 1 if L >= 256 else repeats)
        times, same = {}, True
        for algorithm in ("matmul", "knight", "auto"):
            times[algorithm], result = cpu_seconds(lambda: one_pass(batch, algorithm), repeats)
            same = same and identical(result, reference)
        engine = "Knight" if L >= knight_from_length(N_HEADS, 3, 2) else "matmul"
        ms = {k: 1e3 * v / B for k, v in times.items()}
        lines.append(f"| {L} | {B} | {1e3 * t_today / B:.1f} | {ms['matmul']:.2f} ({t_today / times['matmul']:.0f}x) | "
                     f"{ms['knight']:.2f} ({t_today / times['knight']:.0f}x) | {ms['auto']:.2f} ({engine}) | "
                     f"{t_today / times['auto']:.0f}x | {'yes' if same else 'NO'} |")
        _print_row(lines)
    return lines


def bench_scipy(lengths) -> list[str]:
    """scipy.stats.kendalltau for the raw, on-support and union forms of every head x method and position set."""
    from scipy.stats import kendalltau

    lines = ["| L | scipy ms/ex (3 forms) | one pass ms/ex (5 forms) | scipy / one pass |", "|---|---|---|---|"]
    calls_per_example = N_LAYERS * N_HEADS * (3 + 3 + 2) * 3  # views: 3 + 3 methods, rollout 2 input methods; 3 forms
    for L in lengths:
        batch = quick_batch(L)
        x = batch["attention"].reshape(-1, L).numpy()
        y = batch["methods"].reshape(-1, L).numpy()
        rng = np.random.default_rng(0)
        picks = [(rng.integers(len(x)), rng.integers(len(y))) for _ in range(100)]
        keep = batch["content"][0].numpy()

        def run():
            warnings.simplefilter("ignore")  # scipy warns for a support of fewer than two positions (NaN, as ours)
            for i, j in picks:
                a, b = x[i][keep], y[j][keep]
                kendalltau(a, b)
                kendalltau(a[a != 0], b[a != 0])
                union = (a != 0) | (b != 0)
                kendalltau(a[union], b[union])

        seconds, _ = cpu_seconds(run)
        scipy_ms = 1e3 * seconds / (3 * len(picks)) * calls_per_example
        ours, _ = cpu_seconds(lambda: one_pass(batch, "auto"), 2)
        ours_ms = 1e3 * ours / batch["B"]
        lines.append(f"| {L} | {scipy_ms:.1f} | {ours_ms:.2f} | {scipy_ms / ours_ms:.0f}x |")
        _print_row(lines)
    return lines


def bench_crossover(lengths, method_counts, repeats: int) -> list[str]:
    from eval_suite.metrics.tau_b_forms import kendall_tau_b_forms, knight_from_length

    lines = ["| heads x methods | " + " | ".join(f"L = {L}" for L in lengths) + " | Knight faster from | "
             "knight_from_length |", "|---|" + "---|" * (len(lengths) + 2)]
    for M_ in method_counts:
        cells, first = [], None
        for L in lengths:
            B = max(1, 4096 // L)
            g = torch.Generator().manual_seed(L)
            from hf_sparse_attn.sparse_attn_mappings import entmax15

            x = entmax15(2 * torch.randn(B, N_LAYERS, N_HEADS, L, generator=g)).double()
            y = torch.exp(torch.randn(B, N_LAYERS, M_, L, generator=g)).double()
            mask = torch.ones(B, 1, L, dtype=torch.bool)
            matmul, _ = cpu_seconds(lambda: kendall_tau_b_forms(x, y, mask, algorithm="matmul"), repeats)
            knight, _ = cpu_seconds(lambda: kendall_tau_b_forms(x, y, mask, algorithm="knight"), repeats)
            cells.append(f"{1e3 * matmul / B:.1f} / {1e3 * knight / B:.1f}")
            if first is None and knight < matmul:
                first = L
        lines.append(f"| {N_HEADS} x {M_} | " + " | ".join(cells) + f" | {first or '-'} | "
                     f"{knight_from_length(N_HEADS, M_)} |")
        _print_row(lines)
    print("Cells: ms per example, matrix product / Knight (6 layers, one position set).")
    return lines


def minilm_classifier(work: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from eval_suite.model_access import load_classifier
    from hf_sparse_attn.assets import embedded_minilm_path

    folder = work / "minilm_random_head"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(embedded_minilm_path(), num_labels=2).save_pretrained(folder)
        AutoTokenizer.from_pretrained(embedded_minilm_path()).save_pretrained(folder)
    return load_classifier(str(folder), attn_impl="entmax15")


def documents(classifier, L: int, count: int):
    """``count`` documents of 0.75 L to L tokens (MR test sentences joined), as one padded batch."""
    from eval_suite.batching import collate, encode_texts
    from hf_sparse_attn.data import load_text_classification

    words = " ".join(load_text_classification("mr")["test"]["text"][:400]).split()
    texts, start = [], 0
    for k in range(count):
        target = int(round(0.75 * L + 0.25 * L * k / max(1, count - 1)))
        texts.append(" ".join(words[start:start + 2 * target]))
        start += 2 * target
    encodings, _ = encode_texts(classifier.tokenizer, texts, L)
    for encoding, k in zip(encodings, range(count)):
        target = int(round(0.75 * L + 0.25 * L * k / max(1, count - 1)))
        for key in encoding:
            encoding[key] = encoding[key][:target - 1] + encoding[key][-1:]  # keep [SEP]
    return collate(encodings, classifier.tokenizer.pad_token_id)


def mr_batches(classifier, n: int = 64):
    """The runner's batches of ``n`` seeded MR test sentences, planned with its default settings (those of the tree
    on ``sys.path``: a tree before ``max_padding`` plans by batch size and padded tokens alone)."""
    import dataclasses

    from eval_suite.batching import collate, encode_texts
    from eval_suite.runner import plan_batches, select_examples
    from eval_suite.settings import EvalRequest
    from hf_sparse_attn.data import load_text_classification

    test = load_text_classification("mr")["test"]
    indices = select_examples(len(test), n, seed=0)
    encodings, _ = encode_texts(classifier.tokenizer, [test[i]["text"] for i in indices], classifier.max_length)
    defaults = {f.name: f.default for f in dataclasses.fields(EvalRequest)}
    limits = [defaults[name] for name in ("batch_size", "max_batch_tokens", "max_padding") if name in defaults]
    plan = plan_batches(indices, [len(e["input_ids"]) for e in encodings], *limits)
    return [collate([encodings[k] for k in members], classifier.tokenizer.pad_token_id) for members in plan]


def bench_eq5(lengths, sample: int, work: Path) -> list[str]:
    from eval_suite.attribution import ForwardContext, InputToRepresentation, sample_positions
    from eval_suite.input_to_representation import STRATEGIES, forecast_work, input_to_representation

    classifier = minilm_classifier(work)
    lines = ["| batch | positions per document | per-position loop s | length buckets s | replicated s | "
             "loop / best | auto picks | auto s | max abs diff |", "|---|---|---|---|---|---|---|---|---|"]
    cases = [(f"L = {L}: {max(1, min(32, 1024 // L))} documents of {3 * L // 4}-{L} tokens", L,
              [documents(classifier, L, max(1, min(32, 1024 // L)))]) for L in lengths]
    cases.append(("64 MR test sentences, the runner's batches", 0, mr_batches(classifier)))
    for label, L, batches in cases:
        seconds = dict.fromkeys(("loop", *STRATEGIES[1:], "auto"), 0.0)
        picks, diff = set(), 0.0
        for batch in batches:
            ctx = ForwardContext(classifier, batch)
            content = batch.content_mask
            wanted = content if L <= 64 else sample_positions(list(range(batch.size)), content, sample, seed=0)
            positions = wanted[:, None, :].expand(-1, classifier.n_layers, -1)
            t, loop = cpu_seconds(lambda: InputToRepresentation()(ctx, positions))
            seconds["loop"] += t
            for strategy in STRATEGIES[1:]:
                t, rows = cpu_seconds(lambda: input_to_representation(ctx, positions, strategy=strategy))
                seconds[strategy] += t
                diff = max(diff, float((rows - loop).abs().max()))
            work = forecast_work(batch.attention_mask, positions, ctx.max_grad_tokens)
            picks.add(min(STRATEGIES, key=work.get).replace("_", " "))
            seconds["auto"] += cpu_seconds(lambda: input_to_representation(ctx, positions))[0]
        best = min(seconds["length_buckets"], seconds["replicated"])
        what = "all content" if L <= 64 else f"{sample} sampled"
        lines.append(f"| {label} | {what} | {seconds['loop']:.1f} | {seconds['length_buckets']:.1f} | "
                     f"{seconds['replicated']:.1f} | {seconds['loop'] / best:.2f} | {', '.join(sorted(picks))} | "
                     f"{seconds['auto']:.1f} | {diff:.1e} |")
        _print_row(lines)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", nargs="*", default=["tau", "scipy", "crossover", "eq5"],
                   choices=["tau", "scipy", "crossover", "eq5"])
    p.add_argument("--lengths", nargs="*", type=int, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--crossover-lengths", nargs="*", type=int, default=[128, 256, 512, 1024, 2048])
    p.add_argument("--crossover-methods", nargs="*", type=int, default=[3, 7])
    p.add_argument("--eq5-lengths", nargs="*", type=int, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--eq5-sample", type=int, default=8, help="sampled content positions per document above L = 64")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs (today's path: once from L = 256)")
    p.add_argument("--work-dir", default=str(REPO / "out" / "bench_agreement"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} at start; one torch thread; CPU time of this process", flush=True)
    sections = []
    if "tau" in args.what:
        print("\ntau-b forms of one quick-tier batch (6 layers x 12 heads; 3 methods, all positions, rollout)")
        sections.append(bench_tau(args.lengths, args.repeats))
    if "scipy" in args.what:
        print("\nscipy.stats.kendalltau per pair (extrapolated) against the one pass (auto)")
        sections.append(bench_scipy(args.lengths))
    if "crossover" in args.what:
        print("\nshared-sign matrix product against Knight's counts")
        sections.append(bench_crossover(args.crossover_lengths, args.crossover_methods, args.repeats))
    if "eq5" in args.what:
        print("\neq. 5 rows on MiniLM (entmax15): the per-position loop, length buckets, the replicated batch")
        sections.append(bench_eq5(args.eq5_lengths, args.eq5_sample, Path(args.work_dir)))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
