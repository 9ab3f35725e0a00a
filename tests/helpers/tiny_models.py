"""Tiny, deterministic models, data and results files for tests: random BERTs, word-level tokenizers, CSVs of random
'sentences' over their vocabulary, and hand-written results.json files. Nothing here touches the network."""

from __future__ import annotations

import atexit
import csv
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

# The one tiny encoder of the test suite (overrides per test: labels, dropout, initialisation).
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
NO_DROPOUT = dict(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
MODEL_TYPES = ["bert", "roberta", "distilbert", "electra", "xlm-roberta"]
VOCAB_WORDS = [f"w{i}" for i in range(95)]
CARD_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(90)] + [
    "a", "film", "good", "bad", "plot"]


def tiny_config(model_type: str, **overrides):
    """A tiny random config of ``model_type`` (3 labels, no dropout), in that family's own parameter names."""
    from transformers import AutoConfig

    kwargs = dict(TINY, num_labels=3, **NO_DROPOUT)
    if model_type == "distilbert":
        kwargs = dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64,
                      num_labels=3, attention_dropout=0.0, dropout=0.0)
    if model_type == "electra":
        kwargs["embedding_size"] = 16
    if model_type in ("roberta", "xlm-roberta"):
        kwargs["pad_token_id"] = 1
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def random_batch(batch=3, length=9, vocab=100, seed=0, pad_last=(0, 3, 5)):
    """input_ids and an attention_mask with a different amount of right padding per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, n_pad in enumerate(pad_last[:batch]):
        if n_pad:
            mask[row, -n_pad:] = 0
    return ids, mask


def _tiny_bert(seed: int, *, with_head: bool = True, **config):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    return (BertForSequenceClassification if with_head else BertModel)(BertConfig(**{**TINY, **config})).eval()


def make_tiny_checkpoint(folder, *, layers: int = 2, heads: int = 4, num_labels: int = 2, seed: int = 0,
                         attn_impl: str | None = None, initializer_range: float = 0.3, with_head: bool = True) -> str:
    """Save a random BERT sequence classifier (hidden 32) and its tokenizer into ``folder``; return the path.

    ``initializer_range`` is larger than BERT's 0.02 so that predictions depend visibly on the input.
    ``attn_impl`` makes it one of our sparse checkpoints; ``with_head=False`` saves a bare BertModel.
    """
    from transformers import BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab_path = os.path.join(folder, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=vocab_path)
    model = _tiny_bert(seed, with_head=with_head, num_hidden_layers=layers, num_attention_heads=heads,
                       num_labels=num_labels, initializer_range=initializer_range)
    # Trained LayerNorms have non-trivial gains and biases. With the initial gain 1 / bias 0, every hidden state
    # has norm sqrt(hidden_size) exactly and eq. 5 (the gradient of ||h_p||) would be numerical noise.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.5)
    if attn_impl is not None:
        import hf_sparse_attn

        hf_sparse_attn.sparsify(model, attn_impl=attn_impl)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_text_csv(path, *, n: int = 40, n_classes: int = 2, seed: int = 0, min_words: int = 3, max_words: int = 12,
                  text_column: str = "text", label_column: str = "label") -> str:
    """Write ``n`` random texts over the tiny vocabulary with labels 0..n_classes-1."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([text_column, label_column])
        for i in range(n):
            words = [rng.choice(VOCAB_WORDS) for _ in range(rng.randint(min_words, max_words))]
            writer.writerow([" ".join(words), i % n_classes])
    return str(path)


