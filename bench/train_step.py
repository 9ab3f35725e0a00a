"""Time one training step (forward + backward + AdamW) of MiniLM on MR batches for several attention mappings.

    python bench/train_step.py                       # softmax sparsemax entmax15 entmax_learned, 5 rounds
    python bench/train_step.py --impls softmax entmax15 --rounds 10 --batch-size 32

The mappings take turns (one step each per round) on the same batches, so that load from other processes on a
shared machine hits them alike; the median over rounds is reported, and ratios to the first mapping are the
numbers to compare. The first round is a warm-up and is not counted.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.startup import bench_parser, machine, start  # noqa: E402


def main(argv=None) -> int:
    parser = bench_parser(__doc__, threads=None)
    parser.add_argument("--model", help="checkpoint folder (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--impls", nargs="+", default=["softmax", "sparsemax", "entmax15", "entmax_learned"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    args = start(parser, argv)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    import hf_sparse_attn  # noqa: F401  (attn_impl=)
    from hf_sparse_attn.data import load_text_classification, tokenize_for_classification
    from hf_sparse_attn.training import build_optimizer
    from hf_sparse_attn.training.config import default_model_path

    model_path = args.model or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = load_text_classification("mr")["train"].shuffle(seed=0).select(range(args.batch_size * (args.rounds + 1)))
    tokenized, _ = tokenize_for_classification(train, tokenizer, args.max_length)
    collate = DataCollatorWithPadding(tokenizer)
    batches = [collate([tokenized[i] for i in range(r * args.batch_size, (r + 1) * args.batch_size)])
               for r in range(args.rounds + 1)]

    setups = {}
    for impl in args.impls:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, attn_impl=impl).train()
        setups[impl] = (model, build_optimizer(model, lr=5e-5, alpha_lr=1e-2, weight_decay=0.01))
    seconds = {impl: [] for impl in args.impls}
    for round_index, batch in enumerate(batches):
        for impl, (model, optimizer) in setups.items():
            started = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if round_index > 0:
                seconds[impl].append(time.perf_counter() - started)

    reference = statistics.median(seconds[args.impls[0]])
    report = {
        "model": model_path, "batch_size": args.batch_size, "max_length": args.max_length,
        "mean_padded_length": sum(b["input_ids"].shape[1] for b in batches[1:]) / args.rounds,
        "rounds": args.rounds,
        "seconds_per_step": {impl: statistics.median(s) for impl, s in seconds.items()},
        f"ratio_to_{args.impls[0]}": {impl: statistics.median(s) / reference for impl, s in seconds.items()},
    }
    report["machine"] = machine(args)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
