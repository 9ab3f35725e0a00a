"""The stock ``transformers.Trainer`` with sparse attention: per layer x head attention statistics in its logs.

    trainer = Trainer(model=model, args=TrainingArguments(..., eval_strategy="steps", report_to="tensorboard"), ...)
    trainer.add_callback(SparseAttentionCallback(trainer))
    trainer.train()   # every evaluation also logs eval_attention/layer{l}_head{h}/{sparsity,support_size,alpha}

The callback needs the trainer itself: a ``TrainerCallback`` is told about evaluations only after the Trainer has
logged their metrics, so it logs its own record through ``trainer.log`` (same step, the same ``eval_`` prefix),
which reaches every ``report_to`` integration (TensorBoard, W&B, MLflow, ...) and ``trainer.state.log_history``
(trainer_state.json). The statistics are also added to the metrics ``trainer.evaluate()`` returns.

Definitions are those of the training logs (``hf_sparse_attn.training.metrics``): for every non-padded query row,
``sparsity`` is the share of the example's non-padded keys with exactly zero attention and ``support_size`` the
number with non-zero attention, averaged over every such row of the evaluation; ``alpha`` is
``attention_alphas(model)`` (1 for softmax). The attention probabilities are read with forward hooks on the
attention modules while the model is in eval mode, so evaluation does not have to ask for ``output_attentions``.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from .sparse_attn_modeling import SparseAttnError, attention_alphas, attention_modules
from .training.metrics import ROW_COUNT, attention_row_statistics, summarise_attention

logger = logging.getLogger(__name__)

LOG_GROUP = "attention"


def _unwrap(model):
    while hasattr(model, "module"):  # DistributedDataParallel and friends
        model = model.module
    return model


def _first_tensor(value):
    return value if torch.is_tensor(value) else None


class SparseAttentionCallback(TrainerCallback):
    """Log per layer x head ``sparsity``, ``support_size`` and ``alpha`` (and their means, and how many query rows
    and examples they rest on) with every evaluation of ``trainer``; see the module docstring."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.model = _unwrap(trainer.model)
        self.modules = attention_modules(self.model)
        if not self.modules:
            raise SparseAttnError(f"{type(self.model).__name__} computes no attention through transformers' "
                                  "AttentionInterface, so its attention cannot be read")
        self._sums: torch.Tensor | None = None  # [n_layers, n_heads, N_STATS]
        self._examples = 0
        self._mask: torch.Tensor | None = None
        self._warned = False
        self._handles = [self.model.register_forward_pre_hook(self._read_mask, with_kwargs=True)]
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._make_layer_hook(index)))

    # ------------------------------------------------------------------------------------------- collecting

    def _read_mask(self, model, args, kwargs):
        if model.training:
            return
        mask = kwargs.get("attention_mask")
        reference = _first_tensor(kwargs.get("input_ids")) if kwargs.get("input_ids") is not None else (
            _first_tensor(args[0]) if args else None)
        if mask is None and reference is None and kwargs.get("inputs_embeds") is not None:
            reference = kwargs["inputs_embeds"][..., 0]
        if mask is None and reference is not None:
            mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        self._mask = mask
        if mask is not None:
            self._examples += int(mask.shape[0])

    def _make_layer_hook(self, index: int):
        def hook(module, args, output):
            if module.training or self._mask is None:
                return
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not torch.is_tensor(probs) or probs.dim() != 4:
                if not self._warned:
                    logger.warning("%s returns no attention probabilities (attention implementation %r); load the "
                                   "model with attn_impl=... or attn_implementation='eager' to log attention "
                                   "statistics", type(module).__name__, self.model.config._attn_implementation)
                    self._warned = True
                return
            stats = attention_row_statistics([probs.detach()], self._mask).sum(dim=0)[0]  # [n_heads, N_STATS]
            if self._sums is None:
                self._sums = torch.zeros(len(self.modules), *stats.shape, dtype=torch.float64)
            self._sums[index] += stats.cpu()

        return hook

    # ------------------------------------------------------------------------------------------- reporting

    def statistics(self) -> list[dict]:
        """The per layer x head records of the evaluation collected so far (docs/CONTRACTS.md section 3)."""
        try:
            alphas = attention_alphas(self.model)
        except SparseAttnError:  # a stock model: softmax everywhere
            alphas = None if self._sums is None else torch.ones(self._sums.shape[:2])
        return summarise_attention(self._sums, alphas)

    def _reset(self) -> None:
        self._sums, self._examples, self._mask = None, 0, None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics if metrics is not None else {}
        prefix = next((key[: -len("_runtime")] for key in metrics if key.endswith("_runtime")), "eval")
        sums, examples = self._sums, self._examples
        self._reset()
        if sums is None:
            return
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
            examples = int(accelerator.reduce(torch.tensor(examples, device=accelerator.device), "sum"))
        self._sums = sums
        records = self.statistics()
        self._sums = None
        group = f"{prefix}_{LOG_GROUP}"
        logs = {f"{group}/n_examples": examples, f"{group}/n_query_rows": int(sums[0, 0, ROW_COUNT])}
        for record in records:
            name = f"{group}/layer{record['layer']}_head{record['head']}"
            logs[f"{name}/sparsity"] = record["sparsity"]
            logs[f"{name}/support_size"] = record["support_size"]
            logs[f"{name}/alpha"] = record["alpha"]
        logs[f"{group}/sparsity"] = sum(r["sparsity"] for r in records) / len(records)
        logs[f"{group}/support_size"] = sum(r["support_size"] for r in records) / len(records)
        metrics.update(logs)
        self.trainer.log(dict(logs))

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._reset()  # predict() is not an evaluation: what it saw must not leak into the next one

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
