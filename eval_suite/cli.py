"""``python -m eval_suite CHECKPOINT ...``: the command line of the evaluation suite (also under accelerate launch)."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import EvalError
from .faithfulness import DEFAULT_FRACTIONS
from .aggregate import AggregateConfig
from .measure import AOPC_BOUNDS, MeasureConfig
from .runner import EvalRequest, run_evaluation


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions takes comma-separated numbers in (0, 1], got {text!r}") from None


def _tolerance(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ig-tolerance takes a number or 'none', got {text!r}") from None


def _duration(text: str) -> float:
    """Seconds from "90s", "10m", "1.5h" or a bare number of minutes."""
    value = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            number, scale = value[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = value, 60.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget takes a duration such as 90s, 10m or 1.5h, got {text!r}") from None
    return seconds


def _tier_help() -> str:
    from .measures import DEFAULT_SPEC, REGISTRY, tiers

    listed = "; ".join(f"{name}: {', '.join(members)}" for name, members in tiers().items())
    return (f"what to measure: tiers and/or measurement names, comma-separated, '-NAME' removes one (default "
            f"{DEFAULT_SPEC}). Tiers: {listed}. Measurements: {', '.join(REGISTRY)}. docs/eval_suite.md gives "
            "each tier's question and cost")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval_suite",
        description="Measure, for every layer and head of an encoder classifier, how attention relates to the "
                    "influence of inputs and representations (Meister et al. 2021, generalised). "
                    "Writes OUTDIR/results.json, per_layer_head.csv and plots/*.png.",
    )
    p.add_argument("checkpoint", help="checkpoint folder (ours or a stock HF sequence classifier) or a Hub model id")
    p.add_argument("--dataset", default="mr", help="'mr', 'trec', a local .csv/.jsonl/.parquet file or folder, or a Hub dataset name")
    p.add_argument("--split", default="test", help="split to evaluate (train / validation / test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of this many examples")
    p.add_argument("--output-dir", default="out/eval", help="folder for results.json, the CSV table and plots")
    p.add_argument("--attn-impl", default=None,
                   help="override the attention mapping (e.g. sparsemax, entmax15, entmax:alpha=1.3); default: the "
                        "checkpoint's own (stock checkpoints: softmax)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column", default=None,
                   help="second text of each example (sentence pairs: NLI, paraphrase, QA relevance), encoded with "
                        "the first as one pair; both texts' tokens are content tokens")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-map", default=None, metavar="RAW=NAME,...",
                   help="label values to use, numbered 0..K-1 in this order (as in training)")
    p.add_argument("--batch-size", type=int, default=32, help="examples measured together (default 32; larger needs more memory and is not faster on CPU)")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens (default: the model's limit)")
    p.add_argument("--attention-query", choices=("cls", "mean"), default="cls",
                   help="attention of the classification token (default) or the mean over all queries")
    p.add_argument("--ig-steps", type=int, default=MeasureConfig.ig_steps,
                   help="integrated-gradients steps (Gauss-Legendre nodes) to start with")
    p.add_argument("--ig-tolerance", type=_tolerance, default=MeasureConfig.ig_tolerance,
                   help="double the steps of an example while its completeness gap exceeds this (default 0.05; "
                        "'none': fixed --ig-steps)")
    p.add_argument("--ig-max-steps", type=int, default=MeasureConfig.ig_max_steps,
                   help="most integrated-gradients steps per example")
    p.add_argument("--ig-baseline", choices=("pad", "zero"), default="pad",
                   help="integrated-gradients baseline for content tokens: the [PAD] embedding or zeros")
    p.add_argument("--fractions", type=_fractions, default=DEFAULT_FRACTIONS,
                   help="removal fractions for comprehensiveness / sufficiency (default 0.01,0.05,0.1,0.2,0.5)")
    p.add_argument("--faithfulness-attention", choices=("layers", "none"), default="layers",
                   help="rank tokens by each layer's head-mean attention too (default) or not")
    p.add_argument("--aopc-bounds", choices=AOPC_BOUNDS, default=MeasureConfig.aopc_bounds,
                   help="'greedy': greedy best/worst removal orders per example, for normalised AOPC (costs about "
                        "n_content x k_max forward passes per example)")
    p.add_argument("--input-to-repr", choices=("norm", "jacobian"), default=MeasureConfig.input_to_repr,
                   help="eq. 5 as the paper ('norm': gradient of ||h_p||) or the Frobenius norm of the Jacobian block "
                        "dh_p/dx_i ('jacobian': d_model times the cost)")
    p.add_argument("--measures", default=None, help=_tier_help())
    p.add_argument("--budget", type=_duration, default=None,
                   help="refuse (before writing anything) when the forecast measuring time exceeds this, e.g. 10m, "
                        "90s, 1.5h; the error names a cheaper command")
    p.add_argument("--input-to-repr-sample", type=int, default=None, metavar="K",
                   help="estimate eq. 5's per-layer summaries from K seeded content positions per example (with "
                        "their standard error) instead of all of them; for long documents")
    p.add_argument("--max-batch-tokens", type=int, default=4096,
                   help="at most this many padded tokens per batch (long documents: fewer examples per batch)")
    p.add_argument("--min-examples", type=int, default=AggregateConfig.min_examples,
                   help="a value is defined when it rests on at least min(this, N) examples (default 10)")
    p.add_argument("--bootstrap-resamples", type=int, default=AggregateConfig.bootstrap_resamples,
                   help="resamples of the 95%% bootstrap intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the example subset, the random ranking, tie-breaking and the bootstrap")
    p.add_argument("--resume", action="store_true", help="skip batches whose rows are already in OUTDIR/rows")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another checkpoint or setting in --output-dir (the new results are "
                        "complete before the old ones go)")
    p.add_argument("--plot-examples", type=int, default=3, help="token-level heatmaps for this many examples")
    p.add_argument("--card", action="store_true", help="render the model card into the checkpoint folder (hub_cards)")
    p.add_argument("--device", default="auto",
                   help="auto (a GPU when one is visible), cpu, cuda or cuda:N (one process)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is available (= --device cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    try:
        from hub_cards.cli import add_push_arguments
    except ImportError:  # eval_suite installed without hub_cards: no --card / --push
        return p
    add_push_arguments(p, flag="--push")
    return p


def request_from_args(args: argparse.Namespace) -> EvalRequest:
    from .measures import DEFAULT_SPEC

    measure = MeasureConfig(attention_query=args.attention_query, ig_steps=args.ig_steps, ig_baseline=args.ig_baseline,
                            ig_tolerance=args.ig_tolerance, ig_max_steps=args.ig_max_steps,
                            fractions=tuple(args.fractions), faithfulness_attention=args.faithfulness_attention,
                            aopc_bounds=args.aopc_bounds, input_to_repr=args.input_to_repr, seed=args.seed,
                            measures=args.measures or DEFAULT_SPEC, input_to_repr_sample=args.input_to_repr_sample)
    aggregation = AggregateConfig(min_examples=args.min_examples, bootstrap_resamples=args.bootstrap_resamples,
                                  bootstrap_seed=args.seed)
    return EvalRequest(checkpoint=args.checkpoint, output_dir=args.output_dir, dataset=args.dataset, split=args.split,
                       limit=args.limit, attn_impl=args.attn_impl, text_column=args.text_column,
                       label_column=args.label_column, batch_size=args.batch_size, max_length=args.max_length,
                       resume=args.resume, overwrite=args.overwrite, label_map=args.label_map,
                       plot_examples=args.plot_examples, cpu=args.cpu, measure=measure, aggregation=aggregation,
                       device=args.device, budget_seconds=args.budget, max_batch_tokens=args.max_batch_tokens,
                       text_pair_column=args.text_pair_column)


def _check_publishing(args, request: EvalRequest) -> None:
    """--card / --push: the checkpoint must be a local folder, the card's gradient importance must be measured, and
    a push needs a valid repo id and a token."""
    import os

    from hub_cards.cli import check_push_args
    from hub_cards.results import GRADIENT_METHOD

    if (args.card or args.push_repo_id) and not os.path.isdir(args.checkpoint):
        raise EvalError(f"--card/--push write into the checkpoint folder, but {args.checkpoint!r} is not a local "
                        "folder; download it first (hf download ... --local-dir DIR)")
    if GRADIENT_METHOD not in request.measure.measures:
        raise EvalError(f"--card/--push summarise attention against {GRADIENT_METHOD}, which --measures leaves out; "
                        f"add it (--measures {','.join(request.measure.measures)},{GRADIENT_METHOD})")
    check_push_args(args)


def _cheaper_command(argv: list[str], cheaper) -> str:
    """The command line ``argv`` with each cheaper option set in turn, joined by "or"."""
    import shlex

    def with_option(option: str, value: str) -> list[str]:
        out, skip = [], False
        for item in argv:
            if skip:
                skip = False
                continue
            if item == option:
                skip = True
                continue
            if item.startswith(option + "="):
                continue
            out.append(item)
        return out + [option, value]

    commands = [f"python -m eval_suite {shlex.join(with_option(option, value))} ({note})"
                for option, value, note in cheaper.options()]
    return " or ".join(commands) if commands else "nothing smaller fits: raise --budget"


def _publish(args, results_path) -> None:
    """Render the card into the checkpoint folder, then push it when --push names a repository."""
    from hub_cards.cli import push_from_args
    from hub_cards.render import render_card

    card = render_card(args.checkpoint, results_path, repo_id=args.push_repo_id)
    print(f"eval_suite: wrote the model card {card}", flush=True)
    url = push_from_args(args.checkpoint, args)
    if url:
        print(f"eval_suite: pushed {args.checkpoint} to {url}", flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.push_repo_id = getattr(args, "push_repo_id", None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import transformers

    # Our own progress bar and one-line errors are the output; transformers' load reports would bury them.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from hf_sparse_attn import SparseAttnError
    from hf_sparse_attn.constants import RESULTS_FILE
    from hf_sparse_attn.data import DataError

    from .schedule import BudgetExceeded

    known: tuple = (EvalError, DataError, SparseAttnError)
    publishing = args.card or args.push_repo_id
    try:
        request = request_from_args(args)
        if publishing:
            from hub_cards.errors import HubCardsError

            known += (HubCardsError,)
            _check_publishing(args, request)
        results = run_evaluation(request)
        if results is not None and publishing:
            from pathlib import Path

            _publish(args, Path(args.output_dir) / RESULTS_FILE)
    except BudgetExceeded as error:
        print(f"error: {error.reason}; run instead: {_cheaper_command(argv, error.cheaper)}", file=sys.stderr)
        return 2
    except known as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if results is not None:
        for line in results["summary"]["text"]:
            print(line)
        print(f"accuracy {results['accuracy']:.4f}, macro-F1 {results['macro_f1']:.4f} on {results['n_examples']} "
              f"examples; wrote {args.output_dir}/results.json")
    return 0
