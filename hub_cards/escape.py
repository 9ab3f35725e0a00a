"""Text from files hub_cards did not write (results.json, training files, file and folder names), made inert for a
card: it reads as typed on the Hub and can add no HTML, heading, link, image, table cell or section marker.

    text(value)   plain prose: one line, < > and entity-like & as entities, Markdown punctuation backslashed
    code(value)   an inline code span (literal inside, so only its delimiters and table pipes matter)
    cell(value)   a table cell: local absolute paths shortened to their name, long values cut, then ``text``
    url(path)     a relative link target, percent-encoded

No Markdown library escapes text for Markdown (markdown-it-py and friends parse it), so this is written by hand.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

# An ampersand that would start a character reference; a lone "&" (as in "Pang & Lee") is shown as it is.
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
# Characters that start inline Markdown anywhere in a line: escapes, code, emphasis, links and images, tables,
# strikethrough, math on the Hub; an underscore only next to a non-word character (intraword "_" is no emphasis, so
# "entmax_learned" stays as it is). HTML's < > & are entities by then.
_INLINE = re.compile(r"([\\`*\[\]|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
# What starts a block at the beginning of a line (headings, lists, rules, setext underlines): the marker followed by
# a space, the end, or more of the same. "1.5" or "-0.2" start nothing.
_BLOCK_START = re.compile(r"^([#+=-]|\d+[.)])(?=[\s#=-]|$)")
MAX_CELL_CHARS = 80


def _one_line(value) -> str:
    return " ".join(str(value).split())


def text(value) -> str:
    """``value`` as plain text on one line of a Markdown document (see the module docstring)."""
    line = _ENTITY.sub("&amp;", _one_line(value)).replace("<", "&lt;").replace(">", "&gt;")
    escaped = _INLINE.sub(r"\\\1", line)
    return _BLOCK_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], escaped)


def code(value) -> str:
    """``value`` as an inline code span; a value holding a backtick is shown as escaped text instead."""
    line = _one_line(value)
    if not line or "`" in line:
        return text(line)
    return f"`{line.replace('|', chr(92) + '|')}`"  # a pipe ends a table cell even inside a code span


def cell(value) -> str:
    """A value (any JSON type) for a table cell."""
    if isinstance(value, float):
        shown = f"{value:g}"
    elif isinstance(value, (dict, list)):
        shown = json.dumps(value, sort_keys=True)
    else:
        shown = str(value)
    if isinstance(value, str) and os.path.isabs(value):
        shown = Path(value).name  # a card is public: do not publish the trainer's home directory
    shown = _one_line(shown)
    if len(shown) > MAX_CELL_CHARS:
        shown = shown[:MAX_CELL_CHARS - 3] + "..."
    return text(shown)


def url(path: str) -> str:
    """A relative path as a link or image target (spaces, brackets and quotes percent-encoded)."""
    return quote(path, safe="/")
