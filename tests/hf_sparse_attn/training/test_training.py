"""Tests for hf_sparse_attn.training: output folder, logged statistics, learned alpha, resume, two processes, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hf_sparse_attn
from hf_sparse_attn.data import load_text_classification
from hf_sparse_attn.training import build_optimizer
from hf_sparse_attn.training import cli as train_cli
from hf_sparse_attn.training.from_scratch import (
    PRESETS,
    FromScratchConfigError,
    build_from_scratch_config,
    build_word_level_tokenizer,
    load_from_scratch_config,
)
from hf_sparse_attn.training.metrics import macro_f1
from tests.helpers.crash import CRASH_EXIT_STATUS
from tests.helpers.launch import cpu_launch_command

REPO_ROOT = Path(__file__).resolve().parents[3]
# 2-layer, 4-head BERT with a word-level tokenizer built from the data: no download, a few seconds per run.
TINY = ["--from-scratch", "tiny-bert", "--max-length", "32", "--batch-size", "8", "--eval-batch-size", "64",
        "--max-eval-examples", "40", "--cpu"]


def run_main(*argv):
    assert train_cli.main([*TINY, *map(str, argv)]) == 0


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def subprocess_env():
    # Same thread settings as this process: bitwise equality across runs needs the same float reduction order.
    # (other tests may have changed this process's torch thread count, so hand the current one down explicitly)
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS=str(torch.get_num_threads()))


@pytest.fixture(scope="module")
def sparsegen_run(tmp_path_factory):
    """One tiny TREC run shared by the tests that inspect a finished folder."""
    out = tmp_path_factory.mktemp("run") / "trec-sparsegen"
    run_main("--dataset", "trec", "--attn-impl", "sparsegen_lin:lambda=0.8", "--max-train-examples", "48",
             "--max-steps", "6", "--eval-every", "3", "--save-every", "3", "--output-dir", out)
    return out


def test_final_folder_is_hub_ready_and_complete(sparsegen_run):
    final = sparsegen_run / "final"
    names = {p.name for p in final.iterdir()}
    assert {"model.safetensors", "config.json", "sparse_attn_modeling.py", "sparse_attn_mappings.py",
            "tokenizer.json", "tokenizer_config.json", "training_args.json", "final_metrics.json",
            "train_log.jsonl"} <= names
    assert not (sparsegen_run / "checkpoints").exists()  # removed once the final folder exists
    assert not [p for p in sparsegen_run.iterdir() if p.name.endswith(".tmp")]
    config = json.loads((final / "config.json").read_text())
    assert config["sparse_attention"]["attn_impl"] == "sparsegen_lin"
    assert config["sparse_attention"]["lambda"] == 0.8
    assert sorted(config["id2label"].values()) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    args = json.loads((final / "training_args.json").read_text())
    assert args["attn_impl"] == "sparsegen_lin:lambda=0.8" and args["max_steps"] == 6 and args["seed"] == 42
    metrics = json.loads((final / "final_metrics.json").read_text())
    assert set(metrics) == {"validation", "test", "train"} and metrics["train"]["step"] == 6
    for split in ("validation", "test"):
        assert {"accuracy", "macro_f1", "loss", "step", "epoch"} <= set(metrics[split])
        assert metrics[split]["step"] == 6 and metrics[split]["n_examples"] == 40

    log = read_log(final / "train_log.jsonl")
    assert log == read_log(sparsegen_run / "train_log.jsonl")
    assert [(r["step"], r["split"]) for r in log] == [(3, "validation"), (6, "validation"), (6, "test")]
    for record in log:
        assert {"step", "epoch", "split", "loss", "accuracy", "macro_f1", "per_layer_head"} <= set(record)
        cells = {(c["layer"], c["head"]) for c in record["per_layer_head"]}
        assert cells == {(layer, head) for layer in range(2) for head in range(4)}
        for cell in record["per_layer_head"]:
            assert 0.0 <= cell["sparsity"] <= 1.0 and cell["support_size"] >= 1.0 and cell["alpha"] == 2.0
    assert max(c["sparsity"] for c in log[-1]["per_layer_head"]) > 0.1  # sparsegen lambda=0.8 is sparse


def test_logged_metrics_match_the_reloaded_model(sparsegen_run):
    """Reload the final folder, recompute test accuracy, loss and per-head sparsity/support independently."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = sparsegen_run / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    test = load_text_classification("trec")["test"].select(range(40))
    batch = tokenizer(list(test["text"]), padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor(list(test["label"]))
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    metrics = json.loads((final / "final_metrics.json").read_text())["test"]
    predictions = out.logits.argmax(-1)
    assert metrics["accuracy"] == pytest.approx((predictions == labels).float().mean().item())
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item(), rel=1e-5)

    logged = {(c["layer"], c["head"]): c for c in read_log(final / "train_log.jsonl")[-1]["per_layer_head"]}
    lengths = batch["attention_mask"].sum(-1).tolist()
    for layer, attention in enumerate(out.attentions):
        for head in range(attention.shape[1]):
            fractions, supports = [], []
            for example, n in enumerate(lengths):
                rows = attention[example, head, :n, :n]
                assert torch.all(attention[example, head, :n, n:] == 0)  # padded keys get exactly zero
                fractions += (rows == 0).double().mean(-1).tolist()
                supports += (rows != 0).double().sum(-1).tolist()
            assert logged[layer, head]["sparsity"] == pytest.approx(np.mean(fractions), rel=1e-9)
            assert logged[layer, head]["support_size"] == pytest.approx(np.mean(supports), rel=1e-9)


