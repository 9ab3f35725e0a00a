"""Loading a checkpoint as a classifier whose attention we can read, mask and skip into, without editing the model.

* :func:`load_classifier` loads any encoder sequence classifier (ours, with its sparse mapping; or a stock one,
  with softmax attention that returns probabilities) and refuses, in one line, checkpoints that are not trained
  classifiers or whose attention cannot return probabilities.
* :class:`AttentionTap` registers its own function in transformers' ``AttentionInterface`` (and the matching
  mask function in ``AttentionMaskInterface``) that wraps the model's own attention function. Through it the
  suite (1) proves, on a probe input, that the model routes attention through the interface and returns
  probabilities; (2) learns which attention call is which layer (call order); (3) masks chosen keys in one
  layer only (representation leave-one-out); (4) starts a forward pass at layer ``l`` from cached hidden states,
  skipping layers ``< l`` whose output would be unchanged (checked on the probe before it is used).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from hf_sparse_attn.files import first_line

from .errors import EvalError

logger = logging.getLogger(__name__)

_TAP_IDS = itertools.count()


def _eager_function_for(module: nn.Module):
    """The model file's own ``eager_attention_forward`` (what the model falls back to for "eager")."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def drop_keys(attention_mask, key_positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
    """Attention mask that additionally hides key ``key_positions[b]`` from every query of row ``b`` (-1: none).

    Works on transformers' additive float masks (0 keep, dtype-min drop), boolean keep-masks and ``None``.
    """
    batch, _, q_len, _ = query.shape
    k_len = key.shape[-2]
    if key_positions.shape[0] != batch:
        raise RuntimeError(f"key mask for {key_positions.shape[0]} rows applied to an attention call of {batch} rows")
    drop = torch.zeros(batch, 1, 1, k_len, dtype=torch.bool, device=query.device)
    rows = torch.nonzero(key_positions >= 0).squeeze(-1)
    drop[rows, 0, 0, key_positions[rows]] = True
    if attention_mask is None:
        attention_mask = torch.zeros(batch, 1, q_len, k_len, dtype=query.dtype, device=query.device)
    if attention_mask.dtype == torch.bool:
        return attention_mask.expand(batch, -1, q_len, k_len) & ~drop
    full = attention_mask.expand(batch, attention_mask.shape[1], q_len, k_len)
    return full.masked_fill(drop, torch.finfo(full.dtype).min)


