"""Writing files so that a reader never sees a partial one, reading JSON files, and reporting errors in one line.

Every output of the packages (JSON results, logs, tables, plots, row shards) is written to a temporary file in
the target's own folder and renamed over the target: ``os.replace`` is atomic on one file system, so a crash
leaves either the old file or the new one, never half of either. The file gets the permissions of any other new
file (0666 minus the umask), not the owner-only 0600 of ``tempfile.mkstemp``, so reports can be served and shared.

A full disk surfaces from each writer differently (``OSError`` ENOSPC, safetensors' "No space left on device",
torch's ``inline_container ... unexpected pos``, Pillow's ``'_idat'.fileno``); :func:`reporting_disk_full` turns
any of them into one :class:`DiskFullError` line naming the folder and the bytes needed, after removing the
temporary files and folders of the failed write, so that the same command succeeds once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
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
    os.chmod(tmp, 0o666 & ~process_umask())
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def process_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status): setting it
    to read it back, the only portable way, would briefly change it for every thread of the process."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``"172.0 KiB"``, ``"51.2 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class DiskFullError(OSError):
    """A write failed because its device is full; one line naming the folder, the bytes needed and the fix."""


# A device with less than this free after a failed write is full for practical purposes: writers fill it to the
# last block before failing, and torch's zip writer reports the failure without an errno.
_NEARLY_FULL_BYTES = 1 << 20


def free_bytes(folder) -> int:
    """Bytes an unprivileged writer can still put on the device of ``folder`` (or of its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _says_disk_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def reporting_disk_full(folder, *, what: str, fix: str, needed_bytes: int | None = None, remove=()):
    """Run the block; when it fails because the device of ``folder`` is full, remove the paths in ``remove`` (the
    write's staging files) and raise DiskFullError: "no space left on the device of FOLDER writing WHAT: it needs
    about N bytes (``needed_bytes``, else more than were free when the block began), M are free; free some space,
    then FIX". Other errors pass through unchanged (their staging files removed too)."""
    free_at_start = free_bytes(folder)
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        # The packages' own one-line errors are ValueErrors: never a full disk in disguise.
        full = _says_disk_full(error) or (not isinstance(error, ValueError) and free_bytes(folder) < _NEARLY_FULL_BYTES)
        for path in remove:
            _remove(Path(path))
        if not full:
            raise
        need = (f"about {format_bytes(needed_bytes)}" if needed_bytes is not None
                else f"more than the {format_bytes(free_at_start)} that were free when it began")
        raise DiskFullError(f"no space left on the device of '{folder}' writing {what}: it needs {need}, "
                            f"{format_bytes(free_bytes(folder))} are free now; free some space, then {fix}") from None