def test_existing_output_needs_resume_or_overwrite(sparsegen_run, capsys):
    same = ["--dataset", "trec", "--attn-impl", "sparsegen_lin:lambda=0.8", "--max-train-examples", "48",
            "--max-steps", "6", "--eval-every", "3", "--save-every", "3", "--output-dir", str(sparsegen_run)]
    with pytest.raises(SystemExit) as raised:
        train_cli.main([*TINY, *same])
    assert raised.value.code == 2 and "already holds a finished run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main([*TINY, *same, "--resume", "--lr", "1e-3"])
    assert "--resume must repeat" in capsys.readouterr().err
    before = (sparsegen_run / "final" / "model.safetensors").stat().st_mtime_ns
    assert train_cli.main([*TINY, *same, "--resume"]) == 0  # finished: nothing to do
    assert (sparsegen_run / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_learned_alpha_trains_in_its_own_group(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config, attn_impl="entmax_learned")
    optimizer = build_optimizer(model, lr=1e-4, alpha_lr=0.05, weight_decay=0.01)
    groups = {g["name"]: g for g in optimizer.param_groups}
    alpha_params = [p for n, p in model.named_parameters() if n.endswith("sparse_attn.alpha_logit")]
    assert len(alpha_params) == 2
    assert {id(p) for p in groups["attention_alpha"]["params"]} == {id(p) for p in alpha_params}
    assert groups["attention_alpha"]["lr"] == 0.05 and groups["attention_alpha"]["weight_decay"] == 0.0
    assert groups["biases_and_norms"]["weight_decay"] == 0.0 and groups["weights"]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    out = tmp_path / "learned"
    run_main("--dataset", "mr", "--attn-impl", "entmax_learned", "--alpha-lr", "0.05", "--warmup-ratio", "0",
             "--max-train-examples", "64", "--max-steps", "6", "--output-dir", out)
    logged = np.array([[c["layer"], c["head"], c["alpha"]] for c in read_log(out / "train_log.jsonl")[-1]["per_layer_head"]])
    moved = np.abs(logged[:, 2] - 1.5)
    assert np.all(moved > 1e-6) and moved.max() > 1e-2, "alpha did not move from its initial 1.5"
    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "final")
    alphas = hf_sparse_attn.attention_alphas(reloaded)
    assert np.allclose(alphas[logged[:, 0].astype(int), logged[:, 1].astype(int)].numpy(), logged[:, 2])


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    # 24 examples / batch 8 = 3 steps per epoch; checkpoint every 2 steps; crash after step 5 so that resuming
    # goes back to step 4, i.e. into the middle of the second epoch, and redoes step 5.
    run = ["--dataset", "mr", "--attn-impl", "sparsemax", "--max-train-examples", "24", "--max-steps", "8",
           "--eval-every", "2", "--save-every", "2"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_main(*run, "--output-dir", whole)

    crash = subprocess.run([sys.executable, "-m", "tests.helpers.crash", "5", "--", *TINY, *run, "--output-dir",
                            str(broken)], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert crash.returncode == CRASH_EXIT_STATUS, crash.stderr[-2000:]
    assert not (broken / "final").exists()
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert [r["step"] for r in read_log(broken / "train_log.jsonl")] == [2, 4]

    with pytest.raises(SystemExit):  # an unfinished run is not silently overwritten
        run_main(*run, "--output-dir", broken)
    run_main(*run, "--output-dir", broken, "--resume")

    weights_whole, weights_resumed = load_file(whole / "final" / "model.safetensors"), load_file(
        broken / "final" / "model.safetensors")
    assert weights_whole.keys() == weights_resumed.keys()
    for name in weights_whole:
        assert torch.equal(weights_whole[name], weights_resumed[name]), name
    metrics_whole = json.loads((whole / "final" / "final_metrics.json").read_text())
    metrics_resumed = json.loads((broken / "final" / "final_metrics.json").read_text())
    for split in ("validation", "test"):
        assert metrics_whole[split] == metrics_resumed[split]
    assert read_log(whole / "final" / "train_log.jsonl") == read_log(broken / "final" / "train_log.jsonl")


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    out = tmp_path / "ddp"
    # The trainer switches accelerate to CPU (gloo) by itself when there is no GPU (see tests/helpers/launch.py).
    command = cpu_launch_command("hf_sparse_attn.training", [
        *TINY, "--dataset", "mr", "--attn-impl", "entmax15", "--max-train-examples", "64", "--max-steps", "3",
        "--eval-every", "2", "--save-every", "2", "--output-dir", str(out)])
    done = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    metrics = json.loads((out / "final" / "final_metrics.json").read_text())
    assert metrics["train"]["num_processes"] == 2
    digests = metrics["train"]["process_parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both replicas hold the same trained weights
    assert metrics["train"]["examples_seen_this_session"] == 2 * 8 * 3  # each process took its own batches
    assert metrics["test"]["n_examples"] == 40  # evaluation gathered both shards without duplicates
    assert done.stdout.count("model folder:") == 1  # one summary, from the main process


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "no/such/file.csv"], "does not exist"),
        (["--dataset", "mr", "--attn-impl", "entmax:alpha=3"], "needs alpha in (1, 2], got alpha=3"),
        (["--dataset", "mr", "--attn-impl", "bogus"], "unknown attn_impl"),
        (["--dataset", "mr", "--max-steps", "0"], "--max-steps must be >= 1"),
        (["--dataset", "mr", "--resume", "--overwrite"], "contradict"),
        (["--dataset", "mr", "--from-scratch", "no-such-preset"], "neither a preset"),
        (["--dataset", "mr", "--attn-impl", "sparsemax", "--attn-layers", "5"], "does not exist"),
        (["--dataset", "mr", "--attn-impl", "sparsemax:layers=[0]", "--attn-layers", "1"], "give them once"),
        (["--dataset", "mr", "--attn-impl", "sparsemax", "--attn-layers", "last"], "cannot read layer"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as raised:
        train_cli.main([*TINY, *argv, "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert raised.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_column_in_local_file(tmp_path, capsys):
    data = tmp_path / "reviews.csv"
    data.write_text("body,label\nfine film,1\nawful,0\n")
    with pytest.raises(SystemExit):
        train_cli.main([*TINY, "--dataset", str(data), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "no column 'text'" in err and "--text-column" in err
    assert not (tmp_path / "out" / "final").exists() and not (tmp_path / "out" / "checkpoints").exists()


def test_scratch_presets_and_tokenizer(tmp_path):
    texts = ["a good film", "a bad film", "good acting , bad plot", "the plot is good"] * 3
    tokenizer = build_word_level_tokenizer(texts, min_frequency=1)
    assert tokenizer.get_vocab() == build_word_level_tokenizer(texts, min_frequency=1).get_vocab()
    ids = tokenizer("A GOOD film, unseen")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "good" in tokens and "[UNK]" in tokens
    tokenizer.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "tok")("a good film")["input_ids"] == tokenizer("a good film")["input_ids"]

    paper = build_from_scratch_config(load_from_scratch_config("paper-roberta"), tokenizer, max_length=64)
    assert (paper.model_type, paper.num_hidden_layers, paper.num_attention_heads, paper.hidden_size) == ("roberta", 2, 1, 128)
    assert paper.vocab_size == len(tokenizer) and paper.max_position_embeddings >= 64 + paper.pad_token_id + 1
    assert {"paper-roberta-4h", "tiny-bert"} <= set(PRESETS)
    custom = tmp_path / "config.json"
    custom.write_text(json.dumps({"model_type": "bert", "hidden_size": 16, "num_attention_heads": 2,
                                  "num_hidden_layers": 1, "intermediate_size": 20, "max_position_embeddings": 16}))
    assert build_from_scratch_config(load_from_scratch_config(str(custom)), tokenizer, max_length=16).hidden_size == 16
    with pytest.raises(FromScratchConfigError, match="max_position_embeddings"):
        build_from_scratch_config(load_from_scratch_config(str(custom)), tokenizer, max_length=64)
    custom.write_text("{}")
    with pytest.raises(FromScratchConfigError, match="model_type"):
        load_from_scratch_config(str(custom))


def test_macro_f1_against_confusion_matrix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, size=200))  # class 4: never a label
    confusion = np.zeros((5, 5))
    np.add.at(confusion, (labels, predictions), 1)
    precision = np.diag(confusion) / np.maximum(confusion.sum(0), 1)
    recall = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    assert macro_f1(predictions, labels) == pytest.approx(f1.mean())


@pytest.mark.slow
def test_minilm_short_run_is_sparse(tmp_path):
    """The real embedded MiniLM: loads with a fresh head, trains two steps, logs peaky entmax15 attention."""
    out = tmp_path / "minilm"
    assert train_cli.main(["--dataset", "mr", "--attn-impl", "entmax15", "--max-steps", "2", "--batch-size", "4",
                              "--max-length", "32", "--max-train-examples", "16", "--max-eval-examples", "16",
                              "--output-dir", str(out), "--cpu"]) == 0
    record = read_log(out / "final" / "train_log.jsonl")[-1]
    assert len(record["per_layer_head"]) == 6 * 12
    assert record["sparsity"] > 0.5  # pretrained scores are peaky: entmax15 zeroes most keys
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["sparse_attention"]["attn_impl"] == "entmax15" and config["id2label"] == {"0": "rotten", "1": "fresh"}


def test_attn_layers_trains_only_the_chosen_layer_sparse(tmp_path):
    out = tmp_path / "last-layer"
    run_main("--dataset", "trec", "--attn-impl", "sparsemax", "--attn-layers=-1", "--max-train-examples", "24",
             "--max-steps", "2", "--eval-every", "2", "--save-every", "2", "--output-dir", out)
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["sparse_attention"]["layers"] == [1] and config["model_type"] == "sparse_attn_bert"
    args = json.loads((out / "training_args.json").read_text())
    assert args["attn_impl"] == "sparsemax:layers=[-1]" and args["attn_layers"] == "[-1]"
    record = read_log(out / "train_log.jsonl")[-1]
    alphas = {(r["layer"], r["head"]): r["alpha"] for r in record["per_layer_head"]}
    assert {a for (layer, _), a in alphas.items() if layer == 0} == {1.0}
    assert {a for (layer, _), a in alphas.items() if layer == 1} == {2.0}
    from transformers import AutoModelForSequenceClassification

    assert hf_sparse_attn.get_spec(AutoModelForSequenceClassification.from_pretrained(final)).layers == (1,)
