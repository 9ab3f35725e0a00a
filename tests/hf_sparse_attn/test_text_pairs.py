"""Sentence pairs (--text-pair-column): loaded from local csv/jsonl files and Hub datasets, tokenised as one pair
([CLS] A [SEP] B [SEP], token types 0 then 1), and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from hf_sparse_attn.data import DataError, load_text_classification, tokenize_for_classification
from tests.helpers.tiny_models import make_text_pair_file, make_tiny_checkpoint


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_local_pair_file_loads_both_texts(tmp_path, suffix):
    path = make_text_pair_file(tmp_path / f"pairs{suffix}", n=40)
    dd = load_text_classification(path, text_column="premise", text_pair_column="hypothesis")
    assert set(dd) == {"train", "validation", "test"}
    for split in dd.values():
        assert split.column_names == ["text", "label", "text_pair"]
    rows = [json.loads(line) for line in open(path)] if suffix == ".jsonl" else None
    loaded = {(r["text"], r["text_pair"], r["label"]) for s in dd.values() for r in s}
    if rows:
        assert loaded == {(r["premise"], r["hypothesis"], r["label"]) for r in rows}
    assert len(loaded) == 40


def test_a_hub_pair_dataset_loads_both_texts(monkeypatch):
    hub = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"sentence1": [f"w{i} w{i + 1}" for i in range(20)],
                                           "sentence2": [f"w{i + 2}" for i in range(20)],
                                           "label": [i % 2 for i in range(20)]})
        for split in ("train", "validation", "test")})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: asked.append(args) or hub)
    dd = load_text_classification("glue/mrpc", text_column="sentence1", text_pair_column="sentence2")
    assert asked == [("glue", "mrpc")]
    assert list(dd["test"]["text_pair"]) == list(hub["test"]["sentence2"])
    assert list(dd["test"]["text"]) == list(hub["test"]["sentence1"])


def test_pair_input_errors_are_one_line(tmp_path):
    path = make_text_pair_file(tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="no column 'second'.*--text-pair-column"):
        load_text_classification(path, text_column="premise", text_pair_column="second")
    with pytest.raises(DataError, match="single texts; drop --text-pair-column"):
        load_text_classification("mr", text_pair_column="hypothesis")


def test_pairs_with_an_empty_segment_are_dropped_with_a_count(tmp_path, caplog):
    path = tmp_path / "pairs.jsonl"
    rows = [{"a": f"w{i} w2", "b": "" if i in (3, 7) else f"w{i}", "label": i % 2} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING", logger="hf_sparse_attn.data"):
        dd = load_text_classification(str(path), text_column="a", text_pair_column="b")
    assert sum(len(s) for s in dd.values()) == 28 and "dropped 2 empty or missing pairs" in caplog.text


def _pair_tokenisation_is_one_sequence(tokenizer, tmp_path, max_length):
    path = make_text_pair_file(tmp_path / "pairs.csv", n=20, words=["good", "bad", "film", "plot", "a"])
    split = load_text_classification(path, text_column="premise", text_pair_column="hypothesis")["train"]
    tokenized, n_truncated = tokenize_for_classification(split, tokenizer, max_length)
    assert n_truncated == 0 and "text_pair" not in tokenized.column_names
    for example, encoded in zip(split, tokenized):
        first, second = tokenizer.tokenize(example["text"]), tokenizer.tokenize(example["text_pair"])
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        assert tokens == ["[CLS]", *first, "[SEP]", *second, "[SEP]"]
        assert encoded["token_type_ids"] == [0] * (len(first) + 2) + [1] * (len(second) + 1)
    short, n_short = tokenize_for_classification(split, tokenizer, 8)
    assert n_short > 0 and all(len(ids) <= 8 and ids.count(tokenizer.sep_token_id) == 2
                               for ids in short["input_ids"])  # cut from the longer text: both keep tokens


def test_pairs_tokenise_as_one_sequence_with_minilm(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    _pair_tokenisation_is_one_sequence(AutoTokenizer.from_pretrained(minilm_path), tmp_path, 64)


def test_pairs_tokenise_as_one_sequence_with_a_tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    folder = make_tiny_checkpoint(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["good", "bad", "film", "plot", "a"])
    _pair_tokenisation_is_one_sequence(tokenizer, tmp_path, 64)


def test_training_on_pairs_feeds_the_second_text_as_token_type_1(tmp_path):
    """With no weight decay, AdamW leaves a parameter without gradient exactly where it was: the token-type-1
    embedding moves only if the second texts reached the model as token type 1."""
    from hf_sparse_attn.training import cli as train_cli

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", num_labels=2)
    data = make_text_pair_file(tmp_path / "pairs.csv", n=48)
    out = tmp_path / "run"
    assert train_cli.main(["--model", checkpoint, "--dataset", data, "--text-column", "premise", "--text-pair-column",
                           "hypothesis", "--max-steps", "3", "--batch-size", "8", "--weight-decay", "0",
                           "--max-length", "32", "--attn-impl", "sparsemax", "--cpu",
                           "--output-dir", str(out)]) == 0
    before = load_file(Path(checkpoint) / "model.safetensors")["bert.embeddings.token_type_embeddings.weight"]
    after = load_file(out / "final" / "model.safetensors")["bert.embeddings.token_type_embeddings.weight"]
    assert not torch.equal(before[1], after[1])
    record = json.loads((out / "final" / "training_args.json").read_text())
    assert record["text_pair_column"] == "hypothesis"
    assert json.loads((out / "final" / "final_metrics.json").read_text())["test"]["n_examples"] > 0
