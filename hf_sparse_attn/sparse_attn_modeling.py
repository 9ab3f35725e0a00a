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

import copy
import dataclasses
import functools
import inspect
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import transformers
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from .sparse_attn_mappings import entmax15, entmax_newton, softmax, sparsegen_lin, sparsemax

# sparse_attn_pooling.py: the paper's classifier (softmax encoder + one attention-pooling layer), resolved on demand.
REMOTE_CODE_FILES = ("sparse_attn_modeling.py", "sparse_attn_mappings.py", "sparse_attn_pooling.py")
CONFIG_KEY = "sparse_attention"
# A saved sparse folder's config.json has model_type "sparse_attn_<stock type>": plain transformers does not know it,
# so without hf_sparse_attn it loads the folder only through its remote code (trust_remote_code=True) and never
# silently as the stock softmax model.
MODEL_TYPE_PREFIX = "sparse_attn_"
# Learned alpha is 1 + sigmoid(logit) but never below 1 + this: float32 cannot tell 1 + sigmoid(logit) from 1 once
# the logit falls below about -16.6 (alpha = 1 has no entmax threshold), and at 1 + 1e-3 float32 entmax still sits
# within 1e-5 of the float64 answer.
ALPHA_MINUS_ONE_FLOOR = 1e-3


class SparseAttnError(ValueError):
    """Invalid sparse-attention request; the message is one line and names the valid choices."""


# --------------------------------------------------------------------------------------------------------------
# The mappings: one declaration each, in ATTN_IMPLS
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingParameter:
    """A number a mapping takes, written ``name:key=value`` or passed as ``attn_<key>=`` to the Auto classes."""

    key: str
    symbol: str  # its placeholder in the usage line, e.g. A in entmax:alpha=A
    condition: str  # what a valid value satisfies, naming the key: "alpha in (1, 2]"
    holds: Callable[[float], bool]
    example: float  # shown in the error for a missing value
    default: float | None = None  # None: the value is required
    hint: str = ""  # appended to the error for a value outside the condition


@dataclass(frozen=True)
class AttnImpl:
    """One attention mapping: its name, parameters, the function that maps scores to probabilities, the alpha it
    amounts to and how a model card names it. Every consumer (the parser, the attention modules, the Auto classes,
    the training command, the cards) reads these declarations; :func:`declare_attn_impl` adds one."""

    name: str
    # (the SparseAttnMapping module, scores [B, H, Lq, Lk]) -> probabilities over the last dimension
    apply: Callable[["SparseAttnMapping", torch.Tensor], torch.Tensor]
    # the one alpha it amounts to, from its parameter values (1 = softmax, 2 = sparsemax); None: a learned alpha
    # per head, started at the value of its alpha_init parameter
    alpha: Callable[[dict], float] | None
    label: str  # the card's name for it; format fields are its parameter keys
    parameters: tuple[MappingParameter, ...] = ()

    @property
    def learnable(self) -> bool:
        return self.alpha is None

    def usage(self) -> str:
        """``entmax:alpha=A``, ``entmax_learned[:alpha_init=A]``: how to write it."""
        required = ",".join(f"{p.key}={p.symbol}" for p in self.parameters if p.default is None)
        optional = ",".join(f"{p.key}={p.symbol}" for p in self.parameters if p.default is not None)
        return self.name + (":" + required if required else "") + (f"[:{optional}]" if optional else "")

    def example(self) -> str:
        """A valid name with every required parameter at its example value: ``entmax:alpha=1.3``."""
        required = ",".join(f"{p.key}={p.example:g}" for p in self.parameters if p.default is None)
        return self.name + (":" + required if required else "")

    def choice(self) -> str:
        """The usage with each parameter's condition: one entry of the list of choices in error messages."""
        conditions = "; ".join(p.condition for p in self.parameters)
        return self.usage() + (f" ({conditions})" if conditions else "")

    def checked_parameters(self, given: dict) -> dict:
        """Every parameter's value (defaults filled in), in declaration order; SparseAttnError naming the fix for a
        value it does not take, a missing one or one outside its condition."""
        takes = [p.key for p in self.parameters]
        extra = [key for key in given if key not in takes]
        if extra:
            raise SparseAttnError(f"{self.name} takes {', '.join(takes) or 'no parameters'}, not {', '.join(extra)}; "
                                  f"choose one of: {attn_impl_choices()}")
        values = {}
        for p in self.parameters:
            value = given.get(p.key, p.default)
            if value is None:
                raise SparseAttnError(f"{self.name} needs {p.condition}: write attn_impl='{self.name}:{p.key}="
                                      f"{p.example:g}' or pass attn_{p.key}={p.example:g}")
            if not p.holds(value):
                raise SparseAttnError(f"{self.name} needs {p.condition}, got {p.key}={value:g}{p.hint}")
            values[p.key] = value
        return values

    def fixed_alpha(self, values: dict) -> float | None:
        """The alpha of this setting (None for learned alphas, which vary per head)."""
        return None if self.alpha is None else float(self.alpha(self._completed(values)))

    def describe(self, values: dict) -> str:
        """The card's name for this setting, e.g. ``alpha-entmax (alpha = 1.3)``; the bare name when a value the
        label needs is missing."""
        completed = self._completed(values)
        if any(completed[p.key] is None for p in self.parameters):
            return self.name
        return self.label.format(**completed)

    def _completed(self, values: dict) -> dict:
        return {p.key: p.default if values.get(p.key) is None else values[p.key] for p in self.parameters}


