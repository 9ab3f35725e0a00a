"""Pause injection for the concurrency tests: a training or an evaluation that stops at a known point, says so,
and waits for the test before it goes on (or dies there as if killed).

    python -m tests.helpers.pause train STEP READY GO -- TRAINING ARGS...
    python -m tests.helpers.pause eval SHARDS READY GO -- EVALUATION ARGS...

The run is the one ``python -m hf_sparse_attn.training`` / ``python -m eval_suite`` would do. After optimizer step
STEP (training) or after storing its SHARDS-th row shard (evaluation) it creates the file READY and waits until the
file GO exists: if GO holds ``crash`` the process exits at once with CRASH_EXIT_STATUS, with nothing cleaned up;
otherwise the run continues and the process exits with the command's own status.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .crash import CRASH_EXIT_STATUS

WAIT_LIMIT_S = 600


def _hold(ready: Path, go: Path) -> None:
    ready.write_text(str(os.getpid()))
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.05)
    if go.read_text().strip() == "crash":
        sys.stdout.flush()
        os._exit(CRASH_EXIT_STATUS)  # no cleanup, no atexit: as if killed


def _train(step: int, ready: Path, go: Path, argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from hf_sparse_attn.training import TrainConfig, TrainingCallback, train

    class PauseAfterStep(TrainingCallback):
        def on_step_end(self, done: int) -> None:
            if done == step:
                _hold(ready, go)

    (config,) = HfArgumentParser(TrainConfig).parse_args_into_dataclasses(args=argv)
    train(config, callbacks=[PauseAfterStep()])
    return 0


def _evaluate(shards: int, ready: Path, go: Path, argv: list[str]) -> int:
    import eval_suite.runner as runner
    from eval_suite.cli import main

    save_shard, saved = runner.save_shard, []

    def pausing_save_shard(*args, **kwargs):
        save_shard(*args, **kwargs)
        saved.append(args[1])
        if len(saved) == shards:
            _hold(ready, go)

    runner.save_shard = pausing_save_shard
    return main(argv)


def main(argv: list[str]) -> int:
    kind, count, ready, go, separator, *command = argv
    assert separator == "--" and kind in ("train", "eval"), __doc__
    run = _train if kind == "train" else _evaluate
    return run(int(count), Path(ready), Path(go), command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
