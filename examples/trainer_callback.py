"""Fine-tune with the stock transformers.Trainer and sparse attention; per layer x head sparsity, support size and
alpha go wherever the Trainer logs (report_to: TensorBoard, W&B, ...; here trainer.state.log_history).

    python examples/trainer_callback.py    # embedded MiniLM on 320 MR sentences, 20 steps: about a minute on 2 CPUs
"""

import tempfile

import hf_sparse_attn  # noqa: F401  (attn_impl= on the Auto classes)
from hf_sparse_attn.assets import embedded_minilm_path
from hf_sparse_attn.data import load_text_classification, tokenize_for_classification
from hf_sparse_attn.integrations import SparseAttentionCallback
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

path = embedded_minilm_path()
data = load_text_classification("mr")
tokenizer = AutoTokenizer.from_pretrained(path)
train, _ = tokenize_for_classification(data["train"].select(range(320)), tokenizer, max_length=64)
validation, _ = tokenize_for_classification(data["validation"].select(range(64)), tokenizer, max_length=64)
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="entmax_learned")

args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=20, per_device_train_batch_size=16,
                         learning_rate=1e-4, eval_strategy="steps", eval_steps=10, logging_steps=10,
                         save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
trainer = Trainer(model=model, args=args, train_dataset=train.rename_column("label", "labels"),
                  eval_dataset=validation.rename_column("label", "labels"),
                  data_collator=DataCollatorWithPadding(tokenizer))
trainer.add_callback(SparseAttentionCallback(trainer))
trainer.train()

# The Trainer logs its eval metrics first; the callback's record follows at the same step.
loss = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]
last = [entry for entry in trainer.state.log_history if "eval_attention/sparsity" in entry][-1]
print(f"step {last['step']}: eval loss {loss['eval_loss']:.4f}, attention sparsity "
      f"{last['eval_attention/sparsity']:.3f} over {last['eval_attention/n_query_rows']} query rows")
print("layer 0 head 0:", {k.split("/")[-1]: round(v, 3) for k, v in last.items() if "/layer0_head0/" in k})
