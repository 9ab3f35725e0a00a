"""``python -m eval_suite CHECKPOINT ...``: the command line of the evaluation suite (also under accelerate launch)."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import EvalError
from .settings import EvalRequest, request_from_args
from .settings import build_parser as build_settings_parser


def build_parser() -> argparse.ArgumentParser:
    """Every setting of :class:`~eval_suite.settings.EvalRequest` (its nested measure parameters and statistics
    included) as one grouped option, and the command line's own: --threads, --card and the --push options."""
    p = build_settings_parser(
        prog="python -m eval_suite", usage="%(prog)s CHECKPOINT [--dataset NAME] [--measures SPEC] [options]",
        description="Measure, for every layer and head of an encoder classifier, how attention relates to the "
                    "influence of inputs and representations (Meister et al. 2021, generalised). Writes "
                    "OUTDIR/results.json, per_layer_head.csv, report.html and plots/*.png.")
    p.groups["model"].add_argument("--threads", type=int, default=None,
                                   metavar="N", help="torch CPU threads per process (default: one per free core)")
    p.groups["output"].add_argument("--card", action="store_true",
                                    help="render the model card into the checkpoint folder (hub_cards)")
    try:
        from hub_cards.cli import add_push_arguments
    except ImportError:  # eval_suite installed without hub_cards: no --card / --push
        return p
    add_push_arguments(p, flag="--push")
    return p


def free_cores() -> int:
    """The cores this process may run on (its affinity) less the one-minute load average, at least one: on a shared
    machine more threads than free cores wait on each other (OpenMP threads spin), which costs more than it gains."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    return max(1, min(cores, round(cores - load)))


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
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}; leave it out for one per free core", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads or free_cores())
    import transformers

    # Our own progress bar and one-line errors are the output; transformers' load reports would bury them.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from hf_sparse_attn import SparseAttnError
    from hf_sparse_attn.constants import RESULTS_FILE
    from hf_sparse_attn.data import DataError

    from .runner import run_evaluation
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
