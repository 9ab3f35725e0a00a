"""The card's YAML metadata: built with huggingface_hub's ModelCardData / EvalResult, merged into a user's metadata.

Keys we own are replaced on every render (``OWNED_KEYS``); every other key the user wrote is kept, in its place.
Tags are merged: ours first, then the user's own, minus tags naming a mapping this checkpoint no longer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index

from hf_sparse_attn.constants import FINAL_METRICS_FILE, RESULTS_FILE
from hf_sparse_attn.public_names import local_name

from .checkpoint import CheckpointInfo
from .errors import CardError
from .results import CardScores

METADATA_KEY = "hf_sparse_attn"  # our machine-readable block: attn setting, weights fingerprint, results file
OWNED_KEYS = ("library_name", "pipeline_tag", "tags", "base_model", "datasets", "metrics", "model-index", METADATA_KEY)
# Keys we fill only when we know a value; otherwise a value the user wrote stays.
KEEP_USER_VALUE_WHEN_UNKNOWN = ("base_model", "datasets")
BASE_TAGS = ["sparse-attention", "hf-sparse-attn", "interpretability", "text-classification"]
ALL_MAPPING_NAMES = ("softmax", "sparsemax", "entmax15", "entmax", "entmax_learned", "sparsegen_lin")

# Datasets the project embeds (docs/CONTRACTS.md section 2): the Hub dataset they are copies of, and a title.
EMBEDDED_DATASETS = {
    "mr": ("cornell-movie-review-data/rotten_tomatoes", "MR movie reviews (Pang & Lee, 2005)", None),
    "trec": ("CogComp/trec", "TREC-6 question classification", None),
}
# Hub datasets whose configs the data loader addresses as "name/config".
CONFIG_STYLE_DATASETS = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue", "tweet_eval": "cardiffnlp/tweet_eval"}
LOCAL_DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".tsv", ".txt")


def mapping_tag(attn_impl: str) -> str:
    return attn_impl.replace("_", "-")


def dataset_identity(dataset: str) -> tuple[str | None, str, str, str | None]:
    """(Hub dataset id for ``datasets:`` or None, model-index dataset type, display name, config)."""
    name = dataset.strip()
    local = local_name(name)  # how training and evaluation record a local path (hf_sparse_attn.public_names)
    if local is not None:
        return None, "custom", f"local {'file' if name.endswith('(local file)') else 'folder'} {local}", None
    if name.lower() in EMBEDDED_DATASETS:
        hub_id, title, config = EMBEDDED_DATASETS[name.lower()]
        return hub_id, hub_id, title, config
    if name.lower().endswith(LOCAL_DATA_SUFFIXES) or Path(name).exists():
        stem = Path(name).name
        return None, "custom", f"local file {stem}", None
    head, _, tail = name.partition("/")
    if head in CONFIG_STYLE_DATASETS and tail:
        return CONFIG_STYLE_DATASETS[head], CONFIG_STYLE_DATASETS[head], f"{head} ({tail})", tail
    return name, name, name, None


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class Headline:
    """Where the card's accuracy and macro-F1 come from: the evaluation's results.json, or training's test split."""

    dataset: str
    split: str
    accuracy: float
    macro_f1: float
    n_examples: int | None
    source: str  # the file the numbers come from


def headline_from_results(results: dict) -> Headline:
    return Headline(results["dataset"], results["split"], results["accuracy"], results["macro_f1"],
                    results["n_examples"], RESULTS_FILE)


def headline_from_training(info: CheckpointInfo) -> Headline | None:
    """Test-split metrics from final_metrics.json, for a card rendered before any evaluation."""
    test = (info.final_metrics or {}).get("test")
    dataset = (info.training_args or {}).get("dataset")
    if not isinstance(test, dict) or not isinstance(dataset, str):
        return None
    accuracy, macro_f1 = test.get("accuracy"), test.get("macro_f1")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (accuracy, macro_f1)):
        return None
    return Headline(dataset, "test", accuracy, macro_f1, None, FINAL_METRICS_FILE)