def make_text_pair_file(path, *, n: int = 40, seed: int = 0, columns=("premise", "hypothesis", "label"),
                        words=VOCAB_WORDS) -> str:
    """Write ``n`` random sentence pairs (.csv or .jsonl by the suffix of ``path``) labelled 0, 1, 0, 1, ...; the
    second text of a pair labelled 1 repeats a word of the first."""
    rng = random.Random(seed)
    first_column, second_column, label_column = columns
    rows = []
    for i in range(n):
        first = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        second = [rng.choice(words) for _ in range(rng.randint(2, 6))]
        if i % 2:
            second[rng.randrange(len(second))] = rng.choice(first)
        rows.append({first_column: " ".join(first), second_column: " ".join(second),
                     label_column: i % 2})
    path = Path(path)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
    return str(path)


def make_checkpoint(folder, *, attn_impl: str | None = "entmax_learned", seed: int = 0, tokenizer: bool = True,
                    training_files: bool = True, config_overrides: dict | None = None) -> Path:
    """A tiny BERT classifier saved the way the core saves one (``attn_impl=None``: a stock checkpoint), with the
    training command's files beside it (made-up numbers) unless ``training_files=False``.

    Learned alphas are set to distinct seeded values so that tables can tell heads apart.
    """
    folder = Path(folder)
    model = _tiny_bert(seed, num_labels=2, **NO_DROPOUT, **(config_overrides or {}))
    if attn_impl is not None:
        import hf_sparse_attn

        hf_sparse_attn.sparsify(model, attn_impl=attn_impl)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("sparse_attn.alpha_logit"):
                    param.copy_(torch.randn(param.shape, generator=generator))
    model.save_pretrained(folder)
    if tokenizer:
        from transformers import BertTokenizer

        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(CARD_VOCAB) + "\n", encoding="utf-8")
        BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    if training_files:
        _write_training_files(folder, attn_impl, seed)
    return folder


def _write_training_files(folder: Path, attn_impl: str | None, seed: int) -> None:
    args = {"model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "dataset": "mr",
            "attn_impl": attn_impl or "softmax", "seed": seed, "learning_rate": 2e-5, "epochs": 1, "batch_size": 16}
    (folder / "training_args.json").write_text(json.dumps(args, indent=2), encoding="utf-8")
    final = {split: {"accuracy": 0.8, "macro_f1": 0.79, "loss": 0.45, "step": 40, "epoch": 1.0}
             for split in ("validation", "test")}
    (folder / "final_metrics.json").write_text(json.dumps(final, indent=2), encoding="utf-8")
    with open(folder / "train_log.jsonl", "w", encoding="utf-8") as f:
        for step in (10, 20, 30, 40):
            heads = [{"layer": layer, "head": head, "sparsity": 0.5 + step / 100, "support_size": 3.0,
                      "alpha": 1.5} for layer in range(2) for head in range(4)]
            f.write(json.dumps({"step": step, "epoch": step / 40, "split": "validation", "loss": 1 - step / 100,
                                "accuracy": 0.5 + step / 100, "macro_f1": 0.5 + step / 110,
                                "per_layer_head": heads}) + "\n")


def make_results(checkpoint, outdir, *, seed: int = 0, plots: bool = True, limit: int = 16,
                 fingerprint: str | None = None, measures: str | None = None) -> Path:
    """A real results.json: the evaluation suite run on ``limit`` seeded MR test sentences with ``checkpoint``.

    ``plots=False`` leaves the plots out (files and list); ``fingerprint`` overwrites the recorded weights
    fingerprint (a results file that claims other weights); ``measures`` is a --measures selection (default: the
    suite's default tier).
    """
    from eval_suite import EvalRequest, MeasureConfig, run_evaluation
    from eval_suite.registry import DEFAULT_SPEC

    outdir = Path(outdir)
    key = _evaluation_key(checkpoint, seed=seed, limit=limit, measures=measures)
    if key in _EVALUATIONS and not outdir.exists():
        shutil.copytree(_EVALUATIONS[key], outdir, symlinks=True)
    else:
        measure = MeasureConfig.of(ig_steps=4, ig_tolerance=None, fractions=(0.1, 0.5), seed=seed,
                                   measures=measures or DEFAULT_SPEC)
        run_evaluation(EvalRequest(checkpoint=str(checkpoint), output_dir=str(outdir), dataset="mr", split="test",
                                   limit=limit, max_length=24, plot_examples=1, cpu=True, measure=measure))
        _EVALUATIONS[key] = Path(tempfile.mkdtemp(prefix="evaluation-", dir=_evaluations_dir())) / "eval"
        shutil.copytree(outdir, _EVALUATIONS[key], symlinks=True)
    path = outdir / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    if not plots:
        for rel in results["plots"]:
            (outdir / rel).unlink()
        results["plots"] = []
    if fingerprint is not None:
        results["weights_fingerprint"] = fingerprint
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return path


