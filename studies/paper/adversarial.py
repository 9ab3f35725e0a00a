"""Adversarial attention (Jain & Wallace 2019; Wiegreffe & Pinter 2019), as measured by Meister et al. (2021).

Train a second model of the baseline's architecture, from scratch and with softmax attention, under

    loss = CE(y) - lambda_adv * JSD(attention, baseline attention on the same batch)

where "attention" is the classification token's ([CLS], position 0) attention in the LAST layer, averaged over its
heads: the analogue of the paper's single attention layer feeding the classifier. The baseline is frozen. The
result says how far attention can be moved away from the baseline's while accuracy is kept.

``train_adversary(AdversarialConfig(baseline=RUN/final, output_dir=D))`` writes ``D/adversarial.json`` (mean JSD to
the baseline's attention on test, baseline and adversary accuracy and their difference) and ``D/final/`` (the
adversarial model, loadable like any of our checkpoints). JSD is reported in bits (base 2, in [0, 1]; as
eval_suite.metrics.jensen_shannon) and in nats (x ln 2, in [0, 0.693]: the scale of Jain & Wallace's plots). The
result is cached: an existing ``adversarial.json`` with the same settings is returned as it is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hf_sparse_attn.files import atomic_write_json

RESULT_FILE = "adversarial.json"


class AdversarialError(ValueError):
    """Invalid adversarial-training request; one line naming the fix."""


@dataclass
class AdversarialConfig:
    """Settings of one adversary (all recorded in adversarial.json)."""

    baseline: str  # final folder of the baseline run (hf_sparse_attn.training output)
    output_dir: str
    dataset: str = "mr"
    lambda_adv: float = 1.0  # weight of the JSD term
    max_steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    max_length: int = 64
    max_train_examples: int | None = None  # use only the first N training examples
    limit: int = 300  # test examples for the JSD / accuracy measurement
    seed: int = 0

    def __post_init__(self) -> None:
        if not (Path(self.baseline) / "config.json").is_file():
            raise AdversarialError(f"--baseline '{self.baseline}' has no config.json; pass the final/ folder of a "
                                   "training run")
        for name in ("max_steps", "batch_size", "max_length", "limit"):
            if getattr(self, name) < 1:
                raise AdversarialError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise AdversarialError(f"max_train_examples must be >= 1, got {self.max_train_examples}")
        if self.lambda_adv < 0 or self.lr <= 0:
            raise AdversarialError("lambda_adv must be >= 0 and lr > 0")

    def settings(self) -> dict:
        """What the result depends on (the cache key)."""
        return {k: v for k, v in asdict(self).items() if k != "output_dir"}


def differentiable_jsd(p, q, mask):
    """JSD in bits between rows of tensors ``p`` and ``q`` [B, L] over bool ``mask``, differentiable in both: [B].

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


