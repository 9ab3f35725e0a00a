"""SparseAttentionCallback on the stock transformers.Trainer: per layer x head statistics in every logging channel."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import hf_sparse_attn
from hf_sparse_attn.integrations import SparseAttentionCallback
from hf_sparse_attn.training.metrics import attention_row_statistics, summarise_attention

from tests.helpers.tiny_models import random_batch, tiny_config


class Examples(torch.utils.data.Dataset):
    def __init__(self, n=12, seed=0):
        ids, mask = random_batch(batch=n, length=9, seed=seed, pad_last=[(i * 2) % 7 for i in range(n)])
        self.items = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(i % 3)} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Recorder(TrainerCallback):
    """Stands for a report_to integration: those are on_log callbacks too."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def make_trainer(tmp_path, attn_impl="entmax_learned", per_head=True, add_after=False, optimizers=None, **kwargs):
    """A tiny Trainer with a Recorder standing for report_to (the Trainer puts those before user callbacks) and the
    callback given the transformers way, ``Trainer(..., callbacks=[...])``, or added afterwards."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"), attn_impl=attn_impl, **kwargs)
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.query.weight.mul_(20.0)  # peaky: zeros on real keys
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
                             per_device_eval_batch_size=5, eval_strategy="steps", eval_steps=2, logging_steps=2,
                             save_steps=4, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    recorder = Recorder()
    callbacks = [recorder] if add_after else [recorder, SparseAttentionCallback(per_head=per_head)]
    trainer = Trainer(model=model, args=args, train_dataset=Examples(), eval_dataset=Examples(n=7, seed=1),
                      callbacks=callbacks, optimizers=optimizers(model, args) if optimizers else (None, None))
    if add_after:
        trainer.add_callback(SparseAttentionCallback(trainer, per_head=per_head))
    return trainer, recorder


@pytest.mark.slow
def test_trainer_logs_per_layer_head_sparsity_support_and_alpha(tmp_path):
    trainer, recorder = make_trainer(tmp_path)
    trainer.train()
    evaluations = [log for log in recorder.logs if "eval_attention/sparsity" in log]
    assert len(evaluations) == 2  # steps 2 and 4
    log = evaluations[-1]
    for layer in range(2):
        for head in range(4):
            for stat in ("sparsity", "support_size", "alpha"):
                assert isinstance(log[f"eval_attention/layer{layer}_head{head}/{stat}"], float)
    assert log["eval_attention/n_examples"] == 7  # the eval set only: training forwards are not counted
    # the same numbers as the training logs' definition, computed on the trained model directly
    model = trainer.model.eval()
    batch = Examples(n=7, seed=1).items
    ids = torch.stack([b["input_ids"] for b in batch])
    mask = torch.stack([b["attention_mask"] for b in batch])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    expected = summarise_attention(attention_row_statistics(out.attentions, mask), hf_sparse_attn.attention_alphas(model))
    for record in expected:
        name = f"eval_attention/layer{record['layer']}_head{record['head']}"
        assert log[f"{name}/sparsity"] == pytest.approx(record["sparsity"], abs=1e-12)
        assert log[f"{name}/support_size"] == pytest.approx(record["support_size"], abs=1e-12)
        assert log[f"{name}/alpha"] == pytest.approx(record["alpha"], abs=1e-7)
    assert log["eval_attention/n_query_rows"] == int(mask.sum())
    assert any(log[f"eval_attention/layer1_head{h}/sparsity"] > 0 for h in range(4))
    # trainer_state.json (the JSON record every checkpoint keeps) has them too
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert any("eval_attention/layer1_head3/alpha" in entry for entry in state["log_history"])
    # and evaluate() returns them
    metrics = trainer.evaluate()
    assert metrics["eval_attention/sparsity"] == pytest.approx(log["eval_attention/sparsity"], abs=1e-12)


@pytest.mark.slow
def test_partial_layers_and_predict_do_not_leak(tmp_path):
    trainer, recorder = make_trainer(tmp_path, attn_impl="sparsemax", add_after=True, attn_layers=[-1])
    trainer.predict(Examples(n=3, seed=2))
    metrics = trainer.evaluate()
    assert metrics["eval_attention/n_examples"] == 7  # the 3 predicted examples are not counted
    assert all(metrics[f"eval_attention/layer0_head{h}/alpha"] == 1.0 for h in range(4))
    assert all(metrics[f"eval_attention/layer1_head{h}/alpha"] == 2.0 for h in range(4))


@pytest.mark.slow
def test_the_default_log_is_per_layer_means(tmp_path):
    """Without per_head: 3 values per layer (the means over its heads) and 4 over the whole model, the per-layer
    values equal to the means of the per-head statistics of the same evaluation."""
    trainer, recorder = make_trainer(tmp_path, per_head=False)
    trainer.train()
    log = [entry for entry in recorder.logs if "eval_attention/sparsity" in entry][-1]
    attention = {key: value for key, value in log.items() if key.startswith("eval_attention/")}
    assert len(attention) == 3 * 2 + 4 and not any("_head" in key for key in attention)
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SparseAttentionCallback))
    callback.per_head = True
    metrics = trainer.evaluate()
    for layer in range(2):
        for stat in ("sparsity", "support_size", "alpha"):
            heads = [metrics[f"eval_attention/layer{layer}_head{h}/{stat}"] for h in range(4)]
            assert metrics[f"eval_attention/layer{layer}/{stat}"] == pytest.approx(sum(heads) / 4, abs=1e-12)
    assert metrics["eval_attention/layer1/sparsity"] == pytest.approx(log["eval_attention/layer1/sparsity"], abs=1e-12)


def _alpha_logits(model):
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith("alpha_logit")])


@pytest.mark.slow
def test_alpha_moves_at_its_own_learning_rate_under_the_stock_trainer(tmp_path):
    """The stock Trainer's single learning rate (5e-5 by default) leaves a learned alpha where it started; with
    sparse_attention_optimizer the alphas train at alpha_lr, without weight decay, under the Trainer's schedule."""
    from hf_sparse_attn.integrations import sparse_attention_optimizer

    stock, _ = make_trainer(tmp_path / "stock")
    start = _alpha_logits(stock.model).clone()
    stock.train()
    stock_moved = (_alpha_logits(stock.model) - start).abs().max().item()

    own, _ = make_trainer(tmp_path / "own", optimizers=lambda model, args: (sparse_attention_optimizer(model, args),
                                                                           None))
    assert torch.equal(_alpha_logits(own.model), start)  # the same initial model
    groups = {group["name"]: group for group in own.optimizer.param_groups}
    assert groups["attention_alpha"]["weight_decay"] == 0.0 and groups["weights"]["weight_decay"] == 0.0
    own.train()
    own_moved = (_alpha_logits(own.model) - start).abs().max().item()
    assert own_moved > 50 * stock_moved and own_moved > 1e-3
    alphas = hf_sparse_attn.attention_alphas(own.model)
    assert (alphas - 1.5).abs().max() > 1e-4  # alpha = 1 + sigmoid(logit) left 1.5
    assert own.lr_scheduler is not None and own.lr_scheduler.optimizer is own.optimizer
