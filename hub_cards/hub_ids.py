"""What counts as a Hub id, checked with huggingface_hub's own ``validate_repo_id``, for every id a card or a push
uses: the target repository (ORG/NAME), a base model or dataset (NAME or ORG/NAME) and a license identifier.

Each ``*_problem`` function returns None for a good value, else the one-line reason; callers raise their own error
type (CardError for render, PushError for push) with it, so both commands refuse the same values in the same words.
"""

from __future__ import annotations

import re

from hf_sparse_attn.files import first_line

# Hub license identifiers are lower-case words joined by "-" or "." ("apache-2.0", "cc-by-4.0", "other").
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")


def _validation_problem(value: str) -> str | None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return first_line(err)
    return None


def repo_id_problem(repo_id) -> str | None:
    """Why ``repo_id`` is not a repository to push to (ORG/NAME or USER/NAME), or None."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        return f"repo id {repo_id!r} should be ORG/NAME (or USER/NAME)"
    problem = _validation_problem(repo_id)
    return f"invalid repo id {repo_id!r}: {problem}" if problem else None


def is_hub_id(value) -> bool:
    """Whether ``value`` is a valid Hub id for a model or dataset (NAME or ORG/NAME)."""
    return isinstance(value, str) and value.count("/") <= 1 and _validation_problem(value) is None


def base_model_problem(base_model) -> str | None:
    if is_hub_id(base_model):
        return None
    return f"base model {base_model!r} is not a Hub id (NAME or ORG/NAME); pass --base-model ORG/NAME"


def license_problem(license_id) -> str | None:
    if isinstance(license_id, str) and _LICENSE.match(license_id):
        return None
    return (f"license {license_id!r} is not a Hub license identifier (lower case, e.g. apache-2.0, mit, other); "
            "pass --license ID")
