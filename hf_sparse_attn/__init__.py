"""hf-sparse-attn: sparse attention mappings for HuggingFace encoders.

``import hf_sparse_attn`` registers every mapping in transformers' attention interfaces and teaches the
``AutoModel*`` classes the ``attn_impl=`` keyword::

    from transformers import AutoModelForSequenceClassification
    m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="entmax15")
"""

from . import sparse_attn_pooling  # registers attn_pooling_roberta with the Auto classes before any Sparse class exists
from .auto import patch_auto_classes
from .fingerprint import weights_fingerprint
from .sparse_attn_mappings import entmax15, entmax_newton, softmax, sparsegen_lin, sparsemax
from .sparse_attn_modeling import (
    ATTN_IMPLS,
    AttnImpl,
    MappingParameter,
    SparseAttnError,
    SparseAttnMapping,
    SparseAttnSpec,
    attention_alphas,
    attention_modules,
    declare_attn_impl,
    get_spec,
    parse_attn_impl,
    read_config_spec,
    sparse_model_class,
    sparsify,
)

patch_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "ATTN_IMPLS",
    "AttnImpl",
    "MappingParameter",
    "SparseAttnError",
    "SparseAttnMapping",
    "SparseAttnSpec",
    "attention_alphas",
    "attention_modules",
    "declare_attn_impl",
    "entmax15",
    "entmax_newton",
    "get_spec",
    "parse_attn_impl",
    "read_config_spec",
    "softmax",
    "sparse_model_class",
    "sparsegen_lin",
    "sparsemax",
    "sparsify",
    "weights_fingerprint",
]
