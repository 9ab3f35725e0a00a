"""Any captum attribution of the input embeddings as an importance method: ``--measures captum:<Class>``.

``captum:IntegratedGradients``, ``captum:DeepLift``, ``captum:GradientShap``, ``captum:Occlusion``,
``captum:FeatureAblation``, ``captum:Saliency``, ``captum:NoiseTunnel(Saliency)`` ... : any primary attribution
class of ``captum.attr`` (and ``NoiseTunnel`` around one), run on the word embeddings of the batch (the encoder adds
position and type embeddings itself), with the probability of the predicted class as target. A token's importance
is ``|sum_d a_id|`` over its embedding dimensions, compared with attention like every input method.

Arguments are chosen from what the class's ``attribute`` accepts: ``baselines`` (the [PAD] embedding at content
tokens, special tokens unchanged, as the suite's integrated gradients; a method that draws baselines from a set,
GradientShap, gets the [PAD] embedding at every position), ``n_steps``, ``n_samples`` / ``nt_samples`` and
``stdevs`` (``--captum-*``), a one-token ``sliding_window_shapes`` or ``feature_mask`` (occlusion and ablation
replace one token at a time), and the suite's memory bounds as ``internal_batch_size`` /
``perturbations_per_eval``. Where captum reports a convergence delta (``sum_i a_i - (f(x) - f(x'))``) it is
recorded per example (row ``<name>.convergence_delta``, its absolute value summarised in results.json). Random
draws are seeded by ``--seed`` and the batch's first example, so a run gives the same numbers twice and under
several processes.

captum is an optional dependency (``pip install hf-sparse-attn[captum]``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass, field

from ..cost import Cost, chunks, forward_flops
from ..errors import EvalError
from ..registry import Computed, Diagnostics, Measure, MeasureFamily, declare

PREFIX = "captum"
_NAME = re.compile(r"^captum:([A-Za-z_][A-Za-z0-9_]*)(?:\(([A-Za-z_][A-Za-z0-9_]*)\))?$")


@dataclass
class CaptumParams:
    captum_steps: int = field(default=16, metadata={"help": "n_steps of path methods (IntegratedGradients)"})
    captum_samples: int = field(default=8, metadata={
        "help": "n_samples / nt_samples of sampling methods (GradientShap, NoiseTunnel)"})
    captum_noise: float = field(default=0.1, metadata={
        "help": "stdevs of GradientShap and NoiseTunnel, as a share of the batch's embedding standard deviation"})

    def validate(self) -> None:
        if self.captum_steps < 1 or self.captum_samples < 1 or not self.captum_noise >= 0:
            raise EvalError(f"--captum-steps and --captum-samples must be >= 1 and --captum-noise >= 0, got "
                            f"{self.captum_steps}, {self.captum_samples} and {self.captum_noise}")


def _captum_classes(name: str) -> tuple:
    """(attribution class, inner class or None) of ``captum:Class`` / ``captum:NoiseTunnel(Inner)``; EvalError when
    captum is missing or the name is not one of its primary attributions."""
    match = _NAME.match(name)
    if match is None:
        raise EvalError(f"--measures: {name!r} is not captum:<Class> or captum:NoiseTunnel(<Class>)")
    try:
        import captum.attr as attr
    except ImportError:
        raise EvalError(f"--measures {name}: captum is not installed; pip install 'hf-sparse-attn[captum]' (or "
                        "pip install captum)") from None
    found = []
    for class_name in match.groups():
        if class_name is None:
            found.append(None)
            continue
        cls = getattr(attr, class_name, None)
        primary = isinstance(cls, type) and issubclass(cls, attr.Attribution) and not issubclass(
            cls, (attr.LayerAttribution, attr.NeuronAttribution))
        if not primary:
            raise EvalError(f"--measures {name}: {class_name} is not a primary attribution of captum.attr; use one "
                            "such as IntegratedGradients, DeepLift, GradientShap, Occlusion, FeatureAblation, Saliency")
        found.append(cls)
    outer, inner = found
    if (outer is attr.NoiseTunnel) != (inner is not None):
        raise EvalError(f"--measures {name}: only NoiseTunnel wraps another method, as captum:NoiseTunnel(Saliency)")
    return outer, inner


def _accepts(cls) -> set:
    return set(inspect.signature(cls.attribute).parameters)


def _probability_module(model):
    import torch

    class Probability(torch.nn.Module):
        """The model as captum calls it: embeddings (+ mask, token types) -> class probabilities."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, embeddings, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            logits = self.model(inputs_embeds=embeddings, attention_mask=attention_mask, **extra).logits
            return torch.softmax(logits.float(), dim=-1)

    return Probability()


