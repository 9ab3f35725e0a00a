"""Teach transformers' Auto classes the ``attn_impl=`` keyword.

``AutoModelFor*.from_pretrained`` is a per-class copy made when transformers builds its Auto classes, so patching
the shared base class changes nothing: we wrap ``from_pretrained`` and ``from_config`` on
every Auto model class. The wrapper resolves the sparse setting (the keyword, else the one a saved config records),
then loads through ``Sparse<StockClass>``, whose ``__init__`` creates the learned-alpha parameters before the
weights are read, so a checkpoint's alphas load like any other weight.
"""

from __future__ import annotations

import functools

import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _get_model_class

from .sparse_attn_modeling import SparseAttnError, parse_attn_impl, sparse_model_class, spec_from_config

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
_PATCHED_FLAG = "_hf_sparse_attn_patched"


def _requested_spec(attn_impl, attn_alpha, attn_lambda, attn_alpha_init):
    if attn_impl is None:
        given = [n for n, v in (("attn_alpha", attn_alpha), ("attn_lambda", attn_lambda), ("attn_alpha_init", attn_alpha_init)) if v is not None]
        if given:
            raise SparseAttnError(f"{', '.join(given)} needs attn_impl=..., e.g. attn_impl='entmax', attn_alpha=1.3")
        return None
    return parse_attn_impl(attn_impl, alpha=attn_alpha, lambda_=attn_lambda, alpha_init=attn_alpha_init)


def _stock_class(auto_cls, config):
    if type(config) not in auto_cls._model_mapping:
        raise ValueError(
            f"{auto_cls.__name__} has no model for config type {type(config).__name__}; "
            f"pick the Auto class that matches the checkpoint's model_type ({config.model_type!r})"
        )
    stock = _get_model_class(config, auto_cls._model_mapping)
    if not getattr(stock, "_supports_attention_backend", False):
        raise SparseAttnError(
            f"{stock.__name__} does not route its attention through transformers' AttentionInterface, so its attention "
            "cannot be replaced; use BERT, RoBERTa, DistilBERT, ELECTRA, XLM-RoBERTa, ModernBERT or another model with "
            "_supports_attention_backend=True"
        )
    return stock


def _wrap_from_pretrained(auto_cls, original):
    @functools.wraps(original)
    def from_pretrained(pretrained_model_name_or_path, *model_args, attn_impl=None, attn_alpha=None, attn_lambda=None,
                        attn_alpha_init=None, **kwargs):
        spec = _requested_spec(attn_impl, attn_alpha, attn_lambda, attn_alpha_init)
        if kwargs.get("attn_implementation") is not None:
            if spec is not None:
                raise SparseAttnError("pass either attn_impl (sparse mappings) or attn_implementation (stock), not both")
            return original(pretrained_model_name_or_path, *model_args, **kwargs)  # the user asked for stock attention
        config = kwargs.pop("config", None)
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        if not isinstance(config, PretrainedConfig):
            hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            config, kwargs = AutoConfig.from_pretrained(
                pretrained_model_name_or_path, return_unused_kwargs=True, trust_remote_code=trust_remote_code, **kwargs
            )
            kwargs.update(hub_kwargs)
        if spec is None:
            spec = spec_from_config(config)
        if spec is None:  # a stock checkpoint loaded without attn_impl: untouched transformers behaviour
            return original(pretrained_model_name_or_path, *model_args, config=config, trust_remote_code=trust_remote_code, **kwargs)
        config.sparse_attention = spec.to_dict()
        model_cls = sparse_model_class(_stock_class(auto_cls, config))
        return model_cls.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    return from_pretrained


def _wrap_from_config(auto_cls, original):
    @functools.wraps(original)
    def from_config(config, *, attn_impl=None, attn_alpha=None, attn_lambda=None, attn_alpha_init=None, **kwargs):
        spec = _requested_spec(attn_impl, attn_alpha, attn_lambda, attn_alpha_init) or spec_from_config(config)
        if spec is None or kwargs.get("attn_implementation") is not None:
            return original(config, **kwargs)
        config.sparse_attention = spec.to_dict()
        kwargs.pop("trust_remote_code", None)
        return sparse_model_class(_stock_class(auto_cls, config))._from_config(config, **kwargs)

    return from_config


def patch_auto_classes() -> None:
    """Wrap from_pretrained / from_config on every ``transformers.AutoModel*`` class (idempotent)."""
    for name in dir(transformers):
        if not name.startswith("AutoModel"):
            continue
        auto_cls = getattr(transformers, name, None)
        if not (isinstance(auto_cls, type) and issubclass(auto_cls, _BaseAutoModelClass)):
            continue
        if auto_cls.__dict__.get(_PATCHED_FLAG):
            continue
        auto_cls.from_pretrained = staticmethod(_wrap_from_pretrained(auto_cls, auto_cls.from_pretrained))
        auto_cls.from_config = staticmethod(_wrap_from_config(auto_cls, auto_cls.from_config))
        setattr(auto_cls, _PATCHED_FLAG, True)
