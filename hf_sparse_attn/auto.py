"""Teach transformers' Auto classes our folders and the ``attn_impl=`` keyword.

A saved sparse folder's config.json has model_type ``sparse_attn_<stock type>`` (``Sparse<StockConfig>``). Importing
hf_sparse_attn registers each such config class with ``AutoConfig`` and every Auto model class (to
``Sparse<StockClass>``) the first time it is met, so every stock loading path (``from_pretrained`` with any
dtype/device arguments, ``pipeline``, the Trainer) resolves our folders through transformers' own code. Folders
saved before the model type existed (model_type of the stock family plus ``sparse_attention``) are converted when
their config is read.

``AutoModelFor*.from_pretrained`` is a per-class copy made when transformers builds its Auto classes, so patching
the shared base class changes nothing: we wrap ``from_pretrained`` and ``from_config`` on every Auto model class,
and ``AutoConfig.from_pretrained``. With ``attn_impl=`` (or one of our names as ``attn_implementation=``) the
wrapper loads the config the way transformers does, records the spec in a converted copy, and hands it to
transformers, which then builds ``Sparse<StockClass>``; its ``__init__`` creates the learned-alpha parameters before
the weights are read, so a checkpoint's alphas load like any other weight.
"""

from __future__ import annotations

import copy
import functools

import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .sparse_attn_modeling import (ATTN_IMPLS, CONFIG_KEY, MODEL_TYPE_PREFIX, NEW_CONFIG_CLASS_HOOKS, SparseAttnError,
                                   mapping_parameter_keys, parse_attn_impl, sparse_config_class, sparse_model_class,
                                   spec_from_config, stock_class)

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
_PATCHED_FLAG = "_hf_sparse_attn_patched"


def _auto_model_classes() -> list[type]:
    found = []
    for name in dir(transformers):
        if name.startswith("AutoModel"):
            auto_cls = getattr(transformers, name, None)
            if isinstance(auto_cls, type) and issubclass(auto_cls, _BaseAutoModelClass):
                found.append(auto_cls)
    return found


def register_sparse_config(config_cls: type) -> None:
    """Register a ``Sparse<StockConfig>`` with AutoConfig and with every Auto model class that knows its stock config."""
    if config_cls.model_type not in CONFIG_MAPPING:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    base = stock_class(config_cls)
    for auto_cls in _auto_model_classes():
        mapping = auto_cls._model_mapping
        if config_cls in mapping._extra_content or base not in mapping:
            continue
        stock = mapping[base]
        stock = stock[0] if isinstance(stock, (list, tuple)) else stock
        if getattr(stock, "_supports_attention_backend", False):
            auto_cls.register(config_cls, sparse_model_class(stock), exist_ok=True)


def _requested_spec(attn_impl, kwargs):
    """The spec the caller asks for (None: none asked); takes our names out of ``attn_implementation`` and the
    companion values (``attn_layers``, ``attn_<parameter>`` for every parameter a mapping declares) out of
    ``kwargs``."""
    companions = {key: kwargs.pop(f"attn_{key}") for key in sorted(mapping_parameter_keys() | {"layers"})
                  if f"attn_{key}" in kwargs}
    implementation = kwargs.get("attn_implementation")
    if isinstance(implementation, str) and implementation in ATTN_IMPLS:
        kwargs.pop("attn_implementation")
        if attn_impl is not None and parse_attn_impl(attn_impl).attn_impl != implementation:
            raise SparseAttnError(f"attn_impl={attn_impl!r} and attn_implementation={implementation!r} disagree; pass "
                                  "one of them")
        attn_impl = implementation if attn_impl is None else attn_impl
    elif implementation is not None and attn_impl is not None:
        raise SparseAttnError("pass either attn_impl (sparse mappings) or attn_implementation (stock), not both")
    if attn_impl is None:
        given = [f"attn_{key}" for key, value in companions.items() if value is not None]
        if given:
            raise SparseAttnError(f"{', '.join(given)} needs attn_impl=..., e.g. attn_impl='entmax', attn_alpha=1.3")
        return None
    return parse_attn_impl(attn_impl, **companions)


def _refuse_stock_implementation_for_sparse(kwargs, recorded, where: str) -> None:
    implementation = kwargs.get("attn_implementation")
    if implementation is not None and recorded is not None:
        raise SparseAttnError(
            f"{where} records sparse attention ({recorded}), which attn_implementation={implementation!r} would "
            "silently replace or be ignored by; pass attn_impl='softmax' to run these weights with softmax, or "
            f"attn_impl={str(recorded)!r} to keep them as saved")


def _check_supported(auto_cls, config) -> None:
    base = stock_class(type(config))
    if base not in auto_cls._model_mapping:
        raise ValueError(
            f"{auto_cls.__name__} has no model for config type {base.__name__}; pick the Auto class that matches the "
            f"checkpoint's model_type ({config.model_type!r})"
        )
    stock = auto_cls._model_mapping[base]
    stock = stock[0] if isinstance(stock, (list, tuple)) else stock
    if not getattr(stock, "_supports_attention_backend", False):
        raise SparseAttnError(
            f"{stock.__name__} does not route its attention through transformers' AttentionInterface, so its attention "
            "cannot be replaced; use BERT, RoBERTa, DistilBERT, ELECTRA, XLM-RoBERTa, ModernBERT or another model with "
            "_supports_attention_backend=True"
        )


def as_sparse_config(config, spec=None):
    """A ``Sparse<StockConfig>`` copy of ``config`` with ``spec`` recorded (default: the spec it records); the config
    itself when nothing changes. Never modifies ``config``."""
    if spec is None:
        spec = spec_from_config(config)
        if spec is None or type(config).__dict__.get("_is_sparse_attn_config", False):
            return config
    converted = copy.deepcopy(config)
    converted.__class__ = sparse_config_class(type(config))
    converted.sparse_attention = spec.to_dict()
    converted._attn_implementation_internal = None  # set by the model from the spec
    return converted


