"""hf-sparse-attn: sparse attention mappings for HuggingFace encoders.

``import hf_sparse_attn`` registers every mapping in transformers' attention interfaces and teaches the
``AutoModel*`` classes the ``attn_impl=`` keyword::

    from transformers import AutoModelForSequenceClassification
    m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="entmax15")

One exception: while a command started with ``python -m ...`` only prints its ``--help``, the import stays light
(no torch, no transformers: seconds of imports for a page of text); the names below then load, and register, on
first use.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ATTN_IMPLS": "sparse_attn_modeling",
    "AttnImpl": "sparse_attn_modeling",
    "MappingParameter": "sparse_attn_modeling",
    "SparseAttnError": "sparse_attn_modeling",
    "SparseAttnMapping": "sparse_attn_modeling",
    "SparseAttnSpec": "sparse_attn_modeling",
    "attention_alphas": "sparse_attn_modeling",
    "attention_modules": "sparse_attn_modeling",
    "declare_attn_impl": "sparse_attn_modeling",
    "entmax15": "sparse_attn_mappings",
    "entmax_newton": "sparse_attn_mappings",
    "get_spec": "sparse_attn_modeling",
    "parse_attn_impl": "sparse_attn_modeling",
    "read_config_spec": "sparse_attn_modeling",
    "softmax": "sparse_attn_mappings",
    "sparse_model_class": "sparse_attn_modeling",
    "sparsegen_lin": "sparse_attn_mappings",
    "sparsemax": "sparse_attn_mappings",
    "sparsify": "sparse_attn_modeling",
    "weights_fingerprint": "fingerprint",
}
__all__ = list(_EXPORTS)


def printing_help_only(argv: list[str] | None = None) -> bool:
    """Whether this process is ``python -m COMMAND --help`` (or ``-h``): Python sets ``sys.argv[0]`` to "-m" while
    it locates COMMAND, then to the path of the module it runs (a package's ``__main__.py``)."""
    argv = sys.argv if argv is None else argv
    started_with_m = bool(argv) and (argv[0] == "-m" or argv[0].endswith("__main__.py"))
    return started_with_m and any(arg in ("-h", "--help") for arg in argv[1:])


def _load() -> None:
    """Import the mappings and the integration, register them with transformers and patch the Auto classes."""
    from . import sparse_attn_pooling  # noqa: F401  (registers attn_pooling_roberta before any Sparse class exists)
    from .auto import patch_auto_classes

    patch_auto_classes()  # idempotent
    namespace = globals()
    for name, module in _EXPORTS.items():
        namespace[name] = getattr(importlib.import_module(f".{module}", __name__), name)


def __getattr__(name: str):
    # Reached only for a name not loaded yet: after the light import of a --help run.
    if name in _EXPORTS:
        _load()
        return globals()[name]
    raise AttributeError(f"module 'hf_sparse_attn' has no attribute {name!r}")


if not printing_help_only():
    _load()
