"""``python -m hf_sparse_attn.training``: the command line over :func:`hf_sparse_attn.training.train`.

    python -m hf_sparse_attn.training --dataset mr --attn-impl entmax15 --max-steps 150 --output-dir out/mr-entmax15
    accelerate launch -m hf_sparse_attn.training --model PATH --dataset mr --attn-impl entmax15 --output-dir D
    python -m hf_sparse_attn.training --from-scratch paper-roberta --dataset trec --attn-impl sparsemax --output-dir D

Every option is a :class:`TrainConfig` field (``--max-steps``; ``--max_steps`` is accepted too), listed by
``--help`` in the sections of :data:`OPTION_GROUPS`; ``--push-to-hub ORG/NAME`` (with the ``--hub-*`` options of
hub_cards) uploads the final folder. Errors print one line and exit with status 2. Nothing heavy is imported
before the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
import types
import typing

from .config import TrainConfig

# The sections of --help, in order. Every TrainConfig field belongs to one; a field missing here is listed under
# "other options" (and tests/hf_sparse_attn/training/test_cli_help.py names it).
OPTION_GROUPS = {
    "model": ("model", "tokenizer", "from_scratch", "from_scratch_vocab_size", "attn_impl", "attn_layers"),
    "data": ("dataset", "text_column", "text_pair_column", "label_column", "label_map", "max_length",
             "max_train_examples", "max_eval_examples"),
    "optimisation": ("epochs", "max_steps", "batch_size", "lr", "alpha_lr", "weight_decay", "warmup_ratio",
                     "max_grad_norm", "seed"),
    "evaluation, checkpoints and output": ("output_dir", "eval_every", "eval_batch_size", "patience", "save_every",
                                           "save_total_limit", "keep_checkpoints", "resume", "overwrite", "cpu"),
}
USAGE = ("python -m hf_sparse_attn.training --output-dir DIR [--model PATH_OR_HUB_ID] [--dataset NAME_OR_FILE] "
         "[--attn-impl MAPPING] [options]")


def _known_errors() -> tuple:
    from ..data import DataError
    from ..files import DiskFullError
    from ..limits import LimitError
    from ..output_dir import OutputDirError
    from ..sparse_attn_modeling import SparseAttnError
    from .config import TrainError
    from .from_scratch import FromScratchConfigError

    return TrainError, DataError, FromScratchConfigError, SparseAttnError, OutputDirError, LimitError, DiskFullError


class HelpFormatter(argparse.HelpFormatter):
    """Each option under one spelling, with hyphens as the docs write it (the underscore spelling of
    transformers-style commands, ``--output_dir``, is accepted too but not listed), and each default said once."""

    def _format_action_invocation(self, action):
        if action.option_strings:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if "_" not in s] or action.option_strings[:1]
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _add_field(group, field: dataclasses.Field, kind) -> None:
    """One TrainConfig field as an option: ``--max-steps`` (and ``--max_steps``), typed by its annotation."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # "int | None": the option's type is int
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    flags = [f"--{field.name.replace('_', '-')}"] + ([f"--{field.name}"] if "_" in field.name else [])
    text = field.metadata.get("help")
    if kind is bool:
        group.add_argument(*flags, dest=field.name, action="store_true", help=text)
        return
    default = None if field.default is dataclasses.MISSING else field.default
    metavar = {int: "N", float: "X"}.get(kind, field.name.upper())
    group.add_argument(*flags, dest=field.name, type=kind, default=default, metavar=metavar, help=text)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: every TrainConfig field as an option, grouped (argparse, not transformers'
    HfArgumentParser: that lists both spellings of every option and each default twice, and importing
    transformers alone takes longer than the help should)."""
    parser = argparse.ArgumentParser(prog="python -m hf_sparse_attn.training", usage=USAGE,
                                     formatter_class=HelpFormatter,
                                     description="Fine-tune an encoder with sparse attention on text classification "
                                                 "(works under accelerate launch). Options take hyphens or "
                                                 "underscores (--output-dir or --output_dir).")
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    grouped = {name for names in OPTION_GROUPS.values() for name in names}
    groups = {**OPTION_GROUPS, "other options": tuple(name for name in fields if name not in grouped)}
    for title, names in groups.items():
        if names:
            group = parser.add_argument_group(title)
            for name in names:
                if name in fields:
                    _add_field(group, fields[name], hints[name])
    try:
        from hub_cards.cli import add_push_arguments
    except ImportError:  # the core installed without hub_cards: no --push-to-hub
        return parser
    add_push_arguments(parser, flag="--push-to-hub")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output_dir is None:
        parser.error("the following arguments are required: --output-dir")
    _configure_logging()
    known = _known_errors()
    push = args if getattr(args, "push_repo_id", None) else None
    try:
        config = TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})
        if push is not None:
            _check_push(push)
        from .loop import train

        result = train(config)
    except known as error:
        parser.exit(2, f"error: {error}\n")
    if push is not None and result.is_main_process:
        from hub_cards.cli import push_from_args

        print(f"pushed {result.final_dir} to {push_from_args(result.final_dir, push)}")
    if result.is_main_process:
        _print_summary(result)
    return 0


def _check_push(push) -> None:
    """Refuse a bad repo id or a missing token now, not after training."""
    from hub_cards.cli import check_push_args
    from hub_cards.errors import HubCardsError

    from .config import TrainError

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
    from .metrics import per_layer_sparsity

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
