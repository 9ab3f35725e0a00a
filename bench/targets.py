"""The evaluation suite's speed targets in one table: each run against its floor, measured in this run.

    python bench/targets.py               # 64 MR sentences, paper on 100 (the main job's evaluation): 34 min at load 8
    python bench/targets.py --quick       # 16 sentences, paper on 4, no sampled document: 6 min at load 6 (2 cores)
    python bench/targets.py --json out.json

MiniLM (all-MiniLM-L6-v2, embedded offline) with entmax15 attention and a probe head (built as
``bench/evaluation.py`` builds it, cached in ``--work-dir``), seeded MR test sentences, one torch thread everywhere
(``OMP_NUM_THREADS=1``, ``--threads 1``), CPU seconds (user + system) so that other jobs on the machine change the
numbers little; the load average is printed before and after. Rows:

1. ``quick`` whole command (``python -m eval_suite ... --measures quick``, plots, report and card-ready outputs
   included) against a fresh process that imports torch, transformers and hf_sparse_attn, loads the same checkpoint
   and runs one forward pass and one input-gradient pass over the same sentences: both pay imports and loading, so
   the ratio is what the suite adds to the least any tool must do. The same command with ``--no-plots`` too.
2. ``quick`` measuring loop (``run_info.json`` ``measure_cpu_seconds``, forecast probe excluded) against its FLOP
   floor.
3. ``paper`` measuring loop per sentence against its FLOP floor.
4. ``quick`` on one 512-token document (MR test sentences joined), the measurement alone.
5. ``paper`` with ``--sample-positions 64`` on the same document, where this version has the flag.
6. The forecast: seconds from the command's start until it printed its forecast, and forecast / measured time of the
   measuring loop, for the quick and paper runs.

The FLOP floor of a row is the matmul FLOPs its measurements need, counted with
``torch.utils.flop_counter.FlopCounterMode`` on each sentence alone (no padding; a length-stratified sample of
``--flop-n`` sentences for paper, scaled to the run), divided by the CPU rate of a float32 matmul of MiniLM's FFN
shape timed in this process (best of five). Everything above the floor is overhead: padding, small ops, Python,
the agreement metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.evaluation import build_probe_checkpoint  # noqa: E402
from bench.measures import document_text  # noqa: E402

DOC_TOKENS = 512
SAMPLED_POSITIONS = 64

# The least any tool does with these sentences: import, load, one forward and one input-gradient pass.
BASELINE = """
import json, sys
import torch
import hf_sparse_attn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
checkpoint, texts = sys.argv[1], json.load(open(sys.argv[2]))
model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
probability = logits.softmax(-1).max(-1).values.sum()
torch.autograd.grad(probability, embeds)
"""


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run_child(command: list[str], marker: str | None = None) -> dict:
    """Run ``command``; its CPU seconds (user + system, from the kernel's accounting of children), wall seconds,
    and the wall seconds after which a stdout line containing ``marker`` appeared."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    seen: dict = {"marker_after": None, "marker_cpu": None, "stdout": [], "stderr": ""}

    def read_stdout():
        for line in process.stdout:
            if marker and seen["marker_after"] is None and marker in line:
                seen["marker_after"] = time.perf_counter() - started
                seen["marker_cpu"] = process_cpu(process.pid)
            seen["stdout"].append(line)

    reader = threading.Thread(target=read_stdout)
    reader.start()
    seen["stderr"] = process.stderr.read()
    process.wait()
    reader.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed ({process.returncode}): {seen['stderr'][-2000:]}")
    return {"cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "wall": time.perf_counter() - started, "marker_after": seen["marker_after"],
            "marker_cpu": seen["marker_cpu"],
            "stdout": "".join(seen["stdout"])}


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a running process has used so far (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def matmul_rate() -> float:
    """CPU FLOP/s of a float32 matmul of MiniLM's FFN shape ([2048, 384] @ [384, 1536]), one thread, best of five."""
    a, b = torch.randn(2048, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(8):
            a @ b
        best = min(best, (time.process_time() - start) / 8)
    return 2 * 2048 * 384 * 1536 / best


def eval_command(checkpoint: Path, out: Path, measures: str, limit: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "eval_suite", str(checkpoint), "--measures", measures, "--limit", str(limit),
            "--threads", "1", "--output-dir", str(out), "--overwrite", *extra]


def loop_cpu(out: Path) -> tuple[float, dict]:
    """CPU seconds of the measuring loop without the forecast's probe, and the run's run_info.json."""
    info = json.loads((out / "run_info.json").read_text())
    return info["measure_cpu_seconds"] - info["forecast"].get("probe_cpu_seconds", 0.0), info


def sentence_encodings(classifier, n: int) -> list[dict]:
    """The encodings of the n seeded MR test sentences ``python -m eval_suite --limit n`` evaluates."""
    from eval_suite.batching import encode_texts
    from eval_suite.runner import select_examples
    from hf_sparse_attn.data import load_text_classification

    split = load_text_classification("mr")["test"]
    texts = [split[i]["text"] for i in select_examples(len(split), n, seed=0)]
    return encode_texts(classifier.tokenizer, texts, classifier.max_length)[0], texts


def measure_alone(classifier, encoding: dict, measures: str, count_flops: bool = False, **settings) -> float:
    """CPU seconds (or, with ``count_flops``, matmul FLOPs) of measuring one example alone."""
    from torch.utils.flop_counter import FlopCounterMode

    from eval_suite.batch_rows import measure_batch
    from eval_suite.batching import collate
    from eval_suite.settings import MeasureConfig

    config = MeasureConfig.of(measures=measures, **settings)
    batch = collate([encoding], classifier.tokenizer.pad_token_id or 0)
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            measure_batch(classifier, batch, [0], [0], config)
        return float(counter.get_total_flops())
    start = time.process_time()
    measure_batch(classifier, batch, [0], [0], config)
    return time.process_time() - start


def floor_seconds(classifier, encodings: list[dict], measures: str, sample_n: int, rate: float) -> float:
    """FLOP floor (seconds) of ``measures`` on ``encodings``: FLOPs counted on each of a length-stratified sample of
    ``sample_n`` of them alone, scaled to all of them, over the matmul rate."""
    order = sorted(range(len(encodings)), key=lambda k: len(encodings[k]["input_ids"]))
    sample_n = min(sample_n, len(order))
    chosen = [order[int((k + 0.5) * len(order) / sample_n)] for k in range(sample_n)]
    flops = sum(measure_alone(classifier, encodings[k], measures, count_flops=True) for k in chosen)
    return flops * len(encodings) / sample_n / rate


def forecast_of(info: dict) -> float:
    return info["forecast"]["measure_seconds"] / info["measure_seconds"]


def forecast_of_cpu(info: dict) -> float | None:
    """The forecast in CPU terms (scaled by the probe's CPU over wall seconds) over the loop's CPU seconds: what the
    forecast would have said had the process's share of the machine stayed as it was during the probe."""
    forecast = info["forecast"]
    if not forecast.get("probe_seconds"):
        return None
    share = forecast["probe_cpu_seconds"] / forecast["probe_seconds"]
    return forecast["measure_seconds"] * share / info["measure_cpu_seconds"]


def sentence_rows(args, checkpoint: Path, work: Path, classifier, rate: float, n: int) -> list[tuple]:
    """Rows 1-3 and the forecast rows."""
    encodings, texts = sentence_encodings(classifier, n)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    rows = []
    baseline = run_child([sys.executable, "-c", BASELINE, str(checkpoint), str(texts_file)])
    quick = run_child(eval_command(checkpoint, work / "quick", "quick", n), marker="forecast:")
    rows.append((f"quick, whole command, {n} MR sentences (CPU-s)", baseline["cpu"], quick["cpu"], 2.0))
    no_plots = run_child(eval_command(checkpoint, work / "quick_no_plots", "quick", n, "--no-plots"))
    rows.append(("  the same with --no-plots", baseline["cpu"], no_plots["cpu"], 2.0))
    quick_loop, quick_info = loop_cpu(work / "quick")
    quick_floor = floor_seconds(classifier, encodings, "quick", n, rate)
    rows.append((f"quick, measuring loop, {n} MR sentences (CPU-ms per sentence)", 1e3 * quick_floor / n,
                 1e3 * quick_loop / n, 2.5))
    paper = run_child(eval_command(checkpoint, work / "paper", "paper", args.paper_n, "--no-plots"),
                      marker="forecast:")
    paper_loop, paper_info = loop_cpu(work / "paper")
    paper_encodings = sentence_encodings(classifier, args.paper_n)[0]
    paper_floor = floor_seconds(classifier, paper_encodings, "paper", args.flop_n, rate)
    rows.append((f"paper, measuring loop, {args.paper_n} MR sentences (CPU-s per sentence)",
                 paper_floor / args.paper_n, paper_loop / args.paper_n, 1.5))
    for name, run, info in (("quick", quick, quick_info), (f"paper ({args.paper_n} sentences)", paper, paper_info)):
        rows.append((f"forecast printed after, {name} (wall s from the command's start)", None,
                     run["marker_after"], "<= 10 s"))
        rows.append(("  the same in CPU-s of the command", None, run["marker_cpu"], "-"))
        rows.append((f"forecast / measured time of the loop, {name}", None, forecast_of(info), "0.7-1.3"))
        rows.append(("  the same in CPU terms (the probe's share of a core held)", None, forecast_of_cpu(info),
                     "0.7-1.3"))
    return rows


def document_rows(args, classifier, rate: float) -> list[tuple]:
    """Rows 4 and 5: one document of DOC_TOKENS tokens, measured alone in this process."""
    from eval_suite.batching import encode_texts
    from eval_suite.settings import MeasureConfig

    text = document_text(classifier.tokenizer, DOC_TOKENS)
    encoding = encode_texts(classifier.tokenizer, [text], DOC_TOKENS)[0][0]
    floor = measure_alone(classifier, encoding, "quick", count_flops=True) / rate
    rows = [(f"quick, one {DOC_TOKENS}-token document (CPU-s)", floor, measure_alone(classifier, encoding, "quick"),
             "<= 1 CPU-s")]
    label = f"paper, --sample-positions {SAMPLED_POSITIONS}, one {DOC_TOKENS}-token document (CPU-s)"
    if "sample_positions" not in {f for p in MeasureConfig().params.values() for f in p.__dataclass_fields__} \
            and not hasattr(MeasureConfig, "sample_positions"):
        rows.append((label, None, "not measured: sampling flag absent", "<= 90 CPU-s"))
    elif args.quick:
        rows.append((label, None, "not measured (--quick)", "<= 90 CPU-s"))
    else:
        settings = {"sample_positions": SAMPLED_POSITIONS}
        floor = measure_alone(classifier, encoding, "paper", count_flops=True, **settings) / rate
        rows.append((label, floor, measure_alone(classifier, encoding, "paper", **settings), "<= 90 CPU-s"))
    return rows


def print_table(rows: list[tuple]) -> None:
    print("| run | floor | measured | ratio | target |")
    print("|---|---|---|---|---|")
    for name, floor, measured, target in rows:
        def shown(value):
            return "-" if value is None else value if isinstance(value, str) else f"{value:.3g}"

        ratio = f"{measured / floor:.2f}x" if isinstance(measured, float) and floor else "-"
        goal = f"<= {target}x" if isinstance(target, float) else target
        print(f"| {name} | {shown(floor)} | {shown(measured)} | {ratio} | {goal} |", flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 sentences, paper on 4, no sampled document")
    p.add_argument("--n", type=int, default=None, help="MR sentences of the quick rows (default 64; --quick 16)")
    p.add_argument("--paper-n", type=int, default=None, help="MR sentences of the paper row (default 100, the main "
                                                             "job's evaluation; --quick 4)")
    p.add_argument("--flop-n", type=int, default=16, help="sentences whose paper FLOPs are counted")
    p.add_argument("--work-dir", default=str(REPO / "out" / "bench_targets"))
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    n = args.n or (16 if args.quick else 64)
    args.paper_n = args.paper_n or (4 if args.quick else 100)
    os.environ.update({k: v for k, v in child_env().items() if k != "PYTHONPATH"})
    torch.set_num_threads(1)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from eval_suite.model_access import load_classifier

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"before: {uptime()}", flush=True)
    checkpoint = build_probe_checkpoint("entmax15", work / "minilm_entmax15", n_train=256)
    classifier = load_classifier(str(checkpoint), device="cpu")
    rate = matmul_rate()
    print(f"one thread; float32 matmul {rate / 1e9:.1f} GFLOP/s (CPU time)", flush=True)
    rows = sentence_rows(args, checkpoint, work, classifier, rate, n) + document_rows(args, classifier, rate)
    print(f"after: {uptime()}\n")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "matmul_gflops": rate / 1e9, "load": uptime()},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
