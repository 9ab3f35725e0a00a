"""The main job's printed summary on a real evaluation with a layer whose heads all attend to special tokens only:
no figure with an interval for that layer, the reason in words, and what to try."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny_models import make_special_token_head_checkpoint, make_text_csv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def undefined_layer_run(tmp_path_factory):
    """Layer 0: all four heads give the [CLS] query's attention to [CLS]/[SEP] only; layer 1: ordinary heads."""
    from eval_suite.cli import main

    root = tmp_path_factory.mktemp("undefined_layer")
    checkpoint = make_special_token_head_checkpoint(root / "ckpt", heads=range(4))
    data = make_text_csv(root / "data.csv", n=60)
    out = root / "eval"
    assert main([checkpoint, "--dataset", data, "--split", "train", "--limit", "24", "--measures", "quick",
                 "--plot-examples", "0", "--output-dir", str(out)]) == 0
    metrics = root / "final_metrics.json"
    metrics.write_text(json.dumps({"test": {"accuracy": 0.75, "macro_f1": 0.7, "n_examples": 12}}))
    return out / "results.json", metrics


def run_summary(*args) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "eval_suite.console_summary", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_layer_without_defined_heads_prints_why_instead_of_a_figure(undefined_layer_run):
    results_path, metrics = undefined_layer_run
    results = json.loads(results_path.read_text())
    assert results["per_layer"][0]["n_heads_defined"] == 0
    assert results["per_layer"][0]["attention_sparsity"]["ci95"] is not None  # the file's figure the old summary printed
    text = run_summary(results_path, "--training-metrics", metrics)
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("sparsemax ") and "test accuracy 0.750, macro-F1 0.700 (12 test examples)" in lines[0]
    assert "evaluated 24 of" in lines[0]
    layer0 = next(line for line in lines if line.strip().startswith("layer 0:"))
    assert "undefined (0 of 4 heads defined)" in layer0
    assert "%" not in layer0 and not re.search(r"\[\d", layer0)  # no figure, no interval
    assert "[CLS] attention" in layer0 and "special tokens ([CLS]/[SEP]" in layer0 and "24 of 24 examples" in layer0
    layer1 = next(line for line in lines if line.strip().startswith("layer 1:"))
    assert re.search(r"layer 1: \d+\.\d% \[\d+\.\d%, \d+\.\d%\] \(4 of 4 heads defined\)", layer1)
    assert "4 of 8 heads are undefined" in text
    advice = text[text.index("what to try:"):]
    assert "--attention-query mean" in advice
    assert "--attn-layers=-1 (attn_layers=[-1]" in advice
    assert "--limit; now 24" in advice and "--min-examples (now 10)" in advice


def test_the_main_job_prints_this_summary():
    script = (REPO / "scripts" / "main_job.sh").read_text()
    assert "-m eval_suite.console_summary" in script and "ci95" not in script
