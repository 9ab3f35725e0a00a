"""Sparse attention in chosen layers only: the others run transformers' own eager softmax, bitwise.

    python examples/last_layer_only.py
"""

import torch

import hf_sparse_attn  # noqa: F401
from hf_sparse_attn.assets import embedded_minilm_path
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = embedded_minilm_path()
tokenizer = AutoTokenizer.from_pretrained(path)
batch = tokenizer(["a gripping, beautifully shot film", "dull"], padding=True, return_tensors="pt")

torch.manual_seed(0)  # the same new classification head in both models
stock = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="eager")
torch.manual_seed(0)
last = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="sparsemax", attn_layers=[-1])

a = stock(**batch, output_attentions=True, output_hidden_states=True)
b = last(**batch, output_attentions=True, output_hidden_states=True)
same = [torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states)]
print("hidden states equal to stock, per layer output:", same)  # all True but the last layer's output
print("spec:", hf_sparse_attn.get_spec(last))
print("alpha per layer:", hf_sparse_attn.attention_alphas(last)[:, 0].tolist())
assert all(same[:-1]) and not same[-1]