def _alpha_entmax(mapping: "SparseAttnMapping", scores: torch.Tensor) -> torch.Tensor:
    alpha = mapping.spec.parameters["alpha"]
    if alpha == 2.0:  # the named mappings' solvers are these cases, exactly
        return sparsemax(scores)
    if alpha == 1.5:
        return entmax15(scores)
    return entmax_newton(scores, alpha)


def _constant_alpha(alpha: float) -> Callable[[dict], float]:
    return lambda values: alpha


ATTN_IMPLS: dict[str, AttnImpl] = {impl.name: impl for impl in (
    AttnImpl("softmax", lambda mapping, scores: softmax(scores), _constant_alpha(1.0), "softmax"),
    AttnImpl("sparsemax", lambda mapping, scores: sparsemax(scores), _constant_alpha(2.0), "sparsemax"),
    AttnImpl("entmax15", lambda mapping, scores: entmax15(scores), _constant_alpha(1.5),
             "entmax15 (alpha-entmax, alpha = 1.5)"),
    AttnImpl("entmax", _alpha_entmax, lambda values: values["alpha"], "alpha-entmax (alpha = {alpha:g})",
             (MappingParameter("alpha", "A", "alpha in (1, 2]", lambda a: 1.0 < a <= 2.0, 1.3,
                               hint="; use attn_impl='softmax' for alpha = 1"),)),
    AttnImpl("entmax_learned",
             lambda mapping, scores: entmax_newton(scores, mapping.learned_alpha(scores.dtype).view(1, -1, 1, 1)),
             None, "alpha-entmax with a learned alpha per layer and head (started at {alpha_init:g})",
             (MappingParameter("alpha_init", "A", f"alpha_init in [{1 + ALPHA_MINUS_ONE_FLOOR:g}, 2)",
                               lambda a: 1.0 + ALPHA_MINUS_ONE_FLOOR <= a < 2.0, 1.5, default=1.5),)),
    # sparsemax of rescaled scores: alpha 2
    AttnImpl("sparsegen_lin", lambda mapping, scores: sparsegen_lin(scores, mapping.spec.parameters["lambda"]),
             _constant_alpha(2.0), "sparsegen-lin (lambda = {lambda:g})",
             (MappingParameter("lambda", "L", "lambda < 1", lambda lam: lam < 1.0 and math.isfinite(lam), 0.5),)),
)}
# The parameters config.sparse_attention always records (null where the mapping takes none of them): the keys that
# readers of saved folders (cards, older versions) look up. A mapping's other parameters follow them.
RECORDED_PARAMETERS = ("alpha", "lambda", "alpha_init")


def declare_attn_impl(impl: AttnImpl) -> AttnImpl:
    """Add a mapping to ATTN_IMPLS and register its name in transformers' attention interfaces; returns it.

    A mapping declared at run time works everywhere in this process, but the remote code saved with a model knows
    only the mappings declared in this file."""
    if impl.name in ATTN_IMPLS and ATTN_IMPLS[impl.name] is not impl:
        raise SparseAttnError(f"attn_impl {impl.name!r} is already declared; choose another name")
    ATTN_IMPLS[impl.name] = impl
    _register_attention_function(impl.name)
    return impl


