"""Adversarial attention (Jain & Wallace 2019; Wiegreffe & Pinter 2019), as measured by Meister et al. (2021).

Train a second model of the baseline's architecture, from scratch and with softmax attention, under

    loss = CE(y) - lambda_adv * JSD(attention, baseline attention on the same batch)

where "attention" is the classification token's ([CLS], position 0) attention in the LAST layer, averaged over its
heads: the analogue of the paper's single attention layer feeding the classifier. The baseline is frozen. The
adversary trains like the baseline: the same optimizer (AdamW, no decay on biases and norms), linear decay over the
step cap, validation accuracy every ``eval_every`` steps, stopping after ``patience`` evaluations without a better
one and keeping the best weights. lambda_adv = 0 is the control: the same loop without the JSD term.

``train_adversary(AdversarialConfig(baseline=RUN/final, output_dir=D))`` writes ``D/adversarial.json`` and
``D/final/`` (the adversarial model, loadable like any of our checkpoints). The result holds, on validation (for
choosing lambda_adv) and on the seeded test subset (for the verdict), the JSD to the baseline's attention and both
accuracies, and on test the per-example content JSD and correctness, so that differences can be paired by example.
JSD is in bits (base 2, in [0, 1]; as eval_suite.metrics.jensen_shannon) and in nats (x ln 2, in [0, 0.693]: the
scale of Jain & Wallace's plots); "content" drops special tokens and renormalises. The result is cached: an
existing ``adversarial.json`` with the same settings is returned as it is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from itertools import combinations
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
    max_steps: int = 2000  # step cap
    eval_every: int = 100  # steps between validation evaluations
    patience: int = 5  # evaluations without a better validation accuracy before stopping
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    max_length: int = 64
    max_train_examples: int | None = None  # use only the first N training examples
    max_eval_examples: int | None = None  # validation examples (early stopping, choice of lambda_adv); None: all
    limit: int | None = 400  # test examples for the JSD / accuracy measurement; None: the whole test split
    seed: int = 0

    def __post_init__(self) -> None:
        if not (Path(self.baseline) / "config.json").is_file():
            raise AdversarialError(f"--baseline '{self.baseline}' has no config.json; pass the final/ folder of a "
                                   "training run")
        for name in ("max_steps", "eval_every", "patience", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise AdversarialError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_examples", "max_eval_examples", "limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AdversarialError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.lambda_adv < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise AdversarialError("lambda_adv and weight_decay must be >= 0 and lr > 0")

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
    """(train, validation, test subset) tokenized for ``tokenizer``, with only the model's input columns. The test
    subset is eval_suite's seeded selection, so it is the subset every model of the study is evaluated on."""
    from eval_suite.runner import select_examples
    from hf_sparse_attn.data import load_text_classification, tokenize_for_classification

    data = load_text_classification(config.dataset)
    train, validation, test = data["train"], data["validation"], data["test"]
    if config.max_train_examples:
        train = train.select(range(min(config.max_train_examples, len(train))))
    if config.max_eval_examples:
        validation = validation.select(range(min(config.max_eval_examples, len(validation))))
    test = test.select(select_examples(len(test), config.limit, config.seed))
    keep = ["input_ids", "attention_mask", "label"]
    out = []
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        tokenized, _ = tokenize_for_classification(split, tokenizer, config.max_length, desc=name)
        out.append(tokenized.remove_columns([c for c in tokenized.column_names if c not in keep]))
    return tuple(out)


def _accuracy(model, tokenized, tokenizer) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in _loader(tokenized, 64, tokenizer, False, 0):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(tokenized)


