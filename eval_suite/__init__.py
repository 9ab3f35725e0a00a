"""eval_suite: does attention agree with input influence? Every layer and head of an encoder classifier.

Implements the measurements of Meister et al. (2021), "Is Sparse Attention more Interpretable?" (see
docs/eval_suite.md) for any sequence-classification checkpoint::

    python -m eval_suite CHECKPOINT --dataset mr --split test --limit 500 --output-dir out/eval
    accelerate launch --cpu --num_processes 2 -m eval_suite CHECKPOINT ...   # same numbers, split over processes

Python API: :func:`evaluate_checkpoint` (checkpoint and settings -> an :class:`Evaluation`, which a notebook shows
inline as the report's grid and token view; :func:`load_evaluation` reads one back from its folder),
:func:`run_evaluation` (an :class:`EvalRequest` -> results dict), :func:`load_classifier`,
:func:`measure_batch`, the declarations every consumer iterates (:mod:`eval_suite.registry`: measures,
:mod:`eval_suite.agreement`: agreement metrics, :mod:`eval_suite.settings`: settings), the attribution classes of
:mod:`eval_suite.attribution` (each ``method(ForwardContext) -> tensor``; also importable from here) and the metric
functions in :mod:`eval_suite.metrics`.
"""

from .errors import EvalError

__all__ = [
    "AggregateConfig",
    "EvalError",
    "EvalRequest",
    "Evaluation",
    "ForwardContext",
    "MeasureConfig",
    "evaluate_checkpoint",
    "load_classifier",
    "load_evaluation",
    "measure_batch",
    "run_evaluation",
]

_LAZY = {
    "EvalRequest": "settings", "run_evaluation": "runner", "MeasureConfig": "settings",
    "measure_batch": "batch_rows", "load_classifier": "model_access", "AggregateConfig": "settings",
    "ForwardContext": "forward_context",
    "evaluate_checkpoint": "notebook", "load_evaluation": "notebook", "Evaluation": "notebook",
}


def __getattr__(name: str):
    # Lazy so that `import eval_suite` (and the CLI's --help) does not import torch and transformers; the
    # attribution classes are attribution.__all__'s, looked up there.
    import importlib
    import importlib.util

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module 'eval_suite' has no attribute {name!r}")  # a submodule: imported as such
    attribution = importlib.import_module(".attribution", __name__)
    if name in attribution.__all__:
        return getattr(attribution, name)
    raise AttributeError(f"module 'eval_suite' has no attribute {name!r}")
