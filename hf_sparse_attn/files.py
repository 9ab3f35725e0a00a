"""Writing files so that a reader never sees a partial one, reading JSON files, and reporting errors in one line.

Every output of the packages (JSON results, logs, tables, plots, row shards) is written to a temporary file in
the target's own folder and renamed over the target: ``os.replace`` is atomic on one file system, so a crash
leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, *, fsync: bool = True):
    """Yield a temporary path beside ``path``; when the block ends without error, rename it onto ``path``.

    For writers that want a file name (``fig.savefig``, ``np.savez``, ``save_pretrained`` of one file). The
    temporary file is removed if the block raises.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, payload, *, indent: int | None = 2, trailing_newline: bool = True) -> None:
    """Write ``payload`` as JSON atomically. Non-finite floats are refused: NaN is not JSON."""
    text = json.dumps(payload, indent=indent, allow_nan=False)
    atomic_write_text(path, text + ("\n" if trailing_newline else ""))


def read_json(path, error: type[Exception], fix: str):
    """The JSON value in ``path``; ``error`` (one line: the path, the parser's complaint, then ``fix``) when it is
    not valid UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from None


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its type name if it has none): for one-line diagnoses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