def eval_results(headline: Headline, scores: CardScores | None) -> list[EvalResult]:
    """accuracy, macro-F1 and the summary interpretability scores as model-index entries (None values left out)."""
    _, dataset_type, dataset_name, dataset_config = dataset_identity(headline.dataset)
    common = dict(task_type="text-classification", task_name="Text Classification", dataset_type=dataset_type,
                  dataset_name=dataset_name, dataset_config=dataset_config, dataset_split=headline.split)
    entries = [
        ("accuracy", headline.accuracy, "Accuracy", None),
        ("f1", headline.macro_f1, "Macro F1", {"average": "macro"}),
    ]
    if scores is not None:
        method = scores.gradient_method
        entries += [
            ("attention_sparsity", scores.mean_attention_sparsity, "Mean attention sparsity (share of exact zeros)",
             None),
            ("kendall_tau_b_grad_best_layer", scores.tau_best_layer,
             f"Mean Kendall tau-b of attention with gradient importance, best layer ({scores.best_layer})",
             {"importance": method, "layer": scores.best_layer}),
            ("kendall_tau_b_grad_last_layer", scores.tau_last_layer,
             f"Mean Kendall tau-b of attention with gradient importance, last layer ({scores.last_layer})",
             {"importance": method, "layer": scores.last_layer}),
            ("input_to_repr_entropy", scores.mean_input_to_repr_entropy,
             "Mean normalised entropy of input-to-representation influence", None),
        ]
    return [EvalResult(metric_type=kind, metric_value=_rounded(value), metric_name=title, metric_args=args, **common)
            for kind, value, title, args in entries if value is not None]


def our_metadata(info: CheckpointInfo, headline: Headline | None, scores: CardScores | None, *, model_name: str,
                 base_model: str | None, repo_id: str | None, results_file: str | None) -> dict:
    """The metadata keys we own, as the plain dict that goes into the YAML block."""
    hub_dataset = dataset_identity(headline.dataset)[0] if headline else None
    if hub_dataset is None and isinstance((info.training_args or {}).get("dataset"), str):
        hub_dataset = dataset_identity(info.training_args["dataset"])[0]
    our_block = {
        "attn_impl": info.attn_impl,
        "sparse_attention": info.sparse_attention,
        "weights_fingerprint": info.fingerprint,
        "results": results_file,
        "gradient_method": scores.gradient_method if scores else None,
    }
    if repo_id:
        our_block["repo_id"] = repo_id
    model_index = eval_results_to_model_index(model_name, eval_results(headline, scores)) if headline else None
    return {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": BASE_TAGS + [mapping_tag(info.attn_impl)],
        "base_model": base_model,
        "datasets": [hub_dataset] if hub_dataset else None,
        "metrics": ["accuracy", "f1"],
        "model-index": model_index,
        METADATA_KEY: {k: v for k, v in our_block.items() if v is not None},
    }


def merge_metadata(existing: dict, ours: dict) -> dict:
    """The user's metadata with our keys replaced (see module docstring); key order: the user's first."""
    merged = dict(existing)
    for key in OWNED_KEYS:
        value = ours.get(key)
        if key == "tags":
            stale = set(BASE_TAGS) | {mapping_tag(n) for n in ALL_MAPPING_NAMES}
            user_tags = existing.get("tags") or []
            user_tags = [user_tags] if isinstance(user_tags, str) else list(user_tags)
            value = list(value) + [t for t in user_tags if t not in value and t not in stale]
        if value is None and key in KEEP_USER_VALUE_WHEN_UNKNOWN:
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def card_data_from(metadata: dict) -> ModelCardData:
    """ModelCardData for a merged metadata dict; CardError if huggingface_hub rejects it (e.g. a broken model-index)."""
    try:
        return ModelCardData(**metadata)
    except (ValueError, TypeError, KeyError) as err:
        raise CardError(f"README.md metadata does not parse with huggingface_hub ({err}); fix or remove the YAML block") from None