def attn_impl_choices() -> str:
    """Every mapping as it is written, for error messages."""
    return (", ".join(impl.choice() for impl in ATTN_IMPLS.values())
            + "; any of them with layers=[i,j,...] to make only those layers sparse")


def mapping_parameter_keys() -> set[str]:
    """Every parameter key some mapping declares (what may follow the colon of a name, besides ``layers``)."""
    return {p.key for impl in ATTN_IMPLS.values() for p in impl.parameters}


@dataclass(frozen=True)
class SparseAttnSpec:
    """Which mapping a model's attention uses, its parameter values (every parameter it declares, defaults filled
    in) and which layers use it (None: every layer; the others keep transformers' eager softmax). Recorded in
    ``config.sparse_attention``."""

    attn_impl: str
    values: tuple[tuple[str, float], ...] = ()
    layers: tuple[int, ...] | None = None

    @property
    def parameters(self) -> dict[str, float]:
        return dict(self.values)

    @property
    def learnable(self) -> bool:
        return ATTN_IMPLS[self.attn_impl].learnable

    def to_dict(self) -> dict:
        values = self.parameters
        return {
            "attn_impl": self.attn_impl,
            **{key: values.pop(key, None) for key in RECORDED_PARAMETERS},
            **values,
            "learnable": self.learnable,
            "layers": None if self.layers is None else list(self.layers),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SparseAttnSpec":
        values = {k: v for k, v in d.items() if k not in ("attn_impl", "learnable", "layers")}
        return parse_attn_impl(d["attn_impl"], layers=d.get("layers"), **values)

    def __str__(self) -> str:
        shown = [f"{key}={value:g}" for key, value in self.values]
        if self.layers is not None:
            shown.append("layers=[" + ",".join(str(i) for i in self.layers) + "]")
        return self.attn_impl + (":" + ",".join(shown) if shown else "")


def _split_params(text: str) -> list[str]:
    """``"alpha=1.3,layers=[0,2]"`` -> ``["alpha=1.3", "layers=[0,2]"]``: commas inside brackets stay."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


def _number(key: str, value, where: str) -> float:
    if isinstance(value, bool):
        raise SparseAttnError(f"{key} must be a number, got {value!r}{where}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SparseAttnError(f"{key} must be a number, got {str(value).strip()!r}{where}; e.g. {key}=1.3") from None


def parse_layers(value) -> tuple[int, ...] | None:
    """Which layers are sparse: None or "all" (every layer), an int, "3", "-1", "0,2,-1", "[0,2]" or a sequence of
    ints (negative indices count from the end) -> a tuple of ints, or None for every layer."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "")):
        return None
    hint = "write layers as integers, e.g. layers=[-1] (the last layer) or layers=[0,2]"
    if isinstance(value, str):
        parts = [p for p in value.strip().strip("[]").replace(" ", ",").split(",") if p]
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise SparseAttnError(f"cannot read layers={value!r}; {hint}")
    layers = []
    for part in parts:
        if isinstance(part, bool) or isinstance(part, float):
            raise SparseAttnError(f"cannot read layer {part!r} in layers={value!r}; {hint}")
        try:
            layers.append(int(str(part).strip()))
        except ValueError:
            raise SparseAttnError(f"cannot read layer {part!r} in layers={value!r}; {hint}") from None
    if not layers:
        raise SparseAttnError(f"layers={value!r} names no layer; {hint}, or leave it out for every layer")
    if len(set(layers)) != len(layers):
        raise SparseAttnError(f"layers={value!r} names a layer twice; list each layer once")
    return tuple(layers)


def _values_in_name(param_text: str, where: str) -> dict:
    """``key=value`` items after the name's colon: numbers, and ``layers`` as a tuple."""
    in_name = {}
    for item in _split_params(param_text):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in mapping_parameter_keys() | {"layers"}:
            raise SparseAttnError(f"cannot read {item!r}{where}; write name:key=value, e.g. entmax:alpha=1.3")
        if key in in_name:
            raise SparseAttnError(f"{key} is given twice{where}; write it once")
        in_name[key] = parse_layers(value) if key == "layers" else _number(key, value.strip(), where)
    return in_name


def parse_attn_impl(attn_impl, *, layers=None, **parameters) -> SparseAttnSpec:
    """Parse ``"entmax:alpha=1.3"``-style names (or a name plus companion values, ``alpha=1.3``; ``lambda_`` for
    lambda) into a validated spec.

    A value given both in the name and as a companion must agree; a key given twice in the name is an error.
    """
    if isinstance(attn_impl, SparseAttnSpec):
        if layers is None and all(value is None for value in parameters.values()):
            return attn_impl
        attn_impl = str(attn_impl)
    if not isinstance(attn_impl, str) or not attn_impl.strip():
        raise SparseAttnError(f"attn_impl must be a string; choose one of: {attn_impl_choices()}")
    name, _, param_text = attn_impl.strip().partition(":")
    name = name.strip()
    if name not in ATTN_IMPLS:
        raise SparseAttnError(f"unknown attn_impl {name!r}; choose one of: {attn_impl_choices()}")
    where = f" in attn_impl {attn_impl!r}"
    in_name = _values_in_name(param_text, where)
    given = {}
    for key, value in parameters.items():
        key = key.rstrip("_")  # lambda_: lambda is a Python keyword
        if value is not None:
            value = _number(key, value, "")
            if key in in_name and in_name[key] != value:
                raise SparseAttnError(f"{key} is {in_name[key]:g}{where} but {value:g} as a separate value; give it once")
            given[key] = value
    if layers is not None:
        layers = parse_layers(layers)
        if "layers" in in_name and in_name["layers"] != layers:
            raise SparseAttnError(f"layers are {list(in_name['layers'])}{where} but {list(layers)} as a separate value; "
                                  "give them once")
        given["layers"] = layers
    given = {**in_name, **given}
    layers = given.pop("layers", None)
    values = ATTN_IMPLS[name].checked_parameters(given)
    return SparseAttnSpec(name, tuple(values.items()), layers)


def spec_from_config(config) -> SparseAttnSpec | None:
    d = getattr(config, CONFIG_KEY, None)
    return SparseAttnSpec.from_dict(d) if d else None


def resolve_layers(layers: tuple[int, ...] | None, n_layers: int) -> tuple[int, ...]:
    """Absolute, sorted layer indices of a selection (None: all ``n_layers``); SparseAttnError when out of range."""
    if layers is None:
        return tuple(range(n_layers))
    resolved = []
    for index in layers:
        if not -n_layers <= index < n_layers:
            raise SparseAttnError(f"layer {index} does not exist in a model with {n_layers} attention layers; use 0.."
                                  f"{n_layers - 1} or -{n_layers}..-1")
        resolved.append(index % n_layers)
    if len(set(resolved)) != len(resolved):
        raise SparseAttnError(f"layers {list(layers)} name the same layer twice in a {n_layers}-layer model; list each "
                              "layer once")
    return tuple(sorted(resolved))


# --------------------------------------------------------------------------------------------------------------
# The mapping module attached to every attention module
# --------------------------------------------------------------------------------------------------------------


def _alpha_logit(alpha: float) -> float:
    return math.log((alpha - 1.0) / (2.0 - alpha))


class SparseAttnMapping(nn.Module):
    """Maps attention scores ``[B, H, Lq, Lk]`` to probabilities.

    Learned alpha = 1 + max(sigmoid(alpha_logit), ALPHA_MINUS_ONE_FLOOR); below the floor the gradient still
    reaches the logit as if unclamped (straight through), so a head pushed towards softmax can come back.
    """

    def __init__(self, spec: SparseAttnSpec, num_heads: int):
        super().__init__()
        self.spec = spec
        self.num_heads = num_heads
        if spec.learnable:
            # Kept in float32 whatever the model dtype: alpha is a scalar per head and steers the whole mapping.
            self.alpha_logit = nn.Parameter(torch.full((num_heads,), _alpha_logit(spec.parameters["alpha_init"]),
                                                       dtype=torch.float32))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.spec.learnable:
            self.alpha_logit.fill_(_alpha_logit(self.spec.parameters["alpha_init"]))

    def learned_alpha(self, dtype: torch.dtype) -> torch.Tensor:
        """Each head's learned alpha ``[num_heads]`` in ``dtype`` (a mapping with a learned alpha only)."""
        above_one = torch.sigmoid(self.alpha_logit.to(dtype))
        floored = above_one.clamp_min(ALPHA_MINUS_ONE_FLOOR)
        return 1.0 + above_one + (floored - above_one).detach()

    def alpha(self) -> torch.Tensor:
        """The alpha used by each head, shape ``[num_heads]`` (1 = softmax, 2 = sparsemax)."""
        if self.spec.learnable:
            return self.learned_alpha(torch.float32)
        return torch.full((self.num_heads,), ATTN_IMPLS[self.spec.attn_impl].fixed_alpha(self.spec.parameters))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return ATTN_IMPLS[self.spec.attn_impl].apply(self, scores)

    def extra_repr(self) -> str:
        return f"{self.spec}, num_heads={self.num_heads}"


class StockSoftmax(nn.Module):
    """Stands in the attention modules a layer selection leaves out: they run the model file's own eager softmax
    (``eager_attention_forward``), so their outputs are bitwise those of the stock model with
    ``attn_implementation="eager"``, and they report alpha = 1."""

    def __init__(self, num_heads: int, eager_function):
        super().__init__()
        self.num_heads = num_heads
        self.eager_function = eager_function

    def alpha(self) -> torch.Tensor:
        return torch.ones(self.num_heads)

    def extra_repr(self) -> str:
        return f"stock eager softmax, num_heads={self.num_heads}"


def _eager_function_of(module: nn.Module):
    """The stock eager attention of the file that defines ``module`` (None if that file has none)."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


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
    # A traced graph cannot ask whether any row is empty: it always takes the guarded path (same result).
    has_empty = torch.compiler.is_compiling() or bool(empty_rows.any())
    if has_empty:  # an all -inf row has no distribution; compute on raw scores and zero it afterwards
        additive = additive.masked_fill(empty_rows, 0.0)
    probs = mapping(scores.add_(additive) if scores_writable else scores + additive)
    if has_empty:
        probs = probs.masked_fill(empty_rows, 0.0)
    return probs


def _default_mapping(attn_impl: str, num_heads: int) -> SparseAttnMapping:
    spec = parse_attn_impl(attn_impl)  # raises for parametric names used without hf_sparse_attn's injection
    if spec.learnable:  # a learned alpha without its parameters would silently run alpha_init forever
        raise SparseAttnError("entmax_learned has one learnable alpha per head")
    return SparseAttnMapping(spec, num_heads)


def make_attention_forward(registered_name: str):
    """The function registered under ``registered_name`` in AttentionInterface (same signature as eager)."""

    def sparse_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        mapping = getattr(module, "sparse_attn", None)
        if isinstance(mapping, StockSoftmax) and mapping.eager_function is not None:
            return mapping.eager_function(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                          **kwargs)
        if mapping is None:  # a stock model set to attn_implementation="sparsemax" by hand: parameter-free names work
            try:
                mapping = _default_mapping(registered_name, query.shape[1])
            except SparseAttnError as error:
                raise SparseAttnError(
                    f"attn_implementation={registered_name!r} cannot run on a stock model ({error}): load with "
                    f"from_pretrained(..., attn_impl=...) or call hf_sparse_attn.sparsify(model, attn_impl=...)"
                ) from None
        elif isinstance(mapping, StockSoftmax):  # a model file without eager_attention_forward: our softmax
            mapping = SparseAttnMapping(parse_attn_impl("softmax"), mapping.num_heads)
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


def _register_attention_function(name: str) -> None:
    AttentionInterface.register(name, make_attention_forward(name))
    AttentionMaskInterface.register(name, eager_mask)


def register_attention_functions() -> None:
    """Register every mapping name in AttentionInterface and AttentionMaskInterface (idempotent)."""
    for name in ATTN_IMPLS:
        _register_attention_function(name)


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


def _unsupported(model) -> SparseAttnError:
    return SparseAttnError(
        f"{type(model).__name__} does not route its attention through transformers' AttentionInterface, so its "
        "attention cannot be replaced; use BERT, RoBERTa, DistilBERT, ELECTRA, XLM-RoBERTa, ModernBERT or another "
        "model with _supports_attention_backend=True"
    )


def install(model: PreTrainedModel, spec: SparseAttnSpec, *, own_config: bool = False) -> PreTrainedModel:
    """Attach the mapping to the chosen attention modules (StockSoftmax to the others), switch the model's attention
    implementation to it and record the spec (layers resolved) in a sparse config class.

    ``own_config=False`` gives the model a converted copy of its config (every module that held the old one gets the
    copy), so a config object the caller still holds is never changed; ``True`` converts the model's config in place
    (for a model being constructed from a config that already asks for sparse attention).
    """
    modules = attention_modules(model)
    if not modules or not getattr(model, "_supports_attention_backend", False):
        raise _unsupported(model)
    chosen = resolve_layers(spec.layers, len(modules))
    if spec.layers is not None:
        spec = dataclasses.replace(spec, layers=chosen)
    reference = next(iter(model.parameters()), None)
    for index, module in enumerate(modules):
        heads = _num_heads(module, model.config)
        mapping = SparseAttnMapping(spec, heads) if index in chosen else StockSoftmax(heads, _eager_function_of(module))
        if reference is not None and reference.device.type != "meta":
            mapping.to(reference.device)
        module.sparse_attn = mapping
    old = model.config
    config = old if own_config else copy.deepcopy(old)
    config.__class__ = sparse_config_class(type(old))
    if config is not old:
        for sub in model.modules():
            if getattr(sub, "config", None) is old:
                sub.config = config
    # Set the implementation on every (sub)config directly: PreTrainedModel.set_attn_implementation inspects the
    # class's module source, which for our generated subclasses is this file.
    configs = {id(model.config): model.config}
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            configs[id(sub.config)] = sub.config
    for sub_config in configs.values():
        sub_config._attn_implementation_internal = spec.attn_impl
    model.config.sparse_attention = spec.to_dict()
    return model


def get_spec(model: nn.Module) -> SparseAttnSpec | None:
    """The sparse setting of a model (layers as absolute indices), or None for a stock model."""
    config = getattr(model, "config", None)
    return spec_from_config(config) if config is not None else None


def attention_alphas(model: nn.Module) -> torch.Tensor:
    """alpha per attention layer and head, ``[n_layers, n_heads]`` (1 = softmax, including the layers a selection
    leaves out; 2 = sparsemax and sparsegen)."""
    mappings = [m.sparse_attn for m in attention_modules(model) if isinstance(getattr(m, "sparse_attn", None), nn.Module)]
    if not mappings:
        raise SparseAttnError("this model has no sparse attention; load it with attn_impl=... or call hf_sparse_attn.sparsify")
    with torch.no_grad():
        return torch.stack([m.alpha().detach().float().cpu() for m in mappings])


# --------------------------------------------------------------------------------------------------------------
# Config and model classes: Sparse<StockClass>, built on demand, with Hub-ready saving
# --------------------------------------------------------------------------------------------------------------

_SPARSE_CLASSES: dict[type, type] = {}
_SPARSE_CONFIGS: dict[type, type] = {}
# Called with every new Sparse<Config> class; hf_sparse_attn registers it with the Auto classes here (the remote
# code alone leaves registering to transformers).
NEW_CONFIG_CLASS_HOOKS: list = []

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


def stock_class(cls: type) -> type:
    """The stock transformers class under a Sparse<...> config or model class (the class itself otherwise)."""
    return next(c for c in cls.__mro__ if not (getattr(c, "_is_sparse_attn_class", False)
                                               or c.__dict__.get("_is_sparse_attn_config", False)))


def _output_attentions_getter(self):
    return self._output_attentions


def _output_attentions_setter(self, value):
    # transformers allows config.output_attentions only with "eager"; our functions return probabilities as well
    if self._attn_implementation in ATTN_IMPLS:
        self._output_attentions = value
    else:
        PretrainedConfig.output_attentions.fset(self, value)


def _validate_output_attentions(self):
    if self._attn_implementation not in ATTN_IMPLS:
        PretrainedConfig.validate_output_attentions(self)


def _validate_by_name(self):
    """The config's checks, as ``save_pretrained`` runs them: huggingface_hub's @strict gave the stock class a
    validate() that calls the validators it collected from that class (the stock validate_output_attentions among
    them), so the override above would never run there. Run the same validators, each looked up on this class."""
    for validator in getattr(stock_class(type(self)), "__class_validators__", ()):
        getattr(self, validator.__name__)()


def sparse_config_class(base: type) -> type:
    """``Sparse<BaseConfig>``: the stock config class with model_type ``sparse_attn_<type>`` (see MODEL_TYPE_PREFIX)."""
    if base.__dict__.get("_is_sparse_attn_config", False):
        return base
    base = stock_class(base)
    if base not in _SPARSE_CONFIGS:
        name = "Sparse" + base.__name__
        cls = type(name, (base,), {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{base.__name__} of a model with sparse attention (config.{CONFIG_KEY}).",
            "model_type": MODEL_TYPE_PREFIX + base.model_type,
            "base_model_type": base.model_type,
            "_is_sparse_attn_config": True,
            "output_attentions": property(_output_attentions_getter, _output_attentions_setter),
            "validate_output_attentions": _validate_output_attentions,
            "validate": _validate_by_name,
        })
        _SPARSE_CONFIGS[base] = cls
        for hook in NEW_CONFIG_CLASS_HOOKS:
            hook(cls)
    return _SPARSE_CONFIGS[base]


def _refuse_stock_implementation(cls, kwargs) -> None:
    requested = kwargs.get("attn_implementation")
    if requested is not None and requested not in ATTN_IMPLS:
        raise SparseAttnError(
            f"{cls.__name__} runs sparse attention, so attn_implementation={requested!r} would be ignored; to run "
            f"these weights with softmax pass attn_impl='softmax' to an Auto class, or load them with "
            f"{stock_class(cls).__name__}")


def _writes_problem_type(model_cls: type) -> bool:
    """Does this head's forward fill in config.problem_type (transformers' classification heads do)?"""
    try:
        return "config.problem_type =" in inspect.getsource(model_cls.forward)
    except (OSError, TypeError):
        return False


def _problem_type_settled_first(forward):
    """``forward`` that, while torch.compile traces it, fills in ``config.problem_type`` before the model runs.

    transformers' classification heads set problem_type from the labels on their first call, after the encoder.
    torch.compile (torch 2.13) drops a config attribute written after a higher-order op, such as the while_loop of
    the traced solver in sparse_attn_mappings.py, once the config's ``__dict__`` has been read (transformers reads it
    on every config attribute): the head then sees problem_type None and returns loss=None. A value written before
    the encoder runs is kept. The choice is transformers' own (loss_utils.ForSequenceClassificationLoss).
    """
    names = list(inspect.signature(forward).parameters)[1:]  # after self
    labels_at = names.index("labels") if "labels" in names else None

    @functools.wraps(forward)
    def settled_forward(self, *args, **kwargs):
        labels = kwargs.get("labels")
        if labels is None and labels_at is not None and len(args) > labels_at:
            labels = args[labels_at]
        if labels is not None and torch.compiler.is_compiling() and self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        return forward(self, *args, **kwargs)

    return settled_forward


def sparse_model_class(base: type) -> type:
    """``Sparse<base>``: a subclass of the stock class whose instances carry sparse attention."""
    if getattr(base, "_is_sparse_attn_class", False):
        return base
    if base in _SPARSE_CLASSES:
        return _SPARSE_CLASSES[base]

    class SparseModel(base):
        _is_sparse_attn_class = True
        config_class = sparse_config_class(base.config_class)

        def __init__(self, config, *args, **kwargs):
            spec = spec_from_config(config)
            if spec is None:
                raise SparseAttnError(f"{type(self).__name__} needs config.{CONFIG_KEY}; pass attn_impl=... when loading")
            requested = getattr(config, "_attn_implementation_internal", None)
            if requested in ATTN_IMPLS and requested != spec.attn_impl:
                raise SparseAttnError(f"attn_implementation={requested!r} disagrees with the recorded mapping "
                                      f"{spec.attn_impl!r}; pass attn_impl={requested!r} to an Auto class instead")
            super().__init__(config, *args, **kwargs)
            install(self, spec, own_config=True)

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            _refuse_stock_implementation(cls, kwargs)
            wants_info = kwargs.pop("output_loading_info", False)
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
            # A checkpoint without learned alphas (e.g. a stock BERT) leaves them uninitialised: start them at alpha_init.
            missing = set(info.get("missing_keys", ()))
            for name, module in model.named_modules():
                if isinstance(module, SparseAttnMapping) and any(k.startswith(name + ".") for k in missing):
                    module.reset_parameters()
            return (model, info) if wants_info else model

        @classmethod
        def _from_config(cls, config, **kwargs):
            _refuse_stock_implementation(cls, kwargs)
            return super()._from_config(config, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            if not type(self.config).__dict__.get("_is_sparse_attn_config", False):
                self.config.__class__ = sparse_config_class(type(self.config))
            self.config.sparse_attention = get_spec(self).to_dict()
            self.config.auto_map = auto_map_for(self)
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                write_remote_code(save_directory)

    if _writes_problem_type(base):
        SparseModel.forward = _problem_type_settled_first(base.forward)
    SparseModel.__name__ = SparseModel.__qualname__ = "Sparse" + base.__name__
    SparseModel.__module__ = __name__
    SparseModel.__doc__ = f"{base.__name__} with sparse attention (see config.{CONFIG_KEY})."
    _SPARSE_CLASSES[base] = SparseModel
    return SparseModel


def __getattr__(name: str):
    """``Sparse<StockClass>`` / ``Sparse<StockConfig>`` on demand: what ``auto_map`` names for the remote code."""
    stock = getattr(transformers, name[len("Sparse"):], None) if name.startswith("Sparse") else None
    if stock is None and name.startswith("Sparse") and name[len("Sparse"):].startswith("AttentionPooling"):
        # Imported here, not at the top: most models never need it. Spelled "from .module import" so that
        # transformers copies the file with the remote code (it looks for that form).
        from .sparse_attn_pooling import AttentionPoolingConfig, AttentionPoolingForSequenceClassification

        stock = {"AttentionPoolingConfig": AttentionPoolingConfig,
                 "AttentionPoolingForSequenceClassification": AttentionPoolingForSequenceClassification}.get(
                     name[len("Sparse"):])
    if isinstance(stock, type) and issubclass(stock, PretrainedConfig):
        cls = sparse_config_class(stock)
    elif isinstance(stock, type) and issubclass(stock, PreTrainedModel):
        cls = sparse_model_class(stock)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls
    return cls


def auto_map_for(model: PreTrainedModel) -> dict:
    """auto_map entries: AutoConfig, and every Auto class that maps this model's stock config type to a stock class."""
    module_name = Path(REMOTE_CODE_FILES[0]).stem
    stock_base = stock_class(type(model))
    stock_config = stock_class(type(model.config))
    auto_map = {"AutoConfig": f"{module_name}.Sparse{stock_config.__name__}"}
    for auto_name in AUTO_CLASS_NAMES:
        auto_cls = getattr(transformers, auto_name, None)
        mapping = getattr(auto_cls, "_model_mapping", None)
        if mapping is None or stock_config not in mapping:
            continue
        stock = mapping[stock_config]
        if isinstance(stock, (list, tuple)):
            stock = stock[0]
        auto_map[auto_name] = f"{module_name}.Sparse{stock_class(stock).__name__}"
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


