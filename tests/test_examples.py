"""Every python block of the README and every file under examples/ run as written (offline, embedded MiniLM), each in a
fresh process in an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def run_python(args, cwd) -> subprocess.CompletedProcess:
    # One thread: on a shared 2-core machine OpenMP threads spin-wait on each other (the Trainer example took 760 s
    # with two threads there, against 64 s of CPU time with one).
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_MODULES_CACHE=str(Path(cwd) / "modules"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def readme_python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of the README: what a reader copies."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


README_BLOCKS = readme_python_blocks()


@pytest.mark.slow
@pytest.mark.parametrize("line, block", README_BLOCKS, ids=[f"README.md:{line}" for line, _ in README_BLOCKS])
def test_readme_python_block_runs_as_written(line, block, tmp_path, record_property):
    started = time.perf_counter()
    done = run_python(["-c", block], tmp_path)
    seconds = time.perf_counter() - started
    record_property("seconds", round(seconds, 1))
    print(f"README.md:{line}: ran in {seconds:.1f} s; printed {done.stdout.strip()!r}")
    if 'save_pretrained("ckpt")' in block:
        assert (tmp_path / "ckpt" / "config.json").is_file() and (tmp_path / "ckpt" / "sparse_attn_modeling.py").is_file()


def test_the_readme_loads_its_saved_folder_with_pipeline():
    """The folder the first block saves is loaded by pipeline() in that same block, so the test above runs it."""
    first = README_BLOCKS[0][1]
    assert 'pipeline("text-classification", model="ckpt")' in first
    assert first.index('save_pretrained("ckpt")') < first.index('pipeline("text-classification", model="ckpt")')


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example, tmp_path):
    done = run_python([str(example)], tmp_path)
    assert done.stdout.strip(), f"{example.name} printed nothing"


def test_every_example_is_listed_in_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert EXAMPLES and all(f"`{p.name}`" in readme for p in EXAMPLES)
