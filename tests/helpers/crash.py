"""Crash injection for the resume tests: a training callback that kills the process like ``kill -9`` would.

The test runs ``python -m tests.helpers.crash STEP -- TRAINING ARGS...`` in a subprocess: the same training as
``python -m hf_sparse_attn.training TRAINING ARGS...``, but the process dies right after optimizer step STEP (its
evaluation and checkpoint included), with nothing flushed or cleaned up.
"""

from __future__ import annotations

import os
import sys

from hf_sparse_attn.training import TrainingCallback

CRASH_EXIT_STATUS = 17


class CrashAfterStep(TrainingCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step: int) -> None:
        if step == self.step:
            sys.stdout.flush()
            os._exit(CRASH_EXIT_STATUS)  # no cleanup, no atexit, no buffered writes: as if killed


def main(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from hf_sparse_attn.training import TrainConfig, train

    step, separator, *training_args = argv
    assert separator == "--", "usage: python -m tests.helpers.crash STEP -- TRAINING ARGS..."
    (config,) = HfArgumentParser(TrainConfig).parse_args_into_dataclasses(args=training_args)
    train(config, callbacks=[CrashAfterStep(int(step))])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