def make_head_uniform(checkpoint, folder, *, layer: int = 0, head: int = 0) -> str:
    """A copy of a tiny BERT ``checkpoint`` whose ``head`` of ``layer`` has zero query weights: every key scores 0,
    so that head attends uniformly (softmax and the sparse mappings alike) and no other head of the layer changes."""
    import hf_sparse_attn  # noqa: F401  (loads our sparse checkpoints)
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(checkpoint, folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    query = model.base_model.encoder.layer[layer].attention.self.query
    size = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        query.weight[head * size:(head + 1) * size] = 0.0
        query.bias[head * size:(head + 1) * size] = 0.0
    model.save_pretrained(folder)
    return str(folder)


# Evaluations make_results ran in this process, by what their files depend on (_evaluation_key): a fixed seed gives
# byte-identical files, so a second request for the same evaluation is a copy (milliseconds, not seconds).
_EVALUATIONS: dict[str, Path] = {}
_CARD_OUTPUTS = ("README.md", "results.json", "report.html", "interpretability")  # what rendering adds: not read


def _evaluation_key(checkpoint, **settings) -> str:
    """The checkpoint folder's name and the bytes of every file an evaluation may read, and the settings."""
    folder = Path(checkpoint)
    digest = hashlib.sha256(json.dumps([folder.name, settings], sort_keys=True).encode())
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in _CARD_OUTPUTS:
            digest.update(relative.as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _evaluations_dir() -> str:
    if not _EVALUATIONS_ROOT:
        _EVALUATIONS_ROOT.append(tempfile.mkdtemp(prefix="tiny-evaluations-"))
        atexit.register(shutil.rmtree, _EVALUATIONS_ROOT[0], True)
    return _EVALUATIONS_ROOT[0]


_EVALUATIONS_ROOT: list[str] = []


def make_special_token_head_checkpoint(folder, *, attn_impl: str = "sparsemax", seed: int = 0,
                                       heads: tuple = (0,)) -> str:
    """A tiny BERT classifier whose layer-0 ``heads`` (head 0; ``range(4)``: the whole layer) give all of the [CLS]
    query's attention to [CLS] and [SEP].

    The [CLS]/[SEP] word embeddings get a large first coordinate, and that head's key reads only it while its query
    is a constant: every query scores the special tokens far above any content token, so a sparse mapping gives the
    content tokens exactly zero (the case of a head that is undefined over content tokens).
    """
    from transformers import BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab_path = os.path.join(folder, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=vocab_path)
    model = _tiny_bert(seed, num_labels=2, initializer_range=0.3, **NO_DROPOUT)
    head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    attention = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        for token in ("[CLS]", "[SEP]"):
            model.bert.embeddings.word_embeddings.weight[tokenizer.convert_tokens_to_ids(token), 0] = 20.0
        for head in heads:
            rows = slice(head * head_dim, (head + 1) * head_dim)
            attention.key.weight[rows] = 0.0
            attention.key.weight[rows, 0] = 1.0
            attention.key.bias[rows] = 0.0
            attention.query.weight[rows] = 0.0
            attention.query.bias[rows] = 5.0
    import hf_sparse_attn

    hf_sparse_attn.sparsify(model, attn_impl=attn_impl)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