class AttentionTap:
    """Our attention function wrapped around the model's own; see the module docstring."""

    def __init__(self, model: nn.Module):
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

        self.model = model
        self.original = model.config._attn_implementation or "eager"
        self.name = f"eval_suite_tap_{next(_TAP_IDS)}"
        self.layer_of: dict[int, int] = {}
        self.attention_modules: list[nn.Module] = []
        self.layer_modules: list[nn.Module] | None = None
        self.layer_output_arity: int | None = None  # 0: the layer returns a tensor; k: a k-tuple
        self.calls = 0
        self._mask_layer: int | None = None
        self._mask_keys: torch.Tensor | None = None
        AttentionInterface.register(self.name, self._attention)
        AttentionMaskInterface.register(self.name, ALL_MASK_ATTENTION_FUNCTIONS.get(self.original, eager_mask))
        self._configs = {}
        for sub in [model, *model.modules()]:
            config = getattr(sub, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                self._configs[id(config)] = (config, config._attn_implementation_internal)
        for config, _ in self._configs.values():
            config._attn_implementation_internal = self.name

    def remove(self) -> None:
        """Give the model its own attention implementation back."""
        for config, previous in self._configs.values():
            config._attn_implementation_internal = previous

    # ------------------------------------------------------------------------------------------- the wrapper

    def _attention(self, module, query, key, value, attention_mask, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = ALL_ATTENTION_FUNCTIONS.get_interface(self.original, _eager_function_for(module))
        if inner is None:
            raise EvalError(f"{type(module).__name__} has no eager_attention_forward to fall back on; "
                            "load the checkpoint with an attention implementation that returns probabilities")
        layer = self.layer_of.get(id(module))
        if layer is None:
            layer = self.layer_of[id(module)] = len(self.layer_of)
            self.attention_modules.append(module)
        if self._mask_keys is not None and layer == self._mask_layer:
            attention_mask = drop_keys(attention_mask, self._mask_keys, query, key)
        self.calls += 1
        return inner(module, query, key, value, attention_mask, **kwargs)

    @contextmanager
    def mask_keys(self, layer: int, key_positions: torch.Tensor):
        """Within the block, row ``b`` of every forward pass cannot attend to key ``key_positions[b]`` in ``layer``."""
        self._mask_layer, self._mask_keys = layer, key_positions
        try:
            yield
        finally:
            self._mask_layer, self._mask_keys = None, None

    @contextmanager
    def start_at_layer(self, layer: int, hidden_states: torch.Tensor):
        """Within the block, layers ``< layer`` pass their input through and ``layer`` reads ``hidden_states``.

        Only valid when the caller's forward would compute exactly ``hidden_states`` at that point (it does: the
        suite passes the cached ``hidden_states[layer]`` of the same inputs). Needs :attr:`can_skip_layers`.
        """
        if not self.can_skip_layers:
            raise RuntimeError("layer skipping was not validated for this model")
        arity = self.layer_output_arity

        def passthrough(hidden, *args, **kwargs):
            return hidden if arity == 0 else (hidden,) + (None,) * (arity - 1)

        def replace_input(module, args, kwargs):
            if args:
                return (hidden_states,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden_states}

        skipped = self.layer_modules[:layer]
        for module in skipped:
            module.forward = passthrough
        handle = self.layer_modules[layer].register_forward_pre_hook(replace_input, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for module in skipped:
                del module.forward

    @property
    def can_skip_layers(self) -> bool:
        return self.layer_modules is not None

    # ------------------------------------------------------------------------------------------- probing

    def probe(self, model_inputs: dict, n_layers_expected: int) -> None:
        """Run tiny inputs through the model; raise EvalError unless attention comes back as probabilities."""
        self.calls = 0
        with torch.no_grad():
            out = self.model(**model_inputs, output_attentions=True, output_hidden_states=True)
        kind = type(self.model).__name__
        if self.calls == 0:
            raise EvalError(f"{kind} does not route its attention through transformers' AttentionInterface, so its "
                            "attention probabilities cannot be read; use BERT, RoBERTa, DistilBERT, ELECTRA, "
                            "XLM-RoBERTa, ModernBERT or another model with _supports_attention_backend=True")
        attentions = getattr(out, "attentions", None)
        if not attentions or any(a is None for a in attentions):
            raise EvalError(f"attention implementation {self.original!r} of {kind} returns no attention weights; load "
                            "the checkpoint with attn_impl='softmax' (hf_sparse_attn) or attn_implementation='eager'")
        if len(attentions) != n_layers_expected or len(self.attention_modules) != n_layers_expected:
            raise EvalError(f"{kind} made {len(self.attention_modules)} attention calls and returned {len(attentions)} "
                            f"attention tensors for {n_layers_expected} layers; eval_suite supports encoders with one "
                            "self-attention per layer")
        keep = model_inputs["attention_mask"].bool()
        for a in attentions:
            rows = a.sum(dim=-1)  # [B, H, Lq]
            row_ok = torch.isclose(rows, torch.ones_like(rows), atol=1e-4)[keep[:, None, :].expand_as(rows)]
            if a.dim() != 4 or (a < 0).any() or not bool(row_ok.all()) or (a.masked_select(~keep[:, None, None, :]) != 0).any():
                raise EvalError(f"attention implementation {self.original!r} of {kind} does not return probabilities "
                                "(rows must be non-negative, sum to 1, and give padding 0); load it with "
                                "attn_impl='softmax' (hf_sparse_attn) or attn_implementation='eager'")
        self._validate_layer_skipping(model_inputs, out, n_layers_expected)

    def _find_layer_modules(self, n_layers: int) -> list[nn.Module] | None:
        for candidate in self.model.modules():
            if isinstance(candidate, nn.ModuleList) and len(candidate) == n_layers:
                if all(any(m is self.attention_modules[i] for m in candidate[i].modules()) for i in range(n_layers)):
                    return list(candidate)
        return None

    def _validate_layer_skipping(self, model_inputs: dict, reference_out, n_layers: int) -> None:
        """Enable :meth:`start_at_layer` only if layer inputs are the reported hidden states and skipping reproduces logits."""
        layers = self._find_layer_modules(n_layers)
        hidden = reference_out.hidden_states
        if layers is None or hidden is None or len(hidden) != n_layers + 1:
            return
        seen_inputs, arities = {}, {}

        def record_input(index):
            def hook(module, args, kwargs):
                seen_inputs[index] = args[0] if args else kwargs.get("hidden_states")
            return hook

        def record_output(index):
            def hook(module, args, kwargs, output):
                arities[index] = 0 if torch.is_tensor(output) else (len(output) if isinstance(output, tuple) else -1)
            return hook

        handles = []
        for i, module in enumerate(layers):
            handles.append(module.register_forward_pre_hook(record_input(i), with_kwargs=True))
            handles.append(module.register_forward_hook(record_output(i), with_kwargs=True))
        try:
            with torch.no_grad():
                self.model(**model_inputs)
        finally:
            for h in handles:
                h.remove()
        if set(arities.values()) - {0} and not all(a > 0 and a == arities[0] for a in arities.values()):
            return
        for i in range(n_layers):
            x = seen_inputs.get(i)
            if not torch.is_tensor(x) or x.shape != hidden[i].shape or not torch.allclose(x, hidden[i], atol=1e-5):
                return
        self.layer_modules, self.layer_output_arity = layers, arities[0]
        try:
            with torch.no_grad():
                for layer in range(1, n_layers):
                    with self.start_at_layer(layer, hidden[layer]):
                        logits = self.model(**model_inputs).logits
                    if not torch.allclose(logits, reference_out.logits, atol=1e-4, rtol=1e-4):
                        raise ValueError("skipping changes the logits")
        except Exception as error:  # any surprise: measure without skipping (slower, same numbers)
            logger.info("layer skipping disabled for %s: %s", type(self.model).__name__, error)
            self.layer_modules, self.layer_output_arity = None, None


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class Classifier:
    """A loaded sequence classifier, its tokenizer and the facts the suite records about it."""

    model: nn.Module
    tokenizer: object
    tap: AttentionTap
    checkpoint: str
    attn_impl: str
    sparse_attention: dict | None
    n_layers: int
    n_heads: int
    num_labels: int
    max_length: int
    weights_fingerprint: str | None
    label_names: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)


def _checkpoint_folder(checkpoint: str) -> str | None:
    """The local folder holding the checkpoint's files (the Hub cache snapshot for a Hub id), if any."""
    if os.path.isdir(checkpoint):
        return checkpoint
    try:
        from transformers.utils import cached_file

        config_path = cached_file(checkpoint, "config.json", _raise_exceptions_for_missing_entries=False)
        return os.path.dirname(config_path) if config_path else None
    except Exception:  # noqa: BLE001 - offline or unknown id: no fingerprint, the load itself reports the problem
        return None


def _fingerprint(folder: str | None) -> str | None:
    if folder is None:
        return None
    from hf_sparse_attn.fingerprint import weights_fingerprint

    try:
        return weights_fingerprint(folder)
    except FileNotFoundError:
        logger.warning("no *.safetensors in %s: results.json gets no weights_fingerprint", folder)
        return None


def load_classifier(checkpoint: str, attn_impl: str | None = None, device: str | torch.device = "cpu") -> Classifier:
    """Load ``checkpoint`` (folder or Hub id) as an eval-ready classifier; EvalError (one line) if it cannot be one.

    ``attn_impl`` overrides the attention mapping, e.g. to evaluate a softmax-trained checkpoint under sparsemax;
    by default a checkpoint saved by hf_sparse_attn keeps its recorded mapping and a stock one gets softmax
    attention that returns probabilities.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import hf_sparse_attn
    from hf_sparse_attn.constants import CONFIG_KEY
    from hf_sparse_attn.limits import LimitError, check_encoder_config

    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except Exception as error:  # noqa: BLE001 - missing folder, bad JSON, unknown Hub id, offline ...
        raise EvalError(f"cannot read a transformers config from {checkpoint!r} ({first_line(error)}); pass a "
                        "checkpoint folder with config.json or a Hub model id") from None
    try:  # absurd sizes are refused before the model is allocated
        check_encoder_config(config, f"config.json of {checkpoint!r}", training=False)
    except LimitError as error:
        raise EvalError(str(error)) from None
    if type(config) not in AutoModelForSequenceClassification._model_mapping:
        raise EvalError(f"{checkpoint!r} is a {config.model_type!r} model, which has no sequence-classification "
                        "head in transformers; evaluate an encoder classifier (BERT, RoBERTa, ...)")
    recorded = getattr(config, CONFIG_KEY, None)
    load_kwargs = {"attn_impl": attn_impl or (None if recorded else "softmax")}
    try:
        loaded = AutoModelForSequenceClassification.from_pretrained(checkpoint, output_loading_info=True, **load_kwargs)
    except EvalError:
        raise
    except ValueError as error:  # SparseAttnError and transformers' own refusals are ValueErrors with a message
        raise EvalError(f"cannot load {checkpoint!r} as a sequence classifier: {first_line(error)}") from None
    except (OSError, TypeError) as error:
        raise EvalError(f"cannot load {checkpoint!r} as a sequence classifier ({first_line(error)}); check the "
                        "path or Hub id") from None
    except SafetensorError as error:  # a truncated or foreign weights file
        raise EvalError(f"the weights of {checkpoint!r} are not a readable safetensors file ({first_line(error)}); "
                        "download or save the model again") from None
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    missing = [k for k in info.get("missing_keys", []) if "sparse_attn" not in k]
    if missing:
        architectures = ", ".join(getattr(config, "architectures", None) or ["unknown"])
        raise EvalError(f"{checkpoint!r} ({architectures}) is not a trained sequence classifier: "
                        f"{len(missing)} weight(s) would be randomly initialised (e.g. {missing[0]}); fine-tune it first")
    model.eval().to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except Exception as error:  # noqa: BLE001
        raise EvalError(f"no usable tokenizer in {checkpoint!r} ({first_line(error)}); save the tokenizer next to "
                        "the model (tokenizer.save_pretrained)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise EvalError(f"the tokenizer of {checkpoint!r} is not a fast tokenizer; save a tokenizer.json with it")

    spec = hf_sparse_attn.get_spec(model)
    # num_attention_layers: models with attention outside the encoder layers (hf_sparse_attn's attention-pooling
    # classifier reports its pooling as one more layer, with one head)
    n_layers = int(getattr(config, "num_attention_layers", None) or getattr(config, "num_hidden_layers", None)
                   or getattr(config, "n_layers"))
    n_heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_heads"))
    limits = [tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        family = getattr(config, "base_model_type", config.model_type)  # "roberta" for a saved sparse_attn_roberta
        from transformers import RobertaConfig  # subclasses (the attention-pooling classifier) number positions alike

        offset = family in ("roberta", "xlm-roberta", "camembert") or isinstance(config, RobertaConfig)
        limits.append(int(positions) - (2 if offset else 0))
    id2label = getattr(config, "id2label", None) or {}
    tap = AttentionTap(model)
    probe = tokenizer(["a b c d", "a"], padding=True, return_tensors="pt").to(model.device)
    tap.probe(dict(probe), n_layers)
    return Classifier(
        model=model,
        tokenizer=tokenizer,
        tap=tap,
        checkpoint=str(checkpoint),
        attn_impl=str(spec) if spec is not None else "softmax",
        # null for a stock checkpoint evaluated as it is (its softmax is transformers' own)
        sparse_attention=spec.to_dict() if spec is not None and (recorded or attn_impl) else None,
        n_layers=n_layers,
        n_heads=n_heads,
        num_labels=int(config.num_labels),
        max_length=min(limits),
        weights_fingerprint=_fingerprint(_checkpoint_folder(str(checkpoint))),
        label_names=[str(id2label.get(i, i)) for i in range(int(config.num_labels))],
    )
