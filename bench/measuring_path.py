"""CPU time of eval_suite's measuring path (``measure_batch``, one thread) on the embedded MiniLM, today's tree
against a reference tree (an older checkout of this repository), each case in a fresh process per tree.

Cases (MiniLM all-MiniLM-L6-v2 with a seeded random head, entmax15, [CLS] attention):

* ``quick_mr``: the ``quick`` tier on N seeded MR test sentences in the runner's batches (``--sentences``);
* ``paper_mr``: the ``paper`` tier on 16 of them;
* ``quick_doc``: ``quick`` on one 512-token document (MR test sentences joined);
* ``paper_doc``: ``paper`` on that document with K = 64 sampled positions (``--sample-positions``); a tree without
  position sampling measures every position, which takes hours: it is skipped there.

Each cell is the CPU time of the measure_batch calls alone (no import, model load or output writing), best of
``--repeats``. Usage::

    python bench/measuring_path.py --reference /path/to/old/checkout [--sentences 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ("quick_mr", "paper_mr", "quick_doc", "paper_doc")


def _child(tree: str, case: str, sentences: int, k: int, repeats: int, work: str) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    import agreement as helpers  # noqa: E402  (bench helpers: MiniLM with a random head, documents, MR batches)

    sys.path.insert(0, tree)  # eval_suite and hf_sparse_attn of the tree measured
    import torch

    torch.set_num_threads(1)
    from eval_suite import settings as settings_module
    from eval_suite.batch_rows import measure_batch

    classifier = helpers.minilm_classifier(Path(work))
    if case.endswith("_mr"):
        batches = helpers.mr_batches(classifier, sentences if case == "quick_mr" else 16)
    else:
        batches = [helpers.documents(classifier, 512, 1)]
    options = {"measures": case.split("_")[0]}
    if case == "paper_doc":
        fields = settings_module.dataclasses.fields(settings_module.MeasureConfig)
        if "sample_positions" not in {f.name for f in fields}:
            return {"case": case, "skipped": "no position sampling in this tree"}
        options.update(sample_positions=k, sample_above=k)
    config = settings_module.MeasureConfig.of(**options)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        offset = 0
        for batch in batches:
            indices = list(range(offset, offset + batch.size))
            measure_batch(classifier, batch, [0] * batch.size, indices, config)
            offset += batch.size
        best = min(best, time.process_time() - start)
    examples = sum(b.size for b in batches)
    return {"case": case, "cpu_s": best, "examples": examples, "tokens": int(sum(int(b.attention_mask.sum())
                                                                                 for b in batches))}


def _run(tree: str, case: str, args) -> dict:
    command = [sys.executable, __file__, "--child", tree, case, "--sentences", str(args.sentences),
               "--sample-positions", str(args.sample_positions), "--repeats", str(args.repeats), "--work", args.work]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tree, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"case": case, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="an older checkout to compare with (default: none)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--sample-positions", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default="/tmp/bench_measuring_path")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child, args.sentences, args.sample_positions, args.repeats, args.work)))
        return 0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"load at start: {os.getloadavg()}", flush=True)
    rows = []
    for case in args.cases.split(","):
        now = _run(str(REPO), case, args)
        before = _run(args.reference, case, args) if args.reference else None
        rows.append({"case": case, "now": now, "reference": before})
        ratio = (before["cpu_s"] / now["cpu_s"]) if before and "cpu_s" in before and "cpu_s" in now else None
        print(f"{case}: now {now.get('cpu_s', now)} CPU-s over {now.get('examples')} examples"
              + (f"; reference {before.get('cpu_s', before)}" if before else "")
              + (f"; reference / now {ratio:.2f}x" if ratio else ""), flush=True)
    print(f"load at end: {os.getloadavg()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
