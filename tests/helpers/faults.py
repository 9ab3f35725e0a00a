"""Shared pieces of the fault tables: run a command line in-process, and prove that nothing was written or lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
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


@contextmanager
def small_disk(folder: Path, size: str = "8m"):
    """A tmpfs of ``size`` mounted at ``folder`` for the block (a real file system that fills up); the test is
    skipped, with the reason, where this machine does not let it mount one (no root, a container without
    CAP_SYS_ADMIN, no ``mount``)."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs here ({error}); the disk-full cases need one")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); the disk-full "
                    "cases need one")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)


FILLER = ".filler"


def leave_free(disk: Path, nbytes: int) -> None:
    """Fill ``disk`` (a small_disk) with one file so that ``nbytes`` stay free (to the page)."""
    filler = disk / FILLER
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    assert free > nbytes, (free, nbytes)
    with open(filler, "wb") as handle:
        handle.write(b"\0" * (free - nbytes))
    assert abs(shutil.disk_usage(disk).free - nbytes) <= 8192, shutil.disk_usage(disk)


def free_space(disk: Path) -> None:
    """Delete the filler of :func:`leave_free`: the space a user frees after a disk-full error."""
    (disk / FILLER).unlink()


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders under ``folder``: staging folders (``step-N.tmp``, ``.final.tmp``,
    ``.X.overwrite``) and the temporary files of atomic writes (``.NAME.XXXX.ext``), lock files excepted."""
    found = []
    for path in Path(folder).rglob("*"):
        name = path.name
        if name == FILLER or name.startswith(".hf-sparse-attn.lock"):
            continue
        if name.endswith((".tmp", ".overwrite")) or (name.startswith(".") and path.is_file()):
            found.append(path.relative_to(folder).as_posix())
    return sorted(found)
