"""torch.export and torch.compile(fullgraph=True) of a sparse model in eval mode: same outputs as eager to 1e-6.

    python examples/export_and_compile.py
"""

import torch

import hf_sparse_attn  # noqa: F401
from hf_sparse_attn.assets import embedded_minilm_path
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = embedded_minilm_path()
tokenizer = AutoTokenizer.from_pretrained(path)
batch = tokenizer(["a gripping, beautifully shot film", "dull"], padding=True, return_tensors="pt")
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_impl="entmax15").eval()


class Logits(torch.nn.Module):  # plain tensors in and out: what export and compile trace
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


wrapped = Logits(model)
with torch.no_grad():
    eager = wrapped(batch["input_ids"], batch["attention_mask"])  # also installs transformers' output hooks
    exported = torch.export.export(wrapped, (batch["input_ids"], batch["attention_mask"])).module()
    compiled = torch.compile(wrapped, fullgraph=True, backend="aot_eager")  # the default backend, inductor, too
    for name, fn in (("torch.export", exported), ("torch.compile", compiled)):
        diff = (fn(batch["input_ids"], batch["attention_mask"]) - eager).abs().max().item()
        print(f"{name}: largest difference to eager {diff:.1e}")
        assert diff <= 1e-6
