"""The two error types of hub_cards. Messages are one line and name the fix."""

from __future__ import annotations


class HubCardsError(Exception):
    """Base class: something about a checkpoint folder, a results file or the Hub that we refuse to work with."""

    def __init__(self, message: str):
        # One line, always: callers print str(err) as the whole diagnosis.
        super().__init__(" ".join(str(message).split()))


class CardError(HubCardsError, ValueError):
    """A card cannot be rendered or is not fit to publish (wrong results file, missing fields, broken README)."""


class PushError(HubCardsError, RuntimeError):
    """A folder cannot be pushed (failed validation, missing token, unreachable or refusing endpoint)."""
