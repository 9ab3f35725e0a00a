"""The one error type the evaluation suite raises for bad input (a one-line message that names the fix)."""

from __future__ import annotations


class EvalError(ValueError):
    """Invalid evaluation request, detected before any measurement starts; the message is one line."""
