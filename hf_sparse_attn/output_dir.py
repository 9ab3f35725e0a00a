"""Output folders of training and evaluation runs: checked before any work, held by one run at a time, replaced whole.

* :func:`check_output_dir` refuses, in one line and without creating anything, a folder that is a file, lies
  under a file, or sits where nothing can be written.
* :class:`OutputLock` is an exclusive lock per output folder (``filelock`` on ``FOLDER/.hf-sparse-attn.lock``).
  The holder records its pid beside the lock, so that a second run can say who holds it; the lock is the
  kernel's (``flock``), so a killed holder releases it at once. :func:`lock_for_processes` takes it on the main
  process of a multi-process run and makes every process fail together when it is taken.
* :func:`replace_folder` puts a complete new folder where an old one is: one atomic exchange of the two names
  where the OS offers it (Linux ``renameat2(RENAME_EXCHANGE)``), else two renames with
  :func:`recover_interrupted_replace` to undo a crash between them. Either way a reader sees the old folder or
  the new one, never a mixture and never neither.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import socket
from pathlib import Path

from .files import atomic_write_json, first_line

LOCK_FILE = ".hf-sparse-attn.lock"
LOCK_HOLDER_FILE = ".hf-sparse-attn.lock.holder.json"
_PREVIOUS_SUFFIX = ".previous"


class OutputDirError(ValueError):
    """An output folder that cannot be used (a file, unwritable, or held by another run); one line naming the fix."""


def check_output_dir(path, flag: str = "--output-dir") -> Path:
    """``path`` as a Path when it can become an output folder; OutputDirError otherwise. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} '{path}' is a file; pass a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"{flag} '{path}' lies under the file '{existing}'; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{flag} '{path}' cannot be written ('{existing}' is not writable); pass a folder you "
                             "can write to")
    return path


def _read_holder(folder: Path) -> str:
    try:
        holder = json.loads((folder / LOCK_HOLDER_FILE).read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded its pid yet"


class OutputLock:
    """Exclusive lock on one output folder; ``acquire`` creates the folder when needed (see the module docstring)."""

    def __init__(self, folder, *, flag: str = "--output-dir"):
        self.folder = Path(folder).expanduser()
        self.flag = flag
        self._lock = None
        self._created: list[Path] = []  # folders this lock created, outermost last

    def acquire(self) -> "OutputLock":
        """Take the lock or raise OutputDirError naming the holder (or why the folder cannot be used)."""
        from filelock import FileLock, Timeout

        check_output_dir(self.folder, self.flag)
        missing = []
        probe = self.folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputDirError(f"{self.flag} '{self.folder}' cannot be created ({first_line(error)}); pass a folder "
                                 "you can write to") from None
        self._created = missing
        lock = FileLock(str(self.folder / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            self._remove_created()
            raise OutputDirError(f"{self.flag} '{self.folder}' is in use by another run ({_read_holder(self.folder)}); "
                                 "wait until it ends or pass another folder") from None
        except OSError as error:
            self._remove_created()
            raise OutputDirError(f"{self.flag} '{self.folder}' cannot be written ({first_line(error)}); pass a folder "
                                 "you can write to") from None
        self._lock = lock
        atomic_write_json(self.folder / LOCK_HOLDER_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
        return self

    def release(self) -> None:
        """Give the lock back; a folder this lock created and nobody wrote into is removed again."""
        if self._lock is None:
            return
        (self.folder / LOCK_HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        self._remove_created()

    def _remove_created(self) -> None:
        if not self._created:
            return
        lock_path = self.folder / LOCK_FILE
        try:
            if lock_path.exists() and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                lock_path.unlink()
            for folder in self._created:
                folder.rmdir()  # fails (and stops) at the first folder that holds anything
        except OSError:
            pass
        self._created = []

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_processes(folder, state, *, flag: str = "--output-dir") -> OutputLock | None:
    """The main process of ``state`` (an accelerate Accelerator or PartialState) takes the folder's lock; every
    process raises the same OutputDirError when it cannot. Returns the lock on the main process, else None."""
    lock, message = None, None
    if state.is_main_process:
        try:
            lock = OutputLock(folder, flag=flag).acquire()
        except OutputDirError as error:
            message = str(error)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]
    if message is not None:
        if lock is not None:
            lock.release()
        raise OutputDirError(message)
    return lock


# Written by hand: neither the standard library nor our dependencies expose renameat2's RENAME_EXCHANGE, the one
# call that swaps two folder names atomically.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step; False where the OS or file system cannot."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _previous_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_PREVIOUS_SUFFIX}")


def replace_folder(new, target) -> None:
    """Move the complete folder ``new`` to ``target``, removing what was there (see the module docstring)."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old folder
        return
    previous = _previous_path(target)
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(target, previous)
    os.replace(new, target)  # a crash just before this line is undone by recover_interrupted_replace
    shutil.rmtree(previous, ignore_errors=True)


def recover_interrupted_replace(target) -> None:
    """Put back the old folder when a :func:`replace_folder` without atomic exchange died between its renames."""
    target = Path(target)
    previous = _previous_path(target)
    if previous.is_dir():
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, target)