def cls_attention(model, batch) -> tuple:
    """(logits, [B, L] last-layer attention of position 0 over keys, averaged over heads; padded keys are 0)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    return out.logits, out.attentions[-1][:, :, 0, :].mean(dim=1)


def _loader(tokenized, batch_size, tokenizer, shuffle, seed):
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(tokenized, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def _tokenized_splits(config: AdversarialConfig, tokenizer):
    """(train, test subset) tokenized for the baseline's tokenizer, with only the model's input columns."""
    import numpy as np

    from hf_sparse_attn.data import load_text_classification, tokenize_for_classification

    data = load_text_classification(config.dataset)
    train = data["train"]
    if config.max_train_examples:
        train = train.select(range(min(config.max_train_examples, len(train))))
    test = data["test"]
    chosen = sorted(np.random.default_rng(config.seed).permutation(len(test))[: config.limit].tolist())
    test = test.select(chosen)
    train_tok, _ = tokenize_for_classification(train, tokenizer, config.max_length, desc="train")
    test_tok, _ = tokenize_for_classification(test, tokenizer, config.max_length, desc="test")
    keep = ["input_ids", "attention_mask", "label"]
    return (train_tok.remove_columns([c for c in train_tok.column_names if c not in keep]),
            test_tok.remove_columns([c for c in test_tok.column_names if c not in keep]))


def _train_loop(config: AdversarialConfig, adversary, baseline, train_tok, tokenizer) -> list[dict]:
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(adversary.parameters(), lr=config.lr, weight_decay=0.01)
    adversary.train()
    step, epoch, log = 0, 0, []
    progress = tqdm(total=config.max_steps, desc="adversarial", dynamic_ncols=True)
    while step < config.max_steps:
        for batch in _loader(train_tok, config.batch_size, tokenizer, True, config.seed + epoch):
            logits, attention = cls_attention(adversary, batch)
            with torch.no_grad():
                _, reference = cls_attention(baseline, batch)
            ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
            jsd = differentiable_jsd(attention, reference, batch["attention_mask"].bool()).mean()
            loss = ce - config.lambda_adv * jsd
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adversary.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(ce=f"{ce.detach().item():.3f}", jsd=f"{jsd.detach().item():.3f}")
            if step % 50 == 0 or step == config.max_steps:
                log.append({"step": step, "ce": ce.detach().item(), "jsd_bits": jsd.detach().item()})
            if step >= config.max_steps:
                break
        epoch += 1
    progress.close()
    return log


def _stat(values) -> dict | None:
    import numpy as np

    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)} if values.size else None


def _measure(adversary, baseline, test_tok, tokenizer) -> dict:
    """JSD between the two models' attention and both accuracies on the test subset."""
    import torch

    from eval_suite.metrics import jensen_shannon

    adversary.eval()
    jsd_all, jsd_content, correct_adv, correct_base, loss_adv = [], [], 0, 0, 0.0
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    with torch.no_grad():
        for batch in _loader(test_tok, 64, tokenizer, False, 0):
            logits_a, att_a = cls_attention(adversary, batch)
            logits_b, att_b = cls_attention(baseline, batch)
            mask = batch["attention_mask"].bool()
            content = mask & ~torch.isin(batch["input_ids"], special)
            jsd_all += jensen_shannon(att_a, att_b, mask).tolist()
            jsd_content += jensen_shannon(att_a, att_b, content).tolist()
            correct_adv += int((logits_a.argmax(-1) == batch["labels"]).sum())
            correct_base += int((logits_b.argmax(-1) == batch["labels"]).sum())
            loss_adv += float(torch.nn.functional.cross_entropy(logits_a.float(), batch["labels"], reduction="sum"))
    n = len(test_tok)
    jsd_bits = _stat(jsd_all)
    return {
        "attention": "last layer, [CLS] query, mean over heads; keys: all non-padding tokens (trained on) / content "
                     "tokens only (renormalised)",
        "jsd_bits": jsd_bits,
        "jsd_bits_content": _stat(jsd_content),
        "jsd_nats": {k: (v * math.log(2) if k in ("mean", "std") else v) for k, v in jsd_bits.items()},
        "baseline_accuracy": correct_base / n,
        "adversary_accuracy": correct_adv / n,
        "accuracy_change": (correct_adv - correct_base) / n,
        "adversary_loss": loss_adv / n,  # test cross-entropy: at chance it is ln(number of labels)
        "chance_loss": math.log(int(adversary.config.num_labels)),
        "n_examples": n,
    }


def measure_pair(config: AdversarialConfig, other: str) -> dict:
    """JSD between the attention of the baseline and of another trained model ``other`` (e.g. the same recipe with
    another seed) on the test subset: how far apart independently trained models already are."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_sparse_attn  # noqa: F401  (our model types on the Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(config.baseline)
    baseline = AutoModelForSequenceClassification.from_pretrained(config.baseline).eval()
    second = AutoModelForSequenceClassification.from_pretrained(other).eval()
    _, test_tok = _tokenized_splits(config, tokenizer)
    return {"settings": {**config.settings(), "other": Path(other).parent.name},
            **_measure(second, baseline, test_tok, tokenizer)}


def train_adversary(config: AdversarialConfig, threads: int | None = None) -> dict:
    """Train the adversary (or return the cached result) and measure it against the baseline."""
    out = Path(config.output_dir)
    result_path = out / RESULT_FILE
    if result_path.is_file():
        cached = json.loads(result_path.read_text(encoding="utf-8"))
        if cached.get("settings") == config.settings():
            return cached
        raise AdversarialError(f"'{result_path}' was computed with other settings; delete the folder to recompute")

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_sparse_attn  # noqa: F401  (attn_impl= on the Auto classes)
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.baseline)
    baseline = AutoModelForSequenceClassification.from_pretrained(config.baseline).eval()
    for param in baseline.parameters():
        param.requires_grad_(False)
    adversary = AutoModelForSequenceClassification.from_config(baseline.config, attn_impl="softmax")
    train_tok, test_tok = _tokenized_splits(config, tokenizer)
    log = _train_loop(config, adversary, baseline, train_tok, tokenizer)
    result = {"settings": config.settings(), **_measure(adversary, baseline, test_tok, tokenizer), "train_log": log,
              "seconds": time.time() - started}
    # Model first, result last: the result file is the "done" mark, written atomically.
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    adversary.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out / "final", ignore_errors=True)
    os.replace(tmp, out / "final")
    atomic_write_json(result_path, result, trailing_newline=False)
    return result