def _train_loop(config: AdversarialConfig, adversary, baseline, splits, tokenizer) -> tuple[list[dict], dict]:
    """Train ``adversary`` in place, early-stopped on validation accuracy like the baseline; its best weights are
    loaded at the end. Returns (log, training summary)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from hf_sparse_attn.training.loop import build_optimizer

    train_tok, validation_tok, _ = splits
    optimizer = build_optimizer(adversary, config.lr, config.lr, config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, config.max_steps)  # the baseline's: no warm-up
    step, epoch, log, stopped = 0, 0, [], False
    best = {"accuracy": None, "step": None, "state": None, "evals_since": 0}
    progress = tqdm(total=config.max_steps, desc="adversarial", dynamic_ncols=True)
    adversary.train()
    while step < config.max_steps and not stopped:
        for batch in _loader(train_tok, config.batch_size, tokenizer, True, config.seed + epoch):
            logits, attention = cls_attention(adversary, batch)
            with torch.no_grad():
                _, reference = cls_attention(baseline, batch)
            ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
            jsd = differentiable_jsd(attention, reference, batch["attention_mask"].bool()).mean()
            (ce - config.lambda_adv * jsd).backward()
            torch.nn.utils.clip_grad_norm_(adversary.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(ce=f"{ce.detach().item():.3f}", jsd=f"{jsd.detach().item():.3f}")
            if step % config.eval_every == 0 or step == config.max_steps:
                accuracy = _accuracy(adversary, validation_tok, tokenizer)
                adversary.train()
                if best["accuracy"] is None or accuracy > best["accuracy"]:  # ties keep the earlier weights
                    state = {k: v.detach().clone() for k, v in adversary.state_dict().items()}
                    best.update(accuracy=accuracy, step=step, state=state, evals_since=0)
                else:
                    best["evals_since"] += 1
                stopped = best["evals_since"] >= config.patience
                log.append({"step": step, "ce": ce.detach().item(), "jsd_bits": jsd.detach().item(),
                            "validation_accuracy": accuracy, "best_step": best["step"]})
            if step >= config.max_steps or stopped:
                break
        epoch += 1
    progress.close()
    adversary.load_state_dict(best["state"])
    adversary.eval()
    return log, {"step": best["step"], "best_step": best["step"], "stopped_at_step": step, "stopped_early": stopped,
                 "step_cap": config.max_steps, "best_validation_accuracy": best["accuracy"]}


def _stat(values) -> dict | None:
    import numpy as np

    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)} if values.size else None


def _attention_pairs(model_a, model_b, tokenized, tokenizer):
    """Per test batch: (logits a, logits b, JSD over all tokens, JSD over content tokens) of the two models."""
    import torch

    from eval_suite.metrics import jensen_shannon

    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    with torch.no_grad():
        for batch in _loader(tokenized, 64, tokenizer, False, 0):
            logits_a, att_a = cls_attention(model_a, batch)
            logits_b, att_b = cls_attention(model_b, batch)
            mask = batch["attention_mask"].bool()
            content = mask & ~torch.isin(batch["input_ids"], special)
            yield batch, logits_a, logits_b, jensen_shannon(att_a, att_b, mask), jensen_shannon(att_a, att_b, content)


def _measure(adversary, baseline, tokenized, tokenizer, per_example: bool) -> dict:
    """JSD between the two models' attention and both accuracies on ``tokenized``."""
    import torch

    adversary.eval()
    jsd_all, jsd_content, correct_adv, correct_base, loss_adv = [], [], [], [], 0.0
    for batch, logits_a, logits_b, jsd, jsd_c in _attention_pairs(adversary, baseline, tokenized, tokenizer):
        jsd_all += jsd.tolist()
        jsd_content += jsd_c.tolist()
        correct_adv += (logits_a.argmax(-1) == batch["labels"]).int().tolist()
        correct_base += (logits_b.argmax(-1) == batch["labels"]).int().tolist()
        loss_adv += float(torch.nn.functional.cross_entropy(logits_a.float(), batch["labels"], reduction="sum"))
    n = len(tokenized)
    jsd_bits = _stat(jsd_all)
    out = {
        "attention": "last layer, [CLS] query, mean over heads; keys: all non-padding tokens (trained on) / content "
                     "tokens only (renormalised)",
        "jsd_bits": jsd_bits,
        "jsd_bits_content": _stat(jsd_content),
        "jsd_nats": {k: (v * math.log(2) if k in ("mean", "std") else v) for k, v in jsd_bits.items()},
        "baseline_accuracy": sum(correct_base) / n,
        "adversary_accuracy": sum(correct_adv) / n,
        "accuracy_change": (sum(correct_adv) - sum(correct_base)) / n,
        "adversary_loss": loss_adv / n,  # cross-entropy: at chance it is ln(number of labels)
        "chance_loss": math.log(int(adversary.config.num_labels)),
        "n_examples": n,
    }
    if per_example:  # in test-subset order: pairs with every other model measured on the same subset
        out["per_example"] = {"jsd_bits_content": jsd_content, "adversary_correct": correct_adv,
                              "baseline_correct": correct_base}
    return out


def measure_seed_pairs(config: AdversarialConfig, models: dict[str, str]) -> dict:
    """Per-example content JSD between the attention of every pair of ``models`` (name -> final folder; e.g. the
    softmax baselines of every seed) on the test subset: how far apart independently trained models already are."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_sparse_attn  # noqa: F401  (our model types on the Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(config.baseline)
    loaded = {name: AutoModelForSequenceClassification.from_pretrained(folder).eval() for name, folder in models.items()}
    vocab = tokenizer.get_vocab()
    for name, folder in models.items():  # positions must line up: every model reads the same token ids
        if AutoTokenizer.from_pretrained(folder).get_vocab() != vocab:
            raise AdversarialError(f"model {name} has another vocabulary than the baseline; seed pairs need models "
                                   "trained on the same data")
    _, _, test_tok = _tokenized_splits(config, tokenizer)
    pairs = {}
    for a, b in combinations(sorted(loaded), 2):
        per_example = []
        for *_, jsd_c in _attention_pairs(loaded[b], loaded[a], test_tok, tokenizer):
            per_example += jsd_c.tolist()
        pairs[f"{a}|{b}"] = {"jsd_bits_content": _stat(per_example), "per_example": per_example}
    return {"settings": {**config.settings(), "models": sorted(models)}, "pairs": pairs, "n_examples": len(test_tok)}


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
    splits = _tokenized_splits(config, tokenizer)
    log, training = _train_loop(config, adversary, baseline, splits, tokenizer)
    result = {"settings": config.settings(), **_measure(adversary, baseline, splits[2], tokenizer, per_example=True),
              "validation": _measure(adversary, baseline, splits[1], tokenizer, per_example=False),
              "training": training, "train_log": log, "seconds": time.time() - started}
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
