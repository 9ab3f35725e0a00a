"""What torch.export and torch.compile(fullgraph=True) give over eager, per attention mapping (MiniLM, eval mode).

For each mapping: the eager forward (no_grad, batch of real TREC questions padded to one length), the same model
exported with torch.export (the module it returns) and compiled with torch.compile(fullgraph=True), all three run
in the same rounds with a rotating order. Printed: the one-off cost of exporting / compiling (seconds), the median
of per-round ratios of the traced forward to the eager forward of that round, and the largest difference of the
logits to eager (a sanity check: the traced graphs run the traced solver, see docs/export.md).

    python bench/export.py                                  # inductor, all mappings: ~10 minutes on 2 busy cores
    python bench/export.py --impls softmax sparsemax --rounds 5 --threads 1 --clock cpu
    python bench/export.py --backend aot_eager --json export.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import hf_sparse_attn  # noqa: E402  (attn_impl= on the Auto classes)
from bench.attention import minilm_path, training_batch  # noqa: E402  (the same inputs as the training-step bench)
from bench.startup import bench_parser, finish, start  # noqa: E402

IMPLS = [impl.example() for impl in hf_sparse_attn.ATTN_IMPLS.values()]
CLOCK = time.perf_counter


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def timed(fn, *inputs) -> tuple[float, torch.Tensor]:
    start = CLOCK()
    with torch.no_grad():
        out = fn(*inputs)
    return CLOCK() - start, out


def bench_impl(impl: str, path: str, ids, mask, args) -> dict:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl=impl).eval()
    eager = Logits(model)
    _, reference = timed(eager, ids, mask)  # also installs transformers' output hooks before tracing
    torch._dynamo.reset()
    start = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(eager, (ids, mask)).module()
    export_s = time.perf_counter() - start
    compiled = torch.compile(eager, fullgraph=True, backend=args.backend)
    compile_s, compiled_out = timed(compiled, ids, mask)  # the first call compiles
    _, exported_out = timed(exported, ids, mask)
    variants = {"eager": eager, "export": exported, "compile": compiled}
    times = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            times[name].append(timed(variants[name], ids, mask)[0])
    row = {
        "export_s": export_s,
        "first_compiled_call_s": compile_s,
        "eager_median_s": statistics.median(times["eager"]),
        "export_ratio": statistics.median(t / e for t, e in zip(times["export"], times["eager"])),
        "compile_ratio": statistics.median(t / e for t, e in zip(times["compile"], times["eager"])),
        "export_max_abs_diff": float((exported_out - reference).abs().max()),
        "compile_max_abs_diff": float((compiled_out - reference).abs().max()),
    }
    print(f"{impl:26s} {row['eager_median_s']:9.4f} {row['export_s']:9.1f} {row['export_ratio']:8.2f} "
          f"{row['first_compiled_call_s']:10.1f} {row['compile_ratio']:8.2f} "
          f"{max(row['export_max_abs_diff'], row['compile_max_abs_diff']):9.1e}", flush=True)
    return row


def parse_args(argv=None):
    parser = bench_parser(__doc__, threads=None, clock=True, json=True)
    parser.add_argument("--impls", nargs="+", default=IMPLS, help="attn_impl names (default: every mapping)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of eager / export / compile (default 5)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    args = start(parser, argv)
    for flag in ("batch", "length", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    for impl in args.impls:
        try:
            hf_sparse_attn.parse_attn_impl(impl)
        except hf_sparse_attn.SparseAttnError as error:
            parser.error(str(error))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    global CLOCK
    CLOCK = args.timer
    path = minilm_path()
    ids, mask, _ = training_batch(path, args.batch, args.length)
    print(f"== MiniLM eval forward, batch {args.batch}, length {args.length} ({int(mask.sum())}/{mask.numel()} real "
          f"tokens), {torch.get_num_threads()} threads, {args.clock} clock, backend {args.backend}, "
          f"{args.rounds} rounds ==")
    print(f"{'attn_impl':26s} {'eager s':>9s} {'export s':>9s} {'/ eager':>8s} {'compile s':>10s} {'/ eager':>8s} "
          f"{'max|diff|':>9s}")
    results = {"backend": args.backend, "batch": args.batch, "length": args.length, "rounds": args.rounds,
               "impls": {impl: bench_impl(impl, path, ids, mask, args) for impl in args.impls}}
    return finish(args, results)


if __name__ == "__main__":
    main()
    sys.exit(0)
