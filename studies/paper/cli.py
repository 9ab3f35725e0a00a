"""``python -m studies.paper``: reproduce Meister et al. (2021) on real data, next to the paper's tables.

    python -m studies.paper --output-dir studies/paper           # the full study (resumable)
    python -m studies.paper --output-dir /tmp/p --quick           # tiny sizes: the pipeline end to end
    python -m studies.paper --output-dir studies/paper --report-only

Units run in priority order (``--parts``): the paper's architecture (a) on mr and trec, the sparsity sweep,
adversarial attention, the encoder with every layer sparse (b), then MiniLM (every layer / last layer); each part
preceded by the learning-rate search it needs. The encoder with the last layer sparse (c), the trec extensions and
learned alpha run only when named. Every model trains until validation accuracy stops improving
(``--patience`` evaluations, ``--eval-every`` steps apart, under a step cap). A unit that fails is logged and the
study goes on with the next one (exit status 1 at the end). Bad arguments exit with status 2 before any work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .plan import DATASETS, DEFAULT_MAPPINGS, DEFAULT_PARTS, MAPPINGS, PART_ORDER
from .run import ReproduceError, run_study

QUICK = dict(seeds=2, extension_seeds=1, minilm_seeds=1, sweep_seeds=1,
             mappings=["softmax", "sparsemax", "learned_alpha"], alphas=[1.0, 1.25, 2.0], lambdas=[0.5],
             max_train_examples=48, max_eval_examples=16, scratch_steps=4, minilm_steps=2,
             scratch_limits={"mr": 4, "trec": 4}, minilm_limits={"mr": 4, "trec": 4}, ig_steps=2, max_length=24,
             scratch_batch_size=8, minilm_batch_size=4, scratch_lrs=[1e-3, 3e-3], minilm_lrs=[1e-4], patience=1,
             eval_every=2, adversarial_lambdas=[1.0])
POSITIVE = ("seeds", "extension_seeds", "minilm_seeds", "sweep_seeds", "max_length", "scratch_steps", "minilm_steps",
            "ig_steps", "max_eval_examples", "scratch_batch_size", "minilm_batch_size", "patience", "eval_every")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies.paper", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="studies/paper")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): every part, seconds each")
    p.add_argument("--report-only", action="store_true", help="only regenerate REPORT.md from finished units")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma list, run in this order (default: "
                   f"{','.join(DEFAULT_PARTS)}; also {', '.join(p for p in PART_ORDER if p not in DEFAULT_PARTS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds of every model of (a), the paper's architecture "
                   "(default 5)")
    p.add_argument("--extension-seeds", type=int, default=3, help="seeds of every model of (b) and (c) (default 3)")
    p.add_argument("--minilm-seeds", type=int, default=2, help="seeds of every MiniLM model (default 2)")
    p.add_argument("--sweep-seeds", type=int, default=5, help="seeds per knob value of both sweeps (default 5)")
    p.add_argument("--mappings", default=",".join(DEFAULT_MAPPINGS), help=f"comma list of {', '.join(MAPPINGS)} "
                   f"(default {','.join(DEFAULT_MAPPINGS)})")
    p.add_argument("--alphas", default="1.0,1.25,1.5,1.75,2.0", help="alpha-entmax sweep (a, mr); 1.0, 1.5 and 2.0 "
                   "reuse the softmax, entmax15 and sparsemax models")
    p.add_argument("--lambdas", default="-1.0,0.0,0.5,0.75", help="sparsegen-lin sweep (a, mr); larger is sparser; "
                   "0 reuses the sparsemax models")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-train-examples", type=int, help="use only the first N training examples (default: all)")
    p.add_argument("--max-eval-examples", type=int, help="validation/test examples scored during training (default: "
                   "all; early stopping reads validation accuracy)")
    p.add_argument("--scratch-steps", type=int, default=2000, help="step cap of each from-scratch model and adversary")
    p.add_argument("--scratch-lrs", default="1e-3,3e-3,1e-2", help="lr grid of the from-scratch models (chosen on "
                   "validation by the lr search)")
    p.add_argument("--scratch-batch-size", type=int, default=32)
    p.add_argument("--minilm-steps", type=int, default=2000, help="step cap of each MiniLM model")
    p.add_argument("--minilm-lrs", default="1e-4", help="lr grid of the MiniLM models (one value: no search, its "
                   "model is the softmax seed-0 model)")
    p.add_argument("--patience", type=int, default=5, help="stop after this many evaluations without a better "
                   "validation accuracy; the best weights are kept")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation evaluations")
    p.add_argument("--minilm-batch-size", type=int, default=16)
    p.add_argument("--scratch-limits", default="mr=400,trec=all", help="test examples evaluated per from-scratch "
                   "model and dataset (a seeded subset, the same for every model; all = the whole test split)")
    p.add_argument("--minilm-limits", default="mr=150,trec=150", help="test examples evaluated per MiniLM model and "
                   "dataset")
    p.add_argument("--ig-steps", type=int, default=4, help="integrated-gradients steps (IG is not in the paper's tables)")
    p.add_argument("--adversarial-lambdas", default="0.1,0.3,1.0", help="weights of the JSD term tried (chosen on "
                   "validation: the largest JSD whose accuracy stays within .02 of the lambda = 0 control)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    return p


def _numbers(text: str) -> list[float]:
    return [float(a) for a in text.split(",") if a.strip()]


def _limits(text: str) -> dict:
    """'mr=400,trec=all' -> {'mr': 400, 'trec': None}; ValueError on anything else."""
    limits = {}
    for item in (a.strip() for a in text.split(",") if a.strip()):
        dataset, value = item.split("=")
        if dataset.strip() not in DATASETS:
            raise ValueError(dataset)
        limits[dataset.strip()] = None if value.strip() == "all" else int(value)
        if limits[dataset.strip()] is not None and limits[dataset.strip()] < 1:
            raise ValueError(value)
    return limits


def parse_args(argv=None):
    parser = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if any(opt in argv for opt in a.option_strings)}
    try:
        args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        args.mappings = [m.strip() for m in args.mappings.split(",") if m.strip()]
        args.alphas, args.lambdas = _numbers(args.alphas), _numbers(args.lambdas)
        args.scratch_lrs, args.minilm_lrs = _numbers(args.scratch_lrs), _numbers(args.minilm_lrs)
        args.adversarial_lambdas = _numbers(args.adversarial_lambdas)
    except ValueError:
        parser.exit(2, "error: --alphas, --lambdas, --*-lrs and --adversarial-lambdas take comma-separated numbers, "
                       "e.g. --alphas 1.0,1.5,2.0\n")
    try:
        for name in ("scratch_limits", "minilm_limits"):
            if isinstance(getattr(args, name), str):
                setattr(args, name, _limits(getattr(args, name)))
    except ValueError:
        parser.exit(2, f"error: --scratch-limits and --minilm-limits take DATASET=N or DATASET=all pairs with N >= 1 "
                       f"and DATASET one of {', '.join(DATASETS)}, e.g. mr=400,trec=all\n")
    if args.quick:
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    unknown = [p for p in args.parts if p not in PART_ORDER]
    if unknown:
        parser.exit(2, f"error: unknown --parts {unknown}; choose from {', '.join(PART_ORDER)}\n")
    bad = [m for m in args.mappings if m not in MAPPINGS]
    if bad:
        parser.exit(2, f"error: unknown --mappings {bad}; choose from {', '.join(MAPPINGS)}\n")
    if any(not 1.0 <= a <= 2.0 for a in args.alphas):
        parser.exit(2, "error: --alphas must lie in [1, 2] (1 = softmax, 2 = sparsemax)\n")
    if any(lam >= 1 for lam in args.lambdas):
        parser.exit(2, "error: --lambdas must be < 1 (sparsegen-lin divides by 1 - lambda)\n")
    if not args.scratch_lrs or not args.minilm_lrs or any(lr <= 0 for lr in args.scratch_lrs + args.minilm_lrs):
        parser.exit(2, "error: --scratch-lrs and --minilm-lrs need at least one learning rate, all > 0\n")
    if any(lam < 0 for lam in args.adversarial_lambdas):
        parser.exit(2, "error: --adversarial-lambdas must be >= 0\n")
    for name in POSITIVE:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.exit(2, f"error: --{name.replace('_', '-')} must be >= 1\n")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.exit(2, f"error: --output-dir {args.output_dir!r} is a file; pass a folder\n")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    started = time.time()
    try:
        status = run_study(args)
    except ReproduceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"[reproduce] ran {len(status['ran'])} unit(s), failed {len(status['failed'])}, cached "
          f"{len(status['skipped'])}, waiting for other units {len(status['waiting'])} in {time.time() - started:.0f} s; "
          f"report: {Path(args.output_dir) / 'REPORT.md'}")
    return 1 if status["failed"] else 0
