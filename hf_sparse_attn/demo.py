"""Quick look: how sparse is pretrained MiniLM's attention under each mapping, on MR test sentences (no training).

    python -m hf_sparse_attn.demo [--model PATH] [--n 64] [--attn-impl sparsemax entmax15 ...]
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModel, AutoTokenizer

import hf_sparse_attn
from hf_sparse_attn.assets import embedded_minilm_path
from hf_sparse_attn.data import load_text_classification
from hf_sparse_attn.training.metrics import attention_row_statistics, per_layer_sparsity, summarise_attention


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--n", type=int, default=64, help="number of MR test sentences")
    parser.add_argument("--attn-impl", nargs="+", default=["softmax", "sparsemax", "entmax15", "entmax:alpha=1.25"])
    args = parser.parse_args(argv)
    model_path = args.model or embedded_minilm_path()
    texts = load_text_classification("mr")["test"]["text"][: args.n]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    for attn_impl in args.attn_impl:
        model = AutoModel.from_pretrained(model_path, attn_impl=attn_impl).eval()
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        # The training logs' definition: per real query row, the share of its real keys with exactly zero weight.
        heads = summarise_attention(attention_row_statistics(attentions, batch["attention_mask"]))
        support = sum(h["support_size"] for h in heads) / len(heads)
        print(f"{str(hf_sparse_attn.get_spec(model)):>18}  exact zeros per layer: "
              + " ".join(f"{v:.1%}" for v in per_layer_sparsity(heads)) + f"   mean support {support:.1f} keys")


if __name__ == "__main__":
    main()
