"""Adversarial attention (Jain & Wallace 2019; Wiegreffe & Pinter 2019), as measured by Meister et al. (2021).

Train a second model of the baseline's architecture, from scratch and with softmax attention, under

    loss = CE(y) - lambda_adv * JSD(attention, baseline attention on the same batch)

where "attention" is the classification token's ([CLS], position 0) attention in the LAST layer, averaged over its
heads: the analogue of the paper's single attention layer feeding the classifier. The baseline is frozen. The
result says how far attention can be moved away from the baseline's while accuracy is kept.

    python -m eval_suite.adversarial --baseline studies/paper/runs/.../final --dataset mr --output-dir D

writes ``D/adversarial.json`` (mean JSD to the baseline's attention on test, baseline and adversary accuracy and
their difference) and ``D/final/`` (the adversarial model, loadable like any of our checkpoints). JSD is reported
in bits (base 2, in [0, 1]; as eval_suite.metrics.jensen_shannon) and in nats (x ln 2, in [0, 0.693]: the scale of
Jain & Wallace's plots). The unit is cached: an existing ``adversarial.json`` with the same settings is a no-op.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

RESULT_FILE = "adversarial.json"


class AdversarialError(ValueError):
    """Invalid adversarial-training request; one line naming the fix."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval_suite.adversarial", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="final folder of the baseline run (hf_sparse_attn.train output)")
    p.add_argument("--dataset", default="mr", help="mr | trec | path (default: mr)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--lambda-adv", type=float, default=1.0, help="weight of the JSD term (default 1.0)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-train-examples", type=int, help="use only the first N training examples")
    p.add_argument("--limit", type=int, default=300, help="test examples for the JSD / accuracy measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p


def _settings(args) -> dict:
    keys = ("baseline", "dataset", "lambda_adv", "max_steps", "batch_size", "lr", "max_length", "max_train_examples",
            "limit", "seed")
    return {k: getattr(args, k) for k in keys}


def validate(args) -> None:
    final = Path(args.baseline)
    if not (final / "config.json").is_file():
        raise AdversarialError(f"--baseline '{final}' has no config.json; pass the final/ folder of a training run")
    for name in ("max_steps", "batch_size", "max_length", "limit"):
        if getattr(args, name) < 1:
            raise AdversarialError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_train_examples is not None and args.max_train_examples < 1:
        raise AdversarialError(f"--max-train-examples must be >= 1, got {args.max_train_examples}")
    if args.lambda_adv < 0 or args.lr <= 0:
        raise AdversarialError("--lambda-adv must be >= 0 and --lr > 0")


def differentiable_jsd(p: "torch.Tensor", q: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """JSD in bits between rows of ``p`` and ``q`` over ``mask``, differentiable in ``p`` and ``q``: [B].

    The training term. eval_suite.metrics.jensen_shannon gives the same values but detaches its inputs (it is a
    measurement), so its gradient is zero and it cannot drive training.
    """
    import torch

    p = torch.where(mask, p, torch.zeros_like(p))
    q = torch.where(mask, q, torch.zeros_like(q))
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    m = (p + q) / 2

    def kl(a, b):
        # a * log(a / b) with 0 log 0 = 0; b >= a / 2 > 0 wherever a > 0, so the ratio is finite there.
        safe_a = torch.where(a > 0, a, torch.ones_like(a))
        safe_b = torch.where(a > 0, b, torch.ones_like(b))
        return torch.where(a > 0, a * torch.log2(safe_a / safe_b), torch.zeros_like(a)).sum(dim=-1)

    return (kl(p, m) + kl(q, m)) / 2


def cls_attention(model, batch) -> "torch.Tensor":
    """[B, L]: the last layer's attention of position 0 over keys, averaged over heads (padded keys are 0)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    return out.logits, out.attentions[-1][:, :, 0, :].mean(dim=1)


def _loader(tokenized, batch_size, tokenizer, shuffle, seed):
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(tokenized, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def run(args) -> dict:
    """Train the adversary (or return the cached result) and measure it against the baseline."""
    validate(args)
    out = Path(args.output_dir)
    result_path = out / RESULT_FILE
    if result_path.is_file():
        cached = json.loads(result_path.read_text(encoding="utf-8"))
        if cached.get("settings") == _settings(args):
            return cached
        raise AdversarialError(f"'{result_path}' was computed with other settings; delete the folder to recompute")

    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_sparse_attn  # noqa: F401  (attn_impl= on the Auto classes)
    from hf_sparse_attn.data import load_text_classification, tokenize_for_classification

    from .metrics import jensen_shannon

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.baseline)
    baseline = AutoModelForSequenceClassification.from_pretrained(args.baseline).eval()
    for param in baseline.parameters():
        param.requires_grad_(False)
    config = baseline.config
    adversary = AutoModelForSequenceClassification.from_config(config, attn_impl="softmax")

    data = load_text_classification(args.dataset)
    train = data["train"]
    if args.max_train_examples:
        train = train.select(range(min(args.max_train_examples, len(train))))
    test = data["test"]
    chosen = sorted(np.random.default_rng(args.seed).permutation(len(test))[: args.limit].tolist())
    test = test.select(chosen)
    train_tok, _ = tokenize_for_classification(train, tokenizer, args.max_length, desc="train")
    test_tok, _ = tokenize_for_classification(test, tokenizer, args.max_length, desc="test")
    keep = ["input_ids", "attention_mask", "label"]
    train_tok = train_tok.remove_columns([c for c in train_tok.column_names if c not in keep])
    test_tok = test_tok.remove_columns([c for c in test_tok.column_names if c not in keep])

    optimizer = torch.optim.AdamW(adversary.parameters(), lr=args.lr, weight_decay=0.01)
    adversary.train()
    step, epoch = 0, 0
    log = []
    progress = tqdm(total=args.max_steps, desc="adversarial", dynamic_ncols=True)
    while step < args.max_steps:
        for batch in _loader(train_tok, args.batch_size, tokenizer, True, args.seed + epoch):
            logits, attention = cls_attention(adversary, batch)
            with torch.no_grad():
                _, reference = cls_attention(baseline, batch)
            ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
            jsd = differentiable_jsd(attention, reference, batch["attention_mask"].bool()).mean()
            loss = ce - args.lambda_adv * jsd
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adversary.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(ce=f"{ce.detach().item():.3f}", jsd=f"{jsd.detach().item():.3f}")
            if step % 50 == 0 or step == args.max_steps:
                log.append({"step": step, "ce": ce.detach().item(), "jsd_bits": jsd.detach().item()})
            if step >= args.max_steps:
                break
        epoch += 1
    progress.close()

    adversary.eval()
    jsd_all, jsd_content, correct_adv, correct_base = [], [], 0, 0
    special = set(tokenizer.all_special_ids)
    with torch.no_grad():
        for batch in _loader(test_tok, 64, tokenizer, False, 0):
            logits_a, att_a = cls_attention(adversary, batch)
            logits_b, att_b = cls_attention(baseline, batch)
            mask = batch["attention_mask"].bool()
            content = mask & ~torch.isin(batch["input_ids"], torch.tensor(sorted(special)))
            jsd_all += jensen_shannon(att_a, att_b, mask).tolist()
            jsd_content += jensen_shannon(att_a, att_b, content).tolist()
            correct_adv += int((logits_a.argmax(-1) == batch["labels"]).sum())
            correct_base += int((logits_b.argmax(-1) == batch["labels"]).sum())
    n = len(test_tok)

    def stat(values):
        values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)} if values.size else None

    result = {
        "settings": _settings(args),
        "attention": "last layer, [CLS] query, mean over heads; keys: all non-padding tokens (trained on) / content "
                     "tokens only (renormalised)",
        "jsd_bits": stat(jsd_all),
        "jsd_bits_content": stat(jsd_content),
        "jsd_nats": {k: (v * math.log(2) if k in ("mean", "std") else v) for k, v in stat(jsd_all).items()},
        "baseline_accuracy": correct_base / n,
        "adversary_accuracy": correct_adv / n,
        "accuracy_change": (correct_adv - correct_base) / n,
        "n_examples": n,
        "train_log": log,
        "seconds": time.time() - started,
    }
    # Model first, result last: the result file is the "done" mark, written atomically.
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    adversary.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out / "final", ignore_errors=True)
    os.replace(tmp, out / "final")
    tmp_json = out / f".{RESULT_FILE}.tmp"
    tmp_json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp_json, result_path)
    return result


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except AdversarialError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"JSD to baseline attention: {result['jsd_bits']['mean']:.3f} bits ({result['jsd_nats']['mean']:.3f} nats); "
          f"accuracy {result['baseline_accuracy']:.4f} -> {result['adversary_accuracy']:.4f} "
          f"({result['accuracy_change']:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
