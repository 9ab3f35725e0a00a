"""SmoothGrad (Smilkov et al. 2017): the gradient norm of each input token, averaged over noisy copies of the input.

``smoothgrad[i] = mean_s ||d y_hat(x + e_s) / d x_i||_2`` with ``e_s ~ N(0, sigma^2)`` added to the content tokens'
word embeddings (special tokens and padding unchanged), ``sigma = --smoothgrad-noise x (max - min)`` of the
example's content embeddings (the paper's 10-20% of the input range), and ``y_hat`` the probability of the class
predicted for the clean input. The noise of example ``k`` is drawn from ``(--seed, k)`` alone, so an example gets the
same value in any batch and under any number of processes. All examples x samples run as one batch (chunked by the
suite's gradient-memory bound). Measured only when named (``--measures quick,smoothgrad``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cost import Cost, chunks, forward_flops
from ..errors import EvalError
from ..registry import Measure, declare


@dataclass
class SmoothGradParams:
    smoothgrad_samples: int = field(default=8, metadata={"help": "noisy copies averaged per example"})
    smoothgrad_noise: float = field(default=0.1, metadata={
        "help": "noise standard deviation as a share of the example's embedding range (max - min)"})

    def validate(self) -> None:
        if self.smoothgrad_samples < 1 or not self.smoothgrad_noise >= 0:
            raise EvalError(f"--smoothgrad-samples must be >= 1 and --smoothgrad-noise >= 0, got "
                            f"{self.smoothgrad_samples} and {self.smoothgrad_noise}")


def smoothgrad(ctx, settings, state):
    """[B, L] SmoothGrad importance of the batch of ``ctx`` (module docstring)."""
    import torch

    p = settings.params_of("smoothgrad")
    batch, base = ctx.batch, ctx.base
    x = base.embeddings.detach()
    B, L, d = x.shape
    content = batch.content_mask[..., None]
    noise = torch.zeros(B, p.smoothgrad_samples, L, d, dtype=x.dtype)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    for row, index in enumerate(state.indices):  # drawn over the example's own tokens: the same in any batch
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + int(index))
        noise[row, :, :lengths[row]] = torch.randn(p.smoothgrad_samples, lengths[row], d, generator=generator,
                                                   dtype=x.dtype)
    spread = torch.stack([x[b][batch.content_mask[b]].max() - x[b][batch.content_mask[b]].min()
                          if batch.content_mask[b].any() else x.new_zeros(()) for b in range(B)])
    noisy = x[:, None] + (noise.to(x.device) * (p.smoothgrad_noise * spread)[:, None, None, None]) * content[:, None]
    rows = torch.arange(B, device=x.device).repeat_interleave(p.smoothgrad_samples)
    noisy = noisy.reshape(B * p.smoothgrad_samples, L, d)
    other = {k: v for k, v in batch.model_inputs().items() if k != "input_ids"}
    total = torch.zeros(B, L, dtype=torch.float32, device=x.device)
    for sl in ctx.chunks(rows.numel(), L, grad=True):
        r = rows[sl]
        inputs = noisy[sl].clone().requires_grad_(True)
        with torch.enable_grad():
            logits = ctx.model(inputs_embeds=inputs, **{k: v[r] for k, v in other.items()}).logits
            probs = torch.softmax(logits.float(), dim=-1).gather(1, base.prediction[r, None]).squeeze(1)
            (grad,) = torch.autograd.grad(probs.sum(), inputs)
        total.index_add_(0, r, grad.norm(dim=-1).float())
    return total / p.smoothgrad_samples * batch.attention_mask


def smoothgrad_cost(shape, model, config, measures) -> Cost:
    samples = config.params_of("smoothgrad").smoothgrad_samples
    return Cost(3 * samples * forward_flops(model, [shape.length] * shape.size),
                3 * chunks(shape.size * samples, shape.length, config.max_grad_tokens))


declare(Measure("smoothgrad", "input", None, "||d y_hat / d x_i|| averaged over noisy copies of the input (SmoothGrad)",
                order=35, compute=smoothgrad, cost=smoothgrad_cost, params=SmoothGradParams, all_positions=True))
