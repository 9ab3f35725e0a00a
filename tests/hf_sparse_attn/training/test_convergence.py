"""Converged training: evaluation and checkpoint frequency leave the trajectory alone; --patience keeps the best."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_sparse_attn.training import cli as train_cli

TINY = ["--from-scratch", "tiny-bert", "--max-length", "32", "--batch-size", "8", "--eval-batch-size", "64",
        "--max-eval-examples", "40", "--cpu", "--dataset", "mr", "--attn-impl", "sparsemax",
        "--max-train-examples", "40", "--lr", "3e-3"]


def _train(out: Path, *argv) -> dict:
    assert train_cli.main([*TINY, *map(str, argv), "--output-dir", str(out)]) == 0
    return json.loads((out / "final" / "final_metrics.json").read_text())


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "final" / "train_log.jsonl").read_text().splitlines()]


def test_evaluation_and_checkpoint_frequency_do_not_change_the_trajectory(tmp_path):
    # 40 examples / batch 8 = 5 steps per epoch; 12 steps cross two epoch boundaries with evaluations mid-epoch.
    rare = _train(tmp_path / "rare", "--max-steps", 12, "--eval-every", 1000, "--save-every", 1000)
    often = _train(tmp_path / "often", "--max-steps", 12, "--eval-every", 2, "--save-every", 3)
    assert len(_log(tmp_path / "often")) > len(_log(tmp_path / "rare")) + 4  # the runs did evaluate differently
    weights_rare = load_file(tmp_path / "rare" / "final" / "model.safetensors")
    weights_often = load_file(tmp_path / "often" / "final" / "model.safetensors")
    for name in weights_rare:
        assert torch.equal(weights_rare[name], weights_often[name]), name
    for split in ("validation", "test"):
        assert rare[split]["loss"] == often[split]["loss"] and rare[split]["accuracy"] == often[split]["accuracy"]


PATIENT = ["--max-steps", 30, "--eval-every", 2, "--patience", 2, "--warmup-ratio", 0]


def test_patience_stops_and_keeps_the_best_evaluated_weights(tmp_path):
    patient = _train(tmp_path / "patient", *PATIENT, "--save-every", 3)
    train = patient["train"]
    assert train["stopped_early"] is True
    log = [r for r in _log(tmp_path / "patient") if r["split"] == "validation"]
    during = [r for r in log if "best_step" in r]
    best = max(during, key=lambda r: (r["accuracy"], -r["step"]))  # ties keep the earlier weights
    assert train["best_step"] == best["step"] == patient["validation"]["step"]
    assert train["stopped_at_step"] == during[-1]["step"] == best["step"] + 2 * 2 < 30
    assert patient["validation"]["accuracy"] == best["accuracy"] == train["best_validation_accuracy"]
    assert not (tmp_path / "patient" / "best").exists()  # best weights are final/ now

    # The same run without patience, every evaluated step checkpointed: its weights at the best step are final/'s.
    full = tmp_path / "full"
    _train(full, "--max-steps", 30, "--eval-every", 2, "--warmup-ratio", 0, "--save-every", 2,
           "--save-total-limit", 100, "--keep-checkpoints")
    kept = load_file(full / "checkpoints" / f"step-{best['step']}" / "model.safetensors")
    final = load_file(tmp_path / "patient" / "final" / "model.safetensors")
    assert set(final) <= set(kept)
    for name in final:
        assert torch.equal(final[name], kept[name]), name
    stopped = [r for r in _log(full) if r["split"] == "validation" and r["step"] <= train["stopped_at_step"]]
    assert [r["accuracy"] for r in stopped] == [r["accuracy"] for r in during]


def test_patience_resumed_after_a_crash_stops_where_the_uninterrupted_run_does(tmp_path):
    import subprocess
    import sys

    from tests.helpers.crash import CRASH_EXIT_STATUS
    from tests.hf_sparse_attn.training.test_training import REPO_ROOT, subprocess_env

    whole = _train(tmp_path / "whole", *PATIENT, "--save-every", 3)
    crash_at = whole["train"]["stopped_at_step"] - 1
    argv = [*TINY, *map(str, PATIENT), "--save-every", "3", "--output-dir", str(tmp_path / "broken")]
    crash = subprocess.run([sys.executable, "-m", "tests.helpers.crash", str(crash_at), "--", *argv], cwd=REPO_ROOT,
                           env=subprocess_env(), capture_output=True, text=True)
    assert crash.returncode == CRASH_EXIT_STATUS, crash.stderr[-2000:]
    resumed = _train(tmp_path / "broken", *PATIENT, "--save-every", 3, "--resume")
    for key in ("best_step", "stopped_at_step", "best_validation_accuracy"):
        assert resumed["train"][key] == whole["train"][key]
    for split in ("validation", "test"):
        assert resumed[split] == whole[split]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_patience_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_cli.main([*TINY, "--patience", "0", "--output-dir", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "--patience must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
