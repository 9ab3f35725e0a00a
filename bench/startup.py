"""What every bench script does before and after it measures: the shared options (``--threads``, and where the
script offers them ``--clock`` and ``--json``), torch's thread count, offline and quiet transformers, and the
machine's setting and load written beside the numbers (ratios are only comparable under a known load).

Each script puts this checkout first on the import path itself (one line: it has to, before it can import this).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from hf_sparse_attn.files import atomic_write_json


def bench_parser(doc: str, *, threads: int | None, clock: bool = False, json: bool = False) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with the shared options; ``threads``: the
    default torch thread count (None: torch's choice)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default = str(threads) if threads else "torch's choice"
    parser.add_argument("--threads", type=int, default=threads, help=f"torch threads (default: {default})")
    if clock:
        parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                            help="wall time (default) or this process's CPU time: on a machine shared with other "
                                 "jobs, '--clock cpu --threads 1' gives steadier ratios (CPU time adds up all threads)")
    if json:
        parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def start(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv`` (exit 2 with one line for a bad value), set torch's threads, keep transformers offline and
    quiet. The namespace gains ``timer`` (the clock to time with) and ``load_average_start``."""
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if getattr(args, "json", None) and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: the folder does not exist; create it first")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    args.timer = time.process_time if getattr(args, "clock", "wall") == "cpu" else time.perf_counter
    args.load_average_start = os.getloadavg()
    return args


def machine(args: argparse.Namespace) -> dict:
    """The setting the numbers were measured under: torch, threads, clock, and the load average (1, 5 and 15
    minutes) at the start and now."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "clock": getattr(args, "clock", "wall"),
            "load_average_start": list(args.load_average_start), "load_average_end": list(os.getloadavg())}


def finish(args: argparse.Namespace, results: dict, path=None) -> dict:
    """Add :func:`machine` to ``results`` and write them (atomically) to ``path`` or ``--json``, if either is given;
    returns them."""
    results["machine"] = machine(args)
    target = path or getattr(args, "json", None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target, results)
        print(f"\nwrote {target}")
    return results
