"""The stock ``transformers.Trainer`` with sparse attention: attention statistics in its logs, and learned alphas
with their own learning rate.

    trainer = Trainer(model=model, args=args, ..., callbacks=[SparseAttentionCallback()],
                      optimizers=(sparse_attention_optimizer(model, args, alpha_lr=1e-2), None))
    trainer.train()   # every evaluation also logs eval_attention/layer{l}/{sparsity,support_size,alpha}

With every evaluation the callback logs, per layer, the means over its heads of ``sparsity``, ``support_size`` and
``alpha``, the means over all heads (``eval_attention/sparsity``, ``eval_attention/support_size``) and what they
rest on (``eval_attention/n_examples``, ``eval_attention/n_query_rows``): 3 x layers + 4 values (22 for MiniLM's 6
layers). ``SparseAttentionCallback(per_head=True)`` adds ``eval_attention/layer{l}_head{h}/{sparsity,support_size,
alpha}`` for every head. A ``TrainerCallback`` hears of an evaluation only after the Trainer has logged its metrics,
so the callback logs its own record through the Trainer's ``log`` (same step, same ``eval_`` prefix), which reaches
every ``report_to`` integration (TensorBoard, W&B, MLflow, ...) and ``trainer.state.log_history``
(trainer_state.json); the statistics are also added to the metrics ``trainer.evaluate()`` returns.

Definitions are those of the training logs (``hf_sparse_attn.training.metrics``): for every non-padded query row,
``sparsity`` is the share of the example's non-padded keys with exactly zero attention and ``support_size`` the
number with non-zero attention, averaged over every such row of the evaluation; ``alpha`` is
``attention_alphas(model)`` (1 for softmax). The attention probabilities are read with forward hooks on the
attention modules while the model is in eval mode, so evaluation does not have to ask for ``output_attentions``.

The stock Trainer gives every parameter one learning rate, at which a learned alpha (``entmax_learned``) barely
moves in a fine-tuning run; :func:`sparse_attention_optimizer` is the command line's optimizer (AdamW: weights
decayed, biases, norms and alphas not, alphas at ``alpha_lr``), for the Trainer's ``optimizers=`` argument. The
Trainer then builds its learning-rate schedule over it as usual, which scales every group alike.
"""

from __future__ import annotations

import logging
import sys

import torch
from transformers import TrainerCallback

from .sparse_attn_modeling import SparseAttnError, attention_alphas, attention_modules
from .training.metrics import ROW_COUNT, attention_row_statistics, summarise_attention

logger = logging.getLogger(__name__)

LOG_GROUP = "attention"
DEFAULT_ALPHA_LR = 1e-2  # the command line's --alpha-lr


def _unwrap(model):
    while hasattr(model, "module"):  # DistributedDataParallel and friends
        model = model.module
    return model


def _first_tensor(value):
    return value if torch.is_tensor(value) else None


def calling_trainer():
    """The ``transformers.Trainer`` whose event is being handled, or None: the ``self`` of the nearest Trainer
    method on the call stack. Written by hand because transformers hands a callback its model, optimizer and data
    loaders but no reference to the Trainer, whose ``log`` a callback needs to add a record to the logs."""
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def sparse_attention_optimizer(model, args, alpha_lr: float = DEFAULT_ALPHA_LR) -> torch.optim.Optimizer:
    """AdamW for ``Trainer(..., optimizers=(sparse_attention_optimizer(model, args), None))``: the learning rate,
    weight decay, betas and epsilon of the ``TrainingArguments`` ``args``, no weight decay on biases, norms and
    learned alphas, and the alphas (``*.sparse_attn.alpha_logit``) at ``alpha_lr``."""
    from .training.loop import build_optimizer

    optimizer = build_optimizer(model, args.learning_rate, alpha_lr, args.weight_decay)
    for group in optimizer.param_groups:
        group["betas"], group["eps"] = (args.adam_beta1, args.adam_beta2), args.adam_epsilon
    optimizer.defaults.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    return optimizer


class SparseAttentionCallback(TrainerCallback):
    """Log per-layer means (``per_head=True``: every head too) of ``sparsity``, ``support_size`` and ``alpha``, and
    how many query rows and examples they rest on, with every evaluation; see the module docstring.

    ``Trainer(..., callbacks=[SparseAttentionCallback()])`` is enough; ``trainer.add_callback(
    SparseAttentionCallback(trainer))`` works too (pass the trainer when adding the callback after the Trainer
    is made, so that it can read the model before the first evaluation).
    """

    def __init__(self, trainer=None, *, per_head: bool = False):
        self.trainer = trainer
        self.per_head = per_head
        self.model = None
        self.modules = []
        self._handles = []
        self._sums: torch.Tensor | None = None  # [n_layers, n_heads, N_STATS]
        self._examples = 0
        self._mask: torch.Tensor | None = None
        self._warned = False
        if trainer is not None:
            self._attach(trainer.model)

    def _attach(self, model) -> None:
        """Hook the attention modules of ``model`` (once per model)."""
        model = _unwrap(model) if model is not None else None
        if model is None or model is self.model:
            return
        self.remove()
        modules = attention_modules(model)
        if not modules:
            raise SparseAttnError(f"{type(model).__name__} computes no attention through transformers' "
                                  "AttentionInterface, so its attention cannot be read")
        self.model, self.modules = model, modules
        self._handles = [model.register_forward_pre_hook(self._read_mask, with_kwargs=True)]
        for index, module in enumerate(modules):
            self._handles.append(module.register_forward_hook(self._make_layer_hook(index)))

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._attach(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._attach(model)

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

    def _records_to_logs(self, records: list[dict], group: str) -> dict:
        logs = {}
        n_layers = len(self.modules)
        for layer in range(n_layers):
            heads = [r for r in records if r["layer"] == layer]
            for stat in ("sparsity", "support_size", "alpha"):
                logs[f"{group}/layer{layer}/{stat}"] = sum(r[stat] for r in heads) / len(heads)
        if self.per_head:
            for record in records:
                name = f"{group}/layer{record['layer']}_head{record['head']}"
                for stat in ("sparsity", "support_size", "alpha"):
                    logs[f"{name}/{stat}"] = record[stat]
        logs[f"{group}/sparsity"] = sum(r["sparsity"] for r in records) / len(records)
        logs[f"{group}/support_size"] = sum(r["support_size"] for r in records) / len(records)
        return logs

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics if metrics is not None else {}
        prefix = next((key[: -len("_runtime")] for key in metrics if key.endswith("_runtime")), "eval")
        sums, examples = self._sums, self._examples
        self._reset()
        if sums is None:
            return
        trainer = self.trainer or calling_trainer()
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
            examples = int(accelerator.reduce(torch.tensor(examples, device=accelerator.device), "sum"))
        self._sums = sums
        records = self.statistics()
        self._sums = None
        group = f"{prefix}_{LOG_GROUP}"
        logs = {f"{group}/n_examples": examples, f"{group}/n_query_rows": int(sums[0, 0, ROW_COUNT]),
                **self._records_to_logs(records, group)}
        metrics.update(logs)
        if trainer is not None:
            trainer.log(dict(logs))
        elif state.log_history:  # no Trainer to log through: at least the evaluation's own record holds them
            state.log_history[-1].update(logs)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._reset()  # predict() is not an evaluation: what it saw must not leak into the next one

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