def _arguments(cls, ctx, settings, x, baseline, noise: float) -> dict:
    """The keyword arguments of ``cls.attribute`` this adapter fills (module docstring)."""
    import torch

    p, accepts = settings.params_of(PREFIX + ":*"), _accepts(cls)
    B, L, d = x.shape
    kwargs = {}
    if "n_samples" in accepts:  # draws baselines from a set: one shared baseline
        pad = baseline[ctx.batch.content_mask].mean(dim=0) if ctx.batch.content_mask.any() else baseline[0, 0]
        kwargs.update(baselines=pad.expand(1, L, d).contiguous(), n_samples=p.captum_samples)
    elif "baselines" in accepts:
        kwargs["baselines"] = baseline
    if "stdevs" in accepts:
        kwargs["stdevs"] = noise
    if "n_steps" in accepts:
        kwargs["n_steps"] = p.captum_steps
    if "internal_batch_size" in accepts:
        kwargs["internal_batch_size"] = max(1, settings.max_grad_tokens // max(1, L))
    if "sliding_window_shapes" in accepts:
        kwargs.update(sliding_window_shapes=(1, d), strides=(1, d))
    elif "feature_mask" in accepts:
        kwargs["feature_mask"] = torch.arange(L, device=x.device)[None, :, None].expand(B, L, d)
    if "perturbations_per_eval" in accepts:
        kwargs["perturbations_per_eval"] = max(1, settings.max_tokens // max(1, B * L))
    return kwargs


def _attribute(name: str, ctx, settings, state):
    """(importance [B, L], convergence delta [B] or None) of captum's ``name`` on the batch."""
    import torch

    from ..attribution import IntegratedGradients

    outer, inner = _captum_classes(name)
    batch = ctx.batch
    x = ctx.base.embeddings.detach()
    baseline = IntegratedGradients(baseline="pad").baseline_embeddings(ctx)
    noise = settings.params_of(PREFIX + ":*").captum_noise * float(x[batch.content_mask].std()) \
        if batch.content_mask.any() else 0.0
    forward = _probability_module(ctx.model)
    method = outer(inner(forward)) if inner is not None else outer(forward)
    kwargs = _arguments(inner or outer, ctx, settings, x, baseline, noise)
    if inner is not None:
        kwargs.update(nt_type="smoothgrad", nt_samples=settings.params_of(PREFIX + ":*").captum_samples,
                      stdevs=noise, nt_samples_batch_size=max(1, settings.max_grad_tokens // max(1, batch.length)))
    delta_wanted = method.has_convergence_delta()
    other = batch.model_inputs()
    extra = (batch.attention_mask, other.get("token_type_ids"))
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), warnings.catch_warnings():
        # DeepLift announces the hooks it sets on the model's activations (and removes after the call)
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        torch.manual_seed(settings.seed * 1_000_003 + int(state.indices[0]))
        out = method.attribute(x.clone().requires_grad_(True), target=ctx.base.prediction,
                               additional_forward_args=extra, **kwargs,
                               **({"return_convergence_delta": True} if delta_wanted else {}))
    attributions, delta = out if delta_wanted else (out, None)
    importance = attributions.detach().sum(dim=-1).abs() * batch.attention_mask
    if delta is not None:
        delta = delta.detach().reshape(batch.size, -1).abs().mean(dim=1).float()
    return importance.float(), delta


def _passes(cls, settings) -> float:
    """Forward-pass equivalents per example of one call (a backward = 2) for the cost model; the calibration on
    the first batch corrects the rest. Perturbation methods add one pass per token (counted by the caller)."""
    p, accepts = settings.params_of(PREFIX + ":*"), _accepts(cls)
    if "n_steps" in accepts:
        return 3 * p.captum_steps + 1
    if "n_samples" in accepts:
        return 3 * p.captum_samples
    return 3.0


def _make(name: str) -> Measure:
    outer, inner = _captum_classes(name)
    per_token = {"sliding_window_shapes", "feature_mask"} & _accepts(inner or outer)

    def cost(shape, model, config, measures) -> Cost:
        if per_token:  # one forward pass per token of every example
            lengths = [t for t in shape.lengths for _ in range(t)]
            return Cost(forward_flops(model, lengths), chunks(len(lengths), shape.length, config.max_tokens))
        passes = _passes(inner or outer, config) * (config.params_of(name).captum_samples if inner else 1)
        return Cost(passes * forward_flops(model, shape.lengths),
                    passes * chunks(shape.size, shape.length, config.max_grad_tokens))

    def compute(ctx, settings, state):
        importance, delta = _attribute(name, ctx, settings, state)
        return importance if delta is None else Computed(importance, {"convergence_delta": delta})

    import torch

    probe = torch.nn.Identity()  # construction only, to ask whether the method reports a convergence delta
    method = outer(inner(probe)) if inner is not None else outer(probe)
    diagnostics = None
    if method.has_convergence_delta():
        diagnostics = Diagnostics(rows=("convergence_delta",), summarise=_summarise_delta,
                                  text=lambda block: f"{name}: median |convergence delta| "
                                                     f"{_number(block['convergence_delta']['median'])}",
                                  card=lambda block: (f"{name}: median convergence delta",
                                                      _number(block["convergence_delta"]["median"]),
                                                      "captum's |sum of attributions - (f(x) - f(baseline))|, "
                                                      "in probability units"))
    return Measure(name, "input", None, f"captum's {name.split(':', 1)[1]} of the input embeddings", order=1000,
                   compute=compute, cost=cost, diagnostics=diagnostics)


def _number(value) -> str:
    return "undefined" if value is None else f"{value:.3g}"


def _summarise_delta(rows: dict) -> dict:
    from ..statistics import percentiles

    return {"convergence_delta": percentiles(rows["convergence_delta"]),
            "definition": "|sum of attributions - (f(x) - f(baseline))| per example (captum's convergence delta; "
                          "mean over samples for sampling methods), f the predicted class's probability"}


declare(MeasureFamily(PREFIX, _make, examples=("captum:IntegratedGradients", "captum:NoiseTunnel(Saliency)"),
                      params=CaptumParams))
