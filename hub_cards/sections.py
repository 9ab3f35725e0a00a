"""Generated sections of a card body, delimited by HTML comments, and how a re-render merges them into a card.

    <!-- hf-sparse-attn:begin:scores -->
    ...generated text...
    <!-- hf-sparse-attn:end:scores -->

A re-render replaces the text between each pair of markers and keeps every byte outside them. A section the new
render has and the old card lacks goes right after the nearest earlier section the card still has (so a newer
template's sections land where the template puts them); a card with no markers at all gets the generated body on
top and its old text below. Sections the old card has and the new render lacks are left alone.
"""

from __future__ import annotations

import re

from .errors import CardError

MARKER_PREFIX = "hf-sparse-attn"
_MARKER = re.compile(r"<!--\s*" + MARKER_PREFIX + r":(begin|end):([A-Za-z0-9_-]+)\s*-->")


def begin_marker(name: str) -> str:
    return f"<!-- {MARKER_PREFIX}:begin:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- {MARKER_PREFIX}:end:{name} -->"


def parse_sections(text: str, *, source: str = "README.md") -> dict[str, tuple[int, int]]:
    """name -> (start, end) character span of each ``begin ... end`` block, markers included, in text order.

    Raises CardError for a marker without its partner, nested or repeated sections: merging into such a card
    could destroy what the user wrote, so we refuse instead.
    """
    spans: dict[str, tuple[int, int]] = {}
    open_name, open_start = None, 0
    for match in _MARKER.finditer(text):
        kind, name = match.group(1), match.group(2)
        if kind == "begin":
            if open_name is not None:
                raise CardError(f"{source}: section {open_name!r} is not closed before {name!r} begins; "
                                f"restore the line {end_marker(open_name)} or delete the section's markers")
            if name in spans:
                raise CardError(f"{source}: section {name!r} appears twice; delete one copy including its markers")
            open_name, open_start = name, match.start()
        else:
            if open_name != name:
                raise CardError(f"{source}: {match.group(0)} has no matching {begin_marker(name)}; "
                                "restore the begin marker or delete this line")
            spans[name] = (open_start, match.end())
            open_name = None
    if open_name is not None:
        raise CardError(f"{source}: section {open_name!r} has no end marker; restore the line {end_marker(open_name)}")
    return spans


def merge_sections(old_body: str, new_body: str) -> str:
    """``old_body`` with each generated section replaced by its version in ``new_body`` (see module docstring)."""
    new_spans = parse_sections(new_body, source="the card template")
    old_spans = parse_sections(old_body)
    new_blocks = {name: new_body[start:end] for name, (start, end) in new_spans.items()}
    if not any(name in new_blocks for name in old_spans):
        # Nothing of ours in the old card (a hand-written or Trainer README): generated body on top, old text below.
        if not old_body.strip():
            return new_body
        return new_body.rstrip("\n") + "\n\n" + old_body.lstrip("\n")

    # Replace in place, from the end so earlier spans keep their offsets.
    merged = old_body
    for name, (start, end) in sorted(old_spans.items(), key=lambda item: item[1][0], reverse=True):
        if name in new_blocks:
            merged = merged[:start] + new_blocks[name] + merged[end:]

    # Insert the sections the old card lacks, in template order, each after the closest earlier one present.
    order = list(new_blocks)
    present = [name for name in order if name in old_spans]
    for index, name in enumerate(order):
        if name in present:
            continue
        spans = parse_sections(merged)
        earlier = [n for n in order[:index] if n in spans]
        if earlier:
            at = spans[earlier[-1]][1]
            merged = merged[:at] + "\n\n" + new_blocks[name] + merged[at:]
        else:
            later = [n for n in order[index + 1:] if n in spans]
            at = spans[later[0]][0]
            merged = merged[:at] + new_blocks[name] + "\n\n" + merged[at:]
        present.append(name)
    return merged