def _register_output_capture(model: PreTrainedModel) -> None:
    """transformers records which outputs a model can capture per class name when the model is built; a model whose
    class changed afterwards must be recorded again, or output_attentions / output_hidden_states return None."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # transformers without the registry reads _can_record_outputs from the class
        return
    _CAN_RECORD_REGISTRY[model] = model._can_record_outputs


def sparsify(model: PreTrainedModel, attn_impl="entmax15", *, layers=None, **parameters) -> PreTrainedModel:
    """Switch a loaded model's attention to a sparse mapping, in place (its weights stay as they are); returns it.

    ``layers`` chooses the sparse layers (e.g. ``[-1]`` for the last; default every layer); ``parameters`` are the
    mapping's values (``alpha=1.3``; ``lambda_=0.5`` for lambda). The model gets a converted copy of its config, so
    a config object the caller holds is left as it was.
    """
    spec = parse_attn_impl(attn_impl, layers=layers, **parameters)
    install(model, spec)
    model.__class__ = sparse_model_class(type(model))
    _register_output_capture(model)
    return model


def read_config_spec(folder) -> SparseAttnSpec | None:
    """The spec recorded in a saved folder's config.json (None for a stock checkpoint)."""
    with open(Path(folder) / "config.json", encoding="utf-8") as f:
        d = json.load(f).get(CONFIG_KEY)
    return SparseAttnSpec.from_dict(d) if d else None
