"""``python -m hf_sparse_attn.training``: the command line over :func:`hf_sparse_attn.training.train`.

    python -m hf_sparse_attn.training --dataset mr --attn-impl entmax15 --max-steps 150 --output-dir out/mr-entmax15
    accelerate launch -m hf_sparse_attn.training --model PATH --dataset mr --attn-impl entmax15 --output-dir D
    python -m hf_sparse_attn.training --from-scratch paper-roberta --dataset trec --attn-impl sparsemax --output-dir D

Every option is a :class:`TrainConfig` field (``--max-steps`` or ``--max_steps``); ``--push-to-hub ORG/NAME`` (with
the ``--hub-*`` options of hub_cards) uploads the final folder. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import logging
import os
import sys

from ..data import DataError
from ..files import DiskFullError
from ..limits import LimitError
from ..output_dir import OutputDirError
from ..sparse_attn_modeling import SparseAttnError
from .config import TrainConfig, TrainError
from .from_scratch import FromScratchConfigError
from .metrics import per_layer_sparsity

KNOWN_ERRORS = (TrainError, DataError, FromScratchConfigError, SparseAttnError, OutputDirError, LimitError,
                DiskFullError)


def build_parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainConfig, prog="python -m hf_sparse_attn.training",
                              description="Fine-tune an encoder with sparse attention on text classification "
                                          "(works under accelerate launch).")
    try:
        from hub_cards.cli import add_push_arguments
    except ImportError:  # the core installed without hub_cards: no --push-to-hub
        return parser
    add_push_arguments(parser, flag="--push-to-hub")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    _configure_logging()
    try:
        config, *extra = parser.parse_args_into_dataclasses(args=argv)
        push = extra[0] if extra else None
        if push is not None and push.push_repo_id:
            _check_push(push)
        from .loop import train

        result = train(config)
    except KNOWN_ERRORS as error:
        parser.exit(2, f"error: {error}\n")
    if push is not None and push.push_repo_id and result.is_main_process:
        from hub_cards.cli import push_from_args

        print(f"pushed {result.final_dir} to {push_from_args(result.final_dir, push)}")
    if result.is_main_process:
        _print_summary(result)
    return 0


def _check_push(push) -> None:
    """Refuse a bad repo id or a missing token now, not after training."""
    from hub_cards.cli import check_push_args
    from hub_cards.errors import HubCardsError

    try:
        check_push_args(push)
    except HubCardsError as error:
        raise TrainError(f"--push-to-hub: {error}") from None


def _configure_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", level=logging.WARNING)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    level = logging.INFO if rank == 0 else logging.ERROR
    for name in ("hf_sparse_attn.training", "hf_sparse_attn.data"):
        logging.getLogger(name).setLevel(level)


def _print_summary(result) -> None:
    for split in ("validation", "test"):
        m = result.metrics[split]
        print(f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  loss {m['loss']:.4f}  "
              f"(step {m['step']}, epoch {m['epoch']:.2f})")
    layers = per_layer_sparsity(result.per_layer_head)
    print("attention sparsity per layer (test, mean over heads, fraction of exact zeros): "
          + "  ".join(f"L{i} {s:.3f}" for i, s in enumerate(layers)))
    alphas = sorted({round(r["alpha"], 3) for r in result.per_layer_head if r["alpha"] is not None})
    if len(alphas) > 1:
        print(f"learned alpha: min {alphas[0]:.3f}  max {alphas[-1]:.3f}")
    print(f"time per training step: {result.metrics['train']['seconds_per_step']:.3f} s "
          f"({result.metrics['train']['num_processes']} process(es))")
    print(f"model folder: {result.final_dir}")


if __name__ == "__main__":
    sys.exit(main())
