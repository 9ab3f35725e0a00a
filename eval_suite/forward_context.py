"""The batch engine every measure runs on: one batch under one classifier (:class:`ForwardContext`).

Shared work is done once per batch: one forward pass with its autograd graph serves the attention and the hidden
states, and one backward pass gives the gradient w.r.t. the inputs *and* every layer's representations
(:attr:`ForwardContext.gradients`). Extra forward passes (removal variants, masked keys) run in chunks bounded by
``max_tokens`` and are remembered per distinct variant (:meth:`ForwardContext.kept_probability`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .batching import TokenBatch, length_sorted_chunks
from .settings import EXTRA_PASS_TOKENS, GRAPH_PASS_TOKENS

__all__ = ["BasePass", "ForwardContext", "attention_rows"]


@dataclass
class BasePass:
    """The forward pass of a batch with its graph kept (until :meth:`ForwardContext.release`)."""

    embeddings: torch.Tensor  # [B, L, d] leaf, requires grad
    logits: torch.Tensor  # [B, C] detached
    prediction: torch.Tensor  # [B]
    target: torch.Tensor  # [B] y_hat, with graph
    attentions: list  # n x [B, H, L, L] detached
    hidden_states: list  # n + 1 x [B, L, d] with graph


class ForwardContext:
    """One batch under one classifier: the base pass, its gradients, and chunked extra forward passes.

    ``max_tokens`` bounds rows x length of every extra pass (memory); ``max_grad_tokens`` the same for passes
    that keep a graph.
    """

    def __init__(self, classifier, batch: TokenBatch, *, max_tokens: int = EXTRA_PASS_TOKENS,
                 max_grad_tokens: int = GRAPH_PASS_TOKENS):
        self.classifier = classifier
        self.model = classifier.model
        self.batch = batch.to(classifier.device)
        self.max_tokens = max_tokens
        self.max_grad_tokens = max_grad_tokens
        self._graph_alive = True
        # p(y_hat | example row with exactly these tokens kept): leave-one-out and faithfulness delete tokens, and a
        # comprehensiveness variant that removes one token is a leave-one-out variant; it runs once.
        self._kept_probability: dict[tuple[int, bytes], torch.Tensor] = {}
        self.on_progress = None  # called with the share of the current stage done (0..1), when set

    def tick(self, share: float) -> None:
        """Report that ``share`` of the current stage's work is done (for progress bars)."""
        if self.on_progress is not None:
            self.on_progress(min(1.0, max(0.0, float(share))))

    # ------------------------------------------------------------------------------------------- base pass

    @cached_property
    def base(self) -> BasePass:
        batch = self.batch
        embeddings = self.classifier.word_embeddings(batch.input_ids).detach().requires_grad_(True)
        inputs = {k: v for k, v in batch.model_inputs().items() if k != "input_ids"}
        with torch.enable_grad():
            out = self.model(inputs_embeds=embeddings, **inputs, output_attentions=True, output_hidden_states=True)
            probs = torch.softmax(out.logits.float(), dim=-1)
            prediction = probs.argmax(dim=-1)
            target = probs.gather(1, prediction[:, None]).squeeze(1)
        return BasePass(
            embeddings=embeddings,
            logits=out.logits.detach(),
            prediction=prediction.detach(),
            target=target,
            attentions=[a.detach() for a in out.attentions],
            hidden_states=list(out.hidden_states),
        )

    @cached_property
    def gradients(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """d y_hat / d x and d y_hat / d h^(l) for every layer l, from one backward pass."""
        self._check_graph()
        base = self.base
        n_layers = len(base.attentions)
        wrt = [base.embeddings, *base.hidden_states[:n_layers]]
        grads = torch.autograd.grad(base.target.sum(), wrt, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g.detach() for g, w in zip(grads, wrt)]
        return grads[0], grads[1:]

    def release(self) -> None:
        """Free the base pass's graph (attributions that need it must have run)."""
        base = self.base
        base.target = base.target.detach()
        base.hidden_states = [h.detach() for h in base.hidden_states]
        self._graph_alive = False

    def _check_graph(self):
        if not self._graph_alive:
            raise RuntimeError("the base pass's graph was released; compute gradient attributions before release()")

    # ------------------------------------------------------------------------------------------- extra passes

    def chunks(self, n_rows: int, length: int, grad: bool = False):
        budget = self.max_grad_tokens if grad else self.max_tokens
        step = max(1, budget // max(1, length))
        for start in range(0, n_rows, step):
            yield slice(start, min(n_rows, start + step))

    @torch.inference_mode()
    def target_probability(self, variants: TokenBatch, rows: torch.Tensor) -> torch.Tensor:
        """p(y_hat of example ``rows[v]`` | variant v) for every variant.

        Variants run shortest first in chunks of at most ``max_tokens`` tokens, each chunk cut to its own longest
        variant, so short variants (sufficiency keeps a few tokens) are not padded to the longest one.
        """
        out = torch.empty(variants.size, dtype=torch.float32, device=self.classifier.device)
        targets = self.base.prediction[rows]
        lengths = variants.attention_mask.sum(dim=1)
        order = torch.sort(lengths, stable=True).indices
        sorted_lengths = lengths[order].tolist()
        for chunk in length_sorted_chunks(sorted_lengths, self.max_tokens):
            pick = order[chunk]
            length = max(1, sorted_lengths[chunk.stop - 1])
            sub = TokenBatch(variants.input_ids[pick, :length], variants.attention_mask[pick, :length],
                             variants.content_mask[pick, :length],
                             None if variants.token_type_ids is None else variants.token_type_ids[pick, :length])
            probs = torch.softmax(self.model(**sub.model_inputs()).logits.float(), dim=-1)
            out[pick] = probs.gather(1, targets[pick, None]).squeeze(1)
            self.tick(chunk.stop / len(sorted_lengths))
        return out

    def kept_probability(self, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """p(y_hat of example ``rows[v]`` | its tokens where ``keep[v]``) for every v, each distinct (row, keep)
        computed once per batch and remembered (leave-one-out and faithfulness share variants)."""
        keep = keep & self.batch.attention_mask[rows].bool()
        keys = [(int(r), k.tobytes()) for r, k in zip(rows.tolist(), keep.cpu().numpy())]
        first: dict[tuple[int, bytes], int] = {}
        for v, key in enumerate(keys):
            if key not in self._kept_probability:
                first.setdefault(key, v)
        if first:
            pick = torch.tensor(list(first.values()), dtype=torch.long, device=rows.device)
            probs = self.target_probability(self.batch.keep_tokens(rows[pick], keep[pick]), rows[pick])
            self._kept_probability.update(zip(first, probs))
        if not keys:
            return torch.empty(0, dtype=torch.float32, device=self.classifier.device)
        return torch.stack([self._kept_probability[key] for key in keys])

    def content_variants(self, measured: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(example row, position) for every content token of every example (or every position of ``measured``
        [B, L] among them), example-major."""
        mask = self.batch.content_mask if measured is None else self.batch.content_mask & measured
        rows, positions = torch.nonzero(mask, as_tuple=True)
        return rows, positions


def attention_rows(attentions: list, attention_mask: torch.Tensor, query: str = "cls") -> torch.Tensor:
    """[B, n_layers, H, L]: per layer and head, the attention of the classification token (``query="cls"``,
    position 0) over key positions, or the mean over all non-padding queries (``query="mean"``)."""
    stacked = torch.stack(attentions, dim=1)  # [B, n, H, Lq, Lk]
    if query == "cls":
        return stacked[:, :, :, 0, :]
    if query == "mean":
        weights = attention_mask.to(stacked.dtype)[:, None, None, :, None]
        return (stacked * weights).sum(dim=3) / weights.sum(dim=3)
    raise ValueError(f"attention query must be 'cls' or 'mean', got {query!r}")
