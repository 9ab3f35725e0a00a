"""What published files may say about local paths: a name, never the trainer's directory layout.

Published files (``final/training_args.json``, ``results.json``) are uploaded as they are, so a setting that
names a local file or folder is recorded by :func:`public_name`: ``"/home/me/data/reviews.csv"`` becomes
``"reviews.csv (local file)"``, the embedded MiniLM becomes its Hub id, and Hub ids and the embedded dataset
names stay what they are. :func:`local_name` reads such a name back; :func:`absolute_paths_in` finds what a
file still carries (the pre-push check in hub_cards refuses those).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Folder names that say nothing alone: the parent's name is kept with them ("run-3/final").
GENERIC_NAMES = ("final", "model", "best", "checkpoint", "eval", "out", "output")
_LOCAL_NAME = re.compile(r"^(?P<name>.+) \(local (?P<kind>file|folder)\)$")
_ABSOLUTE = re.compile(r"^(/[^/\s]|~[/\\]|[A-Za-z]:[/\\]|\\\\)")


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "~", ".")) or bool(_ABSOLUTE.match(value)) or os.path.exists(value)


def public_name(value):
    """``value`` as a published file may record it (see the module docstring); non-strings are returned as they are."""
    if not isinstance(value, str) or not value.strip() or not _looks_local(value) or _LOCAL_NAME.match(value):
        return value
    path = Path(value).expanduser()
    try:
        from .assets import embedded_minilm_path

        if path.resolve() == Path(embedded_minilm_path()).resolve():
            return MINILM_HUB_ID
    except FileNotFoundError:
        pass
    resolved = path.resolve()
    name = resolved.name or str(value)
    if name in GENERIC_NAMES and resolved.parent.name:
        name = f"{resolved.parent.name}/{name}"
    return f"{name} (local {'folder' if path.is_dir() else 'file'})"


def local_name(value) -> str | None:
    """The file or folder name inside a :func:`public_name` of a local path; None for anything else."""
    match = _LOCAL_NAME.match(value) if isinstance(value, str) else None
    return match.group("name") if match else None


def is_absolute_path(value) -> bool:
    """Whether a string is an absolute local path (POSIX, home-relative, or Windows)."""
    return isinstance(value, str) and bool(_ABSOLUTE.match(value))


def absolute_paths_in(payload, where: str = "") -> list[tuple[str, str]]:
    """(key path, value) of every string in a JSON-like ``payload`` that is an absolute local path."""
    found = []
    if isinstance(payload, dict):
        for key, value in payload.items():
            found += absolute_paths_in(value, f"{where}.{key}" if where else str(key))
    elif isinstance(payload, (list, tuple)):
        for index, value in enumerate(payload):
            found += absolute_paths_in(value, f"{where}[{index}]")
    elif is_absolute_path(payload):
        found.append((where, payload))
    return found
