"""Sparse attention for transformers encoders: spec, attention function, injection and Hub-ready saving.

Depends on torch and transformers alone. ``save_pretrained`` copies this file and ``sparse_attn_mappings.py``
into the model folder and points ``auto_map`` at the ``Sparse<StockClass>`` classes this module builds on
demand (module ``__getattr__``), so ``from_pretrained(folder, trust_remote_code=True)`` reproduces the model in
an environment that has neither hf_sparse_attn nor entmax.

How it plugs in: each mapping is registered by name in transformers' ``AttentionInterface`` and, with the
additive ``eager_mask``, in ``AttentionMaskInterface`` (without the mask entry transformers calls the function
with ``attention_mask=None`` and padding gets weight). Every attention module of the model receives a small
``sparse_attn`` submodule (a :class:`SparseAttnMapping`) that holds the mapping and, for learned alpha, one
parameter per head; the registered attention function reads it from the module it is called with.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import transformers
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from .sparse_attn_mappings import entmax15, entmax_newton, softmax, sparsegen_lin, sparsemax

REMOTE_CODE_FILES = ("sparse_attn_modeling.py", "sparse_attn_mappings.py")
CONFIG_KEY = "sparse_attention"

# name -> parameters it takes. The same names are registered in transformers' attention interfaces.
ATTN_IMPLS = {
    "softmax": (),
    "sparsemax": (),
    "entmax15": (),
    "entmax": ("alpha",),
    "entmax_learned": ("alpha_init",),
    "sparsegen_lin": ("lambda",),
}
_CHOICES = (
    "softmax, sparsemax, entmax15, entmax:alpha=A (1 < A <= 2), entmax_learned[:alpha_init=A] (1 < A < 2), "
    "sparsegen_lin:lambda=L (L < 1)"
)


class SparseAttnError(ValueError):
    """Invalid sparse-attention request; the message is one line and names the valid choices."""


@dataclass(frozen=True)
class SparseAttnSpec:
    """Which mapping a model's attention uses, and its parameters. Recorded in ``config.sparse_attention``."""

    attn_impl: str
    alpha: float | None = None
    lambda_: float | None = None
    alpha_init: float | None = None

    @property
    def learnable(self) -> bool:
        return self.attn_impl == "entmax_learned"

    def to_dict(self) -> dict:
        return {
            "attn_impl": self.attn_impl,
            "alpha": self.alpha,
            "lambda": self.lambda_,
            "alpha_init": self.alpha_init,
            "learnable": self.learnable,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SparseAttnSpec":
        return parse_attn_impl(d["attn_impl"], alpha=d.get("alpha"), lambda_=d.get("lambda"), alpha_init=d.get("alpha_init"))

    def __str__(self) -> str:
        params = {"alpha": self.alpha, "lambda": self.lambda_, "alpha_init": self.alpha_init}
        shown = [f"{k}={v:g}" for k, v in params.items() if v is not None and k in ATTN_IMPLS[self.attn_impl]]
        return self.attn_impl + (":" + ",".join(shown) if shown else "")


def parse_attn_impl(attn_impl, *, alpha=None, lambda_=None, alpha_init=None) -> SparseAttnSpec:
    """Parse ``"entmax:alpha=1.3"``-style names (or a name plus companion values) into a validated spec."""
    if isinstance(attn_impl, SparseAttnSpec):
        return attn_impl
    if not isinstance(attn_impl, str) or not attn_impl.strip():
        raise SparseAttnError(f"attn_impl must be a string; choose one of: {_CHOICES}")
    name, _, param_text = attn_impl.strip().partition(":")
    name = name.strip()
    if name not in ATTN_IMPLS:
        raise SparseAttnError(f"unknown attn_impl {name!r}; choose one of: {_CHOICES}")
    given = {"alpha": alpha, "lambda": lambda_, "alpha_init": alpha_init}
    for item in filter(None, (s.strip() for s in param_text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in given:
            raise SparseAttnError(f"cannot read {item!r} in attn_impl {attn_impl!r}; write name:key=value, e.g. entmax:alpha=1.3")
        try:
            given[key] = float(value)
        except ValueError:
            raise SparseAttnError(f"{key} must be a number, got {value.strip()!r} in attn_impl {attn_impl!r}") from None
    takes = ATTN_IMPLS[name]
    extra = [k for k, v in given.items() if v is not None and k not in takes]
    if extra:
        raise SparseAttnError(f"{name} takes {', '.join(takes) or 'no parameters'}, not {', '.join(extra)}; choose one of: {_CHOICES}")
    alpha, lam, alpha_init = given["alpha"], given["lambda"], given["alpha_init"]
    if name == "entmax":
        if alpha is None:
            raise SparseAttnError("entmax needs alpha in (1, 2]: write attn_impl='entmax:alpha=1.3' or pass attn_alpha=1.3")
        alpha = float(alpha)
        if not 1.0 < alpha <= 2.0:
            raise SparseAttnError(f"alpha must lie in (1, 2], got {alpha:g}; use attn_impl='softmax' for alpha=1")
    if name == "entmax_learned":
        alpha_init = 1.5 if alpha_init is None else float(alpha_init)
        if not 1.0 < alpha_init < 2.0:
            raise SparseAttnError(f"alpha_init must lie in (1, 2) for learned alpha, got {alpha_init:g}")
    if name == "sparsegen_lin":
        if lam is None:
            raise SparseAttnError("sparsegen_lin needs lambda < 1: write attn_impl='sparsegen_lin:lambda=0.5' or pass attn_lambda=0.5")
        lam = float(lam)
        if not (lam < 1.0 and math.isfinite(lam)):
            raise SparseAttnError(f"sparsegen_lin needs a finite lambda < 1, got {lam:g}")
    return SparseAttnSpec(name, alpha=alpha, lambda_=lam, alpha_init=alpha_init)


def spec_from_config(config) -> SparseAttnSpec | None:
    d = getattr(config, CONFIG_KEY, None)
    return SparseAttnSpec.from_dict(d) if d else None


# --------------------------------------------------------------------------------------------------------------
# The mapping module attached to every attention module
# --------------------------------------------------------------------------------------------------------------


def _alpha_logit(alpha: float) -> float:
    return math.log((alpha - 1.0) / (2.0 - alpha))


class SparseAttnMapping(nn.Module):
    """Maps attention scores ``[B, H, Lq, Lk]`` to probabilities; learned alpha = 1 + sigmoid(alpha_logit)."""

    def __init__(self, spec: SparseAttnSpec, num_heads: int):
        super().__init__()
        self.spec = spec
        self.num_heads = num_heads
        if spec.learnable:
            # Kept in float32 whatever the model dtype: alpha is a scalar per head and steers the whole mapping.
            self.alpha_logit = nn.Parameter(torch.full((num_heads,), _alpha_logit(spec.alpha_init), dtype=torch.float32))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.spec.learnable:
            self.alpha_logit.fill_(_alpha_logit(self.spec.alpha_init))

    def alpha(self) -> torch.Tensor:
        """The alpha used by each head, shape ``[num_heads]`` (1 = softmax, 2 = sparsemax)."""
        if self.spec.learnable:
            return 1.0 + torch.sigmoid(self.alpha_logit.float())
        fixed = {"softmax": 1.0, "sparsemax": 2.0, "entmax15": 1.5, "entmax": self.spec.alpha, "sparsegen_lin": 2.0}
        return torch.full((self.num_heads,), float(fixed[self.spec.attn_impl]))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        impl = self.spec.attn_impl
        if impl == "softmax":
            return softmax(scores)
        if impl == "sparsemax" or (impl == "entmax" and self.spec.alpha == 2.0):
            return sparsemax(scores)
        if impl == "entmax15" or (impl == "entmax" and self.spec.alpha == 1.5):
            return entmax15(scores)
        if impl == "entmax":
            return entmax_newton(scores, self.spec.alpha)
        if impl == "sparsegen_lin":
            return sparsegen_lin(scores, self.spec.lambda_)
        alpha = 1.0 + torch.sigmoid(self.alpha_logit.to(scores.dtype))
        return entmax_newton(scores, alpha.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.spec}, num_heads={self.num_heads}"


def masked_mapping(mapping, scores: torch.Tensor, attention_mask: torch.Tensor | None, *,
                   scores_writable: bool = False) -> torch.Tensor:
    """Apply ``mapping`` with masked keys at exactly 0 and all-masked rows all 0 (not NaN).

    ``attention_mask`` is transformers' additive float mask (0 keep, dtype-min drop) or a boolean keep-mask.
    Masked keys become -inf, which every mapping sends to exactly 0 whatever its scale or alpha.
    ``scores_writable=True`` lets the mask be added in place (the caller owns ``scores`` and needs them no
    more): one fewer [B, H, Lq, Lk] tensor per call.
    """
    if attention_mask is None:
        return mapping(scores)
    if attention_mask.dtype == torch.bool:
        keep = attention_mask
        additive = torch.zeros(keep.shape, dtype=scores.dtype, device=scores.device).masked_fill(~keep, float("-inf"))
    else:
        keep = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        additive = attention_mask.to(scores.dtype).masked_fill(~keep, float("-inf"))
    keep = keep[..., : scores.shape[-1]]
    additive = additive[..., : scores.shape[-1]]
    empty_rows = ~keep.any(dim=-1, keepdim=True)
    has_empty = bool(empty_rows.any())
    if has_empty:  # an all -inf row has no distribution; compute on raw scores and zero it afterwards
        additive = additive.masked_fill(empty_rows, 0.0)
    probs = mapping(scores.add_(additive) if scores_writable else scores + additive)
    if has_empty:
        probs = probs.masked_fill(empty_rows, 0.0)
    return probs


def _default_mapping(attn_impl: str, num_heads: int) -> SparseAttnMapping:
    spec = parse_attn_impl(attn_impl)  # raises for parametric names used without hf_sparse_attn's injection
    return SparseAttnMapping(spec, num_heads)


def make_attention_forward(registered_name: str):
    """The function registered under ``registered_name`` in AttentionInterface (same signature as eager)."""

    def sparse_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        mapping = getattr(module, "sparse_attn", None)
        if mapping is None:  # a stock model set to attn_implementation="sparsemax" by hand: parameter-free names work
            try:
                mapping = _default_mapping(registered_name, query.shape[1])
            except SparseAttnError:
                raise SparseAttnError(
                    f"attn_implementation={registered_name!r} needs parameters: load with "
                    f"from_pretrained(..., attn_impl=...) or call hf_sparse_attn.sparsify(model, attn_impl=...)"
                ) from None
        if key.shape[1] != query.shape[1]:  # grouped-query attention: share each key/value head
            groups = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        # Half-precision scores lose the gaps between near-equal scores that decide the support: use float32.
        compute_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
        # Scaled and masked in place: matmul's backward needs its inputs, not its output, so no [B, H, L, L] copy
        # is made.
        scores = torch.matmul(query.to(compute_dtype), key.to(compute_dtype).transpose(-1, -2)).mul_(scaling)
        probs = masked_mapping(mapping, scores, attention_mask, scores_writable=True).to(value.dtype)
        if dropout > 0.0 and module.training:
            probs = nn.functional.dropout(probs, p=dropout, training=True)
        attn_output = torch.matmul(probs, value).transpose(1, 2).contiguous()
        return attn_output, probs

    sparse_attention_forward.__name__ = f"{registered_name}_attention_forward"
    return sparse_attention_forward


def register_attention_functions() -> None:
    """Register every mapping name in AttentionInterface and AttentionMaskInterface (idempotent)."""
    for name in ATTN_IMPLS:
        AttentionInterface.register(name, make_attention_forward(name))
        AttentionMaskInterface.register(name, eager_mask)


register_attention_functions()


# --------------------------------------------------------------------------------------------------------------
# Finding attention modules and injecting the mapping
# --------------------------------------------------------------------------------------------------------------

_ROUTES_CACHE: dict[type, bool] = {}


def _routes_through_attention_interface(module_cls: type) -> bool:
    """Does this module class call transformers' attention interface in its forward? (read from its source)"""
    if module_cls not in _ROUTES_CACHE:
        try:
            source = inspect.getsource(module_cls.forward)
        except (OSError, TypeError):
            source = ""
        _ROUTES_CACHE[module_cls] = "ALL_ATTENTION_FUNCTIONS" in source
    return _ROUTES_CACHE[module_cls]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that compute attention through AttentionInterface, in layer order."""
    return [m for m in model.modules() if _routes_through_attention_interface(type(m))]


def _num_heads(module: nn.Module, config) -> int:
    for attr in ("num_attention_heads", "num_heads", "n_heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return int(config.num_attention_heads)


def install(model: PreTrainedModel, spec: SparseAttnSpec) -> PreTrainedModel:
    """Attach the mapping to every attention module and switch the model's attention implementation to it."""
    modules = attention_modules(model)
    if not modules or not getattr(model, "_supports_attention_backend", False):
        raise SparseAttnError(
            f"{type(model).__name__} does not route its attention through transformers' AttentionInterface, so its "
            "attention cannot be replaced; use BERT, RoBERTa, DistilBERT, ELECTRA, XLM-RoBERTa, ModernBERT or another "
            "model with _supports_attention_backend=True"
        )
    reference = next(iter(model.parameters()), None)
    for module in modules:
        mapping = SparseAttnMapping(spec, _num_heads(module, model.config))
        if reference is not None and reference.device.type != "meta":
            mapping.to(reference.device)
        module.sparse_attn = mapping
    # Set the implementation on every (sub)config directly: PreTrainedModel.set_attn_implementation inspects the
    # class's module source, which for our generated subclasses is this file.
    configs = {id(model.config): model.config}
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            configs[id(sub.config)] = sub.config
    for config in configs.values():
        config._attn_implementation_internal = spec.attn_impl
    model.config.sparse_attention = spec.to_dict()
    return model


def get_spec(model: nn.Module) -> SparseAttnSpec | None:
    """The sparse setting of a model, or None for a stock model."""
    config = getattr(model, "config", None)
    return spec_from_config(config) if config is not None else None


def attention_alphas(model: nn.Module) -> torch.Tensor:
    """alpha per attention layer and head, ``[n_layers, n_heads]`` (1 = softmax, 2 = sparsemax and sparsegen)."""
    mappings = [m.sparse_attn for m in attention_modules(model) if isinstance(getattr(m, "sparse_attn", None), nn.Module)]
    if not mappings:
        raise SparseAttnError("this model has no sparse attention; load it with attn_impl=... or call hf_sparse_attn.sparsify")
    with torch.no_grad():
        return torch.stack([m.alpha().detach().float().cpu() for m in mappings])


# --------------------------------------------------------------------------------------------------------------
# Model classes: Sparse<StockClass>, built on demand, with Hub-ready saving
# --------------------------------------------------------------------------------------------------------------

_SPARSE_CLASSES: dict[type, type] = {}

# The Auto classes written into auto_map when the stock model type maps to a class in them.
AUTO_CLASS_NAMES = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
    "AutoModelForMaskedLM",
    "AutoModelForPreTraining",
    "AutoModelForCausalLM",
)


def sparse_model_class(base: type) -> type:
    """``Sparse<base>``: a subclass of the stock class whose instances carry sparse attention."""
    if getattr(base, "_is_sparse_attn_class", False):
        return base
    if base in _SPARSE_CLASSES:
        return _SPARSE_CLASSES[base]

    class SparseModel(base):
        _is_sparse_attn_class = True

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            spec = spec_from_config(config)
            if spec is None:
                raise SparseAttnError(f"{type(self).__name__} needs config.{CONFIG_KEY}; pass attn_impl=... when loading")
            install(self, spec)

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            wants_info = kwargs.pop("output_loading_info", False)
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
            # A checkpoint without learned alphas (e.g. a stock BERT) leaves them uninitialised: start them at alpha_init.
            missing = set(info.get("missing_keys", ()))
            for name, module in model.named_modules():
                if isinstance(module, SparseAttnMapping) and any(k.startswith(name + ".") for k in missing):
                    module.reset_parameters()
            return (model, info) if wants_info else model

        def save_pretrained(self, save_directory, *args, **kwargs):
            self.config.sparse_attention = get_spec(self).to_dict()
            self.config.auto_map = auto_map_for(self)
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                write_remote_code(save_directory)

    SparseModel.__name__ = SparseModel.__qualname__ = "Sparse" + base.__name__
    SparseModel.__module__ = __name__
    SparseModel.__doc__ = f"{base.__name__} with sparse attention (see config.{CONFIG_KEY})."
    _SPARSE_CLASSES[base] = SparseModel
    return SparseModel


def __getattr__(name: str):
    """``Sparse<StockClass>`` on demand: what ``auto_map`` entries name when the folder is loaded as remote code."""
    if name.startswith("Sparse") and hasattr(transformers, name[len("Sparse"):]):
        cls = sparse_model_class(getattr(transformers, name[len("Sparse"):]))
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def auto_map_for(model: PreTrainedModel) -> dict:
    """auto_map entries for every Auto class that maps this model's config type to a stock class."""
    module_name = Path(REMOTE_CODE_FILES[0]).stem
    stock_base = next(c for c in type(model).__mro__ if not getattr(c, "_is_sparse_attn_class", False))
    auto_map = {}
    for auto_name in AUTO_CLASS_NAMES:
        auto_cls = getattr(transformers, auto_name, None)
        mapping = getattr(auto_cls, "_model_mapping", None)
        if mapping is None or type(model.config) not in mapping:
            continue
        stock = mapping[type(model.config)]
        if isinstance(stock, (list, tuple)):
            stock = stock[0]
        auto_map[auto_name] = f"{module_name}.Sparse{stock.__name__}"
    # The loaded class itself may not be the Auto default for its head (e.g. a subclass): make sure it is reachable.
    auto_map.setdefault("AutoModel", f"{module_name}.Sparse{stock_base.__name__}")
    return auto_map


def write_remote_code(save_directory) -> None:
    """Copy the torch + transformers only implementation next to the weights."""
    here = Path(__file__).resolve().parent
    for filename in REMOTE_CODE_FILES:
        target = Path(save_directory) / filename
        if (here / filename).resolve() != target.resolve():
            tmp = target.with_suffix(".py.tmp")
            shutil.copyfile(here / filename, tmp)
            os.replace(tmp, target)


def sparsify(model: PreTrainedModel, attn_impl="entmax15", *, alpha=None, lambda_=None, alpha_init=None) -> PreTrainedModel:
    """Switch a loaded model's attention to a sparse mapping, in place (its weights stay as they are)."""
    spec = parse_attn_impl(attn_impl, alpha=alpha, lambda_=lambda_, alpha_init=alpha_init)
    install(model, spec)
    model.__class__ = sparse_model_class(type(model))
    return model


def read_config_spec(folder) -> SparseAttnSpec | None:
    """The spec recorded in a saved folder's config.json (None for a stock checkpoint)."""
    with open(Path(folder) / "config.json", encoding="utf-8") as f:
        d = json.load(f).get(CONFIG_KEY)
    return SparseAttnSpec.from_dict(d) if d else None
