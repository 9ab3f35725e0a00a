"""The README's first example, runnable offline on the embedded all-MiniLM-L6-v2 (any encoder id works the same).

    python examples/quickstart.py      # writes ./ckpt
"""

import torch

import hf_sparse_attn  # registers the mappings with transformers and teaches AutoModel* the attn_impl= keyword
from hf_sparse_attn.assets import embedded_minilm_path
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = embedded_minilm_path()  # or a Hub id such as "bert-base-uncased"
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="entmax15")
batch = tokenizer(["a gripping, beautifully shot film", "dull and far too long"], padding=True, return_tensors="pt")
out = model(**batch, output_attentions=True)     # every layer and head: exact zeros, padded keys exactly 0
model.save_pretrained("ckpt")                    # records entmax15 (and learned alphas) in config + weights
again = AutoModelForSequenceClassification.from_pretrained("ckpt")                          # entmax15 again
remote = AutoModelForSequenceClassification.from_pretrained("ckpt", trust_remote_code=True)  # the folder's own code
last = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="sparsemax", attn_layers=[-1])
hf_sparse_attn.sparsify(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), "sparsemax")  # in place

zeros = [float((a[batch["attention_mask"][:, None, None, :].expand_as(a).bool()] == 0).float().mean()) for a in out.attentions]
print("share of exact zeros per layer:", " ".join(f"{z:.2f}" for z in zeros))
assert torch.equal(again(**batch).logits, out.logits)
print("reloaded with the same logits:", hf_sparse_attn.get_spec(again))
print("alpha per layer (last layer only sparsemax):", hf_sparse_attn.attention_alphas(last)[:, 0].tolist())