def _load_config(path, kwargs):
    """(config, remaining kwargs) as ``AutoModel*.from_pretrained`` reads them: config attributes (num_labels, ...)
    go into the config, model arguments (dtype, device_map, ...) stay for the model."""
    kwargs = dict(kwargs)
    hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
    for_config = {k: v for k, v in kwargs.items()
                  if not (k in ("dtype", "torch_dtype") and v == "auto") and k != "quantization_config"}
    config, remaining = AutoConfig.from_pretrained(path, return_unused_kwargs=True, **hub, **for_config)
    for key in ("dtype", "torch_dtype", "quantization_config"):  # what transformers hands the model itself
        if kwargs.get(key) is not None:
            remaining[key] = kwargs[key]
    remaining.update(hub)
    return config, remaining


def _recorded_spec_of(path, kwargs):
    """The spec a folder or Hub id records, read from its config.json only (None for stock or unreadable)."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except Exception:  # noqa: BLE001 - the load itself reports a missing or broken folder in transformers' words
        return None
    d = config_dict.get(CONFIG_KEY)
    return parse_attn_impl(d["attn_impl"]) if d else None


def _wrap_from_pretrained(auto_cls, original):
    @functools.wraps(original)
    def from_pretrained(pretrained_model_name_or_path, *model_args, attn_impl=None, **kwargs):
        spec = _requested_spec(attn_impl, kwargs)
        config = kwargs.pop("config", None)
        given_config = isinstance(config, PretrainedConfig)
        if spec is None:
            recorded = spec_from_config(config) if given_config else (
                _recorded_spec_of(pretrained_model_name_or_path, kwargs) if "attn_implementation" in kwargs else None)
            _refuse_stock_implementation_for_sparse(kwargs, recorded, str(pretrained_model_name_or_path))
            if given_config:
                kwargs["config"] = as_sparse_config(config)  # a config saved before our model type existed
            elif config is not None:
                kwargs["config"] = config
            return original(pretrained_model_name_or_path, *model_args, **kwargs)
        if given_config:
            kwargs.pop("trust_remote_code", None)
        else:
            config, kwargs = _load_config(pretrained_model_name_or_path, kwargs)
        _check_supported(auto_cls, config)
        config = as_sparse_config(config, spec)
        return original(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    return from_pretrained


def _wrap_from_config(auto_cls, original):
    @functools.wraps(original)
    def from_config(config, *, attn_impl=None, **kwargs):
        spec = _requested_spec(attn_impl, kwargs)
        if spec is None:
            _refuse_stock_implementation_for_sparse(kwargs, spec_from_config(config), "this config")
            return original(as_sparse_config(config), **kwargs)
        _check_supported(auto_cls, config)
        kwargs.pop("trust_remote_code", None)
        return original(as_sparse_config(config, spec), **kwargs)

    return from_config


def _wrap_config_from_pretrained(original):
    @functools.wraps(original)
    def from_pretrained(pretrained_model_name_or_path, *args, **kwargs):
        _register_model_type_of(pretrained_model_name_or_path, kwargs)  # before transformers looks the type up
        result = original(pretrained_model_name_or_path, *args, **kwargs)
        config, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, None)
        if spec_from_config(config) is not None and not type(config).__dict__.get("_is_sparse_attn_config", False) \
                and not type(config).__module__.startswith("transformers_modules"):
            config.__class__ = sparse_config_class(type(config))  # an older folder: the object is fresh, ours alone
        return (config, *rest) if rest is not None else config

    return from_pretrained


def _register_model_type_of(path, kwargs) -> None:
    """Register the Sparse<StockConfig> a folder names (model_type sparse_attn_<type>) before transformers reads it."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except Exception:  # noqa: BLE001 - transformers reports a missing or broken config in its own words
        return
    model_type = config_dict.get("model_type") or ""
    base_type = model_type[len(MODEL_TYPE_PREFIX):]
    if model_type.startswith(MODEL_TYPE_PREFIX) and model_type not in CONFIG_MAPPING and base_type in CONFIG_MAPPING:
        sparse_config_class(CONFIG_MAPPING[base_type])  # the hook registers it


def patch_auto_classes() -> None:
    """Wrap from_pretrained / from_config on every ``transformers.AutoModel*`` class and AutoConfig.from_pretrained,
    and register every Sparse<StockConfig> made so far and from now on (idempotent)."""
    if register_sparse_config not in NEW_CONFIG_CLASS_HOOKS:
        NEW_CONFIG_CLASS_HOOKS.append(register_sparse_config)
    from .sparse_attn_modeling import _SPARSE_CONFIGS

    for config_cls in list(_SPARSE_CONFIGS.values()):
        register_sparse_config(config_cls)
    if not AutoConfig.__dict__.get(_PATCHED_FLAG):
        AutoConfig.from_pretrained = staticmethod(_wrap_config_from_pretrained(AutoConfig.from_pretrained))
        setattr(AutoConfig, _PATCHED_FLAG, True)
    for auto_cls in _auto_model_classes():
        if auto_cls.__dict__.get(_PATCHED_FLAG):
            continue
        auto_cls.from_pretrained = staticmethod(_wrap_from_pretrained(auto_cls, auto_cls.from_pretrained))
        auto_cls.from_config = staticmethod(_wrap_from_config(auto_cls, auto_cls.from_config))
        setattr(auto_cls, _PATCHED_FLAG, True)
