"""hub_cards: model cards with interpretability scores for hf-sparse-attn checkpoints, and pushing them to the Hub.

    python -m hub_cards render CHECKPOINT --results out/eval/results.json   # writes CHECKPOINT/README.md
    python -m hub_cards validate CHECKPOINT                                 # the checks push runs, no network
    python -m hub_cards push CHECKPOINT --repo-id ORG/NAME                  # one commit to the Hub

Python API (what the training and evaluation commands call)::

    from hub_cards.render import render_card     # render_card(checkpoint_dir, results_path, *, train_log=None) -> Path
    from hub_cards.push import push_folder, validate_folder
"""

from .errors import CardError, HubCardsError, PushError

__all__ = ["CardError", "HubCardsError", "PushError", "render_card", "push_folder", "validate_folder"]


def __getattr__(name: str):
    # Lazy: `import hub_cards` stays cheap (no torch, no huggingface_hub) for callers that only need the errors.
    if name == "render_card":
        from .render import render_card

        return render_card
    if name in ("push_folder", "validate_folder"):
        from . import push

        return getattr(push, name)
    raise AttributeError(f"module 'hub_cards' has no attribute {name!r}")
