"""Shared pieces of the fault tables: run a command line in-process, and prove that nothing was written or lost."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_command(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``main(argv)``: a returned status or a SystemExit's code (argparse's exit)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, message: str) -> None:
    """Exit status 2, and the last thing on stderr is one line ``error: ...`` containing ``message`` (progress bars
    of the data loading may come before it, nothing else does)."""
    assert code == 2, (code, err[-3000:])
    segments = [s.strip() for s in err.replace("\r", "\n").split("\n") if s.strip()]
    errors = [s for s in segments if "error: " in s]
    assert len(errors) == 1 and segments[-1] == errors[0] and "Traceback" not in err, err[-3000:]
    line = errors[0][errors[0].index("error: "):]
    assert message in line, line


def snapshot(folder) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (empty when it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def subprocess_env(**extra) -> dict:
    """The test's environment plus the worktree on PYTHONPATH, one thread, offline."""
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                **extra)


def start_paused(kind: str, count: int, workdir: Path, argv: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    """Start ``python -m tests.helpers.pause KIND COUNT ...`` and wait until it has reached its pause point.

    Returns (process, READY file, GO file); write GO to let it continue (``"crash"`` to kill it there)."""
    ready, go = workdir / f"{kind}.ready", workdir / f"{kind}.go"
    process = subprocess.Popen([sys.executable, "-m", "tests.helpers.pause", kind, str(count), str(ready), str(go),
                                "--", *map(str, argv)], cwd=REPO_ROOT, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(f"paused {kind} run exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"paused {kind} run never reached its pause point")
        time.sleep(0.1)
    return process, ready, go
