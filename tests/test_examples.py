"""The README's first code block and every file under examples/ run as written (offline, embedded MiniLM), each in a
fresh process in an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def run_python(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_MODULES_CACHE=str(Path(cwd) / "modules"))
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_readme_first_code_block_runs_as_written(tmp_path):
    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    run_python(["-c", block], tmp_path)
    assert (tmp_path / "ckpt" / "config.json").is_file() and (tmp_path / "ckpt" / "sparse_attn_modeling.py").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example, tmp_path):
    done = run_python([str(example)], tmp_path)
    assert done.stdout.strip(), f"{example.name} printed nothing"


def test_every_example_is_listed_in_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert EXAMPLES and all(f"`{p.name}`" in readme for p in EXAMPLES)
