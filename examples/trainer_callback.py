"""Fine-tune with the stock transformers.Trainer and sparse attention: learned per-head alpha at its own learning rate
(sparse_attention_optimizer), attention sparsity, support size and alpha per layer in the Trainer's logs
(SparseAttentionCallback: wherever report_to sends them, and trainer.state.log_history), and test accuracy.

    python examples/trainer_callback.py    # embedded MiniLM, 640 MR sentences, 40 steps: about a minute on one CPU

Measured: 64 s of CPU time with one thread (OMP_NUM_THREADS=1: its wall time on an idle core; details in
docs/training.md). Seeded: the same numbers on every run.
"""

import tempfile

from scipy.stats import binomtest

import hf_sparse_attn  # attn_impl= on the Auto classes
from hf_sparse_attn.assets import embedded_minilm_path
from hf_sparse_attn.data import load_text_classification, tokenize_for_classification
from hf_sparse_attn.integrations import SparseAttentionCallback, sparse_attention_optimizer
from hf_sparse_attn.training.metrics import accuracy
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments, set_seed)

path = embedded_minilm_path()
data = load_text_classification("mr")
tokenizer = AutoTokenizer.from_pretrained(path)


def sentences(split, n):
    return tokenize_for_classification(data[split].select(range(n)), tokenizer, max_length=64)[0]


train, validation, test = sentences("train", 640), sentences("validation", 64), sentences("test", 200)
set_seed(0)  # the new classification head is drawn at random: the same numbers on every run
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="entmax_learned")

args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=40, per_device_train_batch_size=16,
                         learning_rate=3e-4, eval_strategy="steps", eval_steps=20, logging_steps=20,
                         save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                  data_collator=DataCollatorWithPadding(tokenizer),
                  compute_metrics=lambda p: {"accuracy": accuracy(p.predictions.argmax(-1), p.label_ids)},
                  callbacks=[SparseAttentionCallback()],  # per_head=True: every head too
                  optimizers=(sparse_attention_optimizer(model, args, alpha_lr=1e-2), None))
trainer.train()

# The callback's record follows the Trainer's own at every evaluation (same step).
last = [entry for entry in trainer.state.log_history if "eval_attention/sparsity" in entry][-1]
layers = range(model.config.num_hidden_layers)
print(f"step {last['step']}, validation ({last['eval_attention/n_examples']} sentences): attention sparsity per "
      "layer " + " ".join(f"{last[f'eval_attention/layer{l}/sparsity']:.3f}" for l in layers))
alphas = hf_sparse_attn.attention_alphas(model)
print(f"learned alpha: {alphas.min():.3f} to {alphas.max():.3f} over {alphas.numel()} heads (all started at 1.5)")
metrics = trainer.evaluate(test, metric_key_prefix="test")
n = len(test)
interval = binomtest(round(metrics["test_accuracy"] * n), n).proportion_ci(0.95)
majority = max(sum(test["label"]), n - sum(test["label"])) / n
print(f"test accuracy {metrics['test_accuracy']:.3f} (95% CI {interval.low:.3f}-{interval.high:.3f}; majority class "
      f"{majority:.3f}) on {n} MR test sentences after {args.max_steps} steps; attention sparsity "
      f"{metrics['test_attention/sparsity']:.3f}")
