"""Reproduce Meister et al. (2021) on real data, side by side with the paper's tables: one resumable command.

    python -m eval_suite.reproduce --output-dir studies/paper           # the full study (about an hour on 2 CPUs)
    python -m eval_suite.reproduce --output-dir /tmp/p --quick           # tiny sizes: the pipeline end to end
    python -m eval_suite.reproduce --output-dir studies/paper --report-only

The study is a list of units (train one model, then evaluate it with eval_suite). Each unit is cached: its compact
result lands in ``OUTDIR/results/<unit>.json`` (written atomically, last), and a unit whose result exists is skipped.
An interrupted unit resumes: training with ``--resume`` (from its last checkpoint), evaluation with ``--resume``
(from its finished batches). Models live under ``OUTDIR/runs/`` (git-ignored). After every unit the report
``OUTDIR/REPORT.md`` and its figures are regenerated from whatever has finished, so an interrupted study still
leaves a readable report with the missing cells marked. Units run in priority order (``--parts``): the paper's
Transformer on mr, the sparsity sweep, adversarial attention, MiniLM on mr, then trec, extra seeds, MiniLM on trec.

Train and evaluation run in this process through their ``main(argv)`` entry points
(``hf_sparse_attn.train.main``, ``eval_suite.cli.main``, ``eval_suite.adversarial.main``); a unit that fails is
logged and the study goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("eval_suite.reproduce")

RESULTS_DIR = "results"
RUNS_DIR = "runs"
STUDY_FILE = "study.json"
# The four mappings of the issue, named as in the report -> attn_impl of hf_sparse_attn.
MAPPINGS = {"softmax": "softmax", "sparsemax": "sparsemax", "entmax15": "entmax15", "learned_alpha": "entmax_learned"}
PART_ORDER = ("scratch-mr", "sweep", "adversarial", "minilm-mr", "scratch-trec", "scratch-seeds", "minilm-trec")


class ReproduceError(ValueError):
    """Invalid study request; one line naming the fix."""


@dataclass
class Unit:
    """One cached step of the study: train a model (or the adversary), then evaluate it."""

    name: str
    part: str
    encoder: str  # "scratch" | "minilm"
    dataset: str
    mapping: str  # report name: softmax, sparsemax, entmax15, learned_alpha, alpha=A, lambda=L, adversarial
    attn_impl: str
    seed: int
    knob: dict = field(default_factory=dict)  # {"alpha": A} or {"lambda": L} for sweep members
    reuse: str | None = None  # name of a unit whose model and numbers this one shares (sweep end points)


# --------------------------------------------------------------------------------------------- plan


def alpha_impl(alpha: float) -> str:
    """The attn_impl of alpha-entmax at ``alpha``; the end points and 1.5 are the named mappings."""
    if alpha == 1.0:
        return "softmax"
    if alpha == 1.5:
        return "entmax15"
    if alpha == 2.0:
        return "sparsemax"
    return f"entmax:alpha={alpha:g}"


def plan_units(args) -> list[Unit]:
    """Every unit of the study in priority order (only the parts in ``args.parts``)."""
    seeds = list(range(args.seeds))
    units: list[Unit] = []

    def scratch(dataset: str, mapping: str, seed: int, part: str) -> Unit:
        return Unit(f"scratch-{dataset}-{mapping}-s{seed}", part, "scratch", dataset, mapping, MAPPINGS[mapping], seed)

    for part in args.parts:
        if part == "scratch-mr":
            units += [scratch("mr", m, 0, part) for m in args.mappings]
        elif part == "scratch-trec":
            units += [scratch("trec", m, 0, part) for m in args.mappings]
        elif part == "scratch-seeds":
            units += [scratch("mr", m, s, part) for s in seeds[1:] for m in args.mappings]
        elif part == "sweep":
            for alpha in args.alphas:
                impl = alpha_impl(alpha)
                named = {"softmax": "softmax", "entmax15": "entmax15", "sparsemax": "sparsemax"}.get(impl)
                reuse = f"scratch-mr-{named}-s0" if named in args.mappings else None
                units.append(Unit(f"sweep-mr-alpha{alpha:g}-s0", part, "scratch", "mr", f"alpha={alpha:g}", impl, 0,
                                  {"alpha": alpha}, reuse))
            for lam in args.lambdas:
                # lambda = 0 is sparsemax exactly: share the sparsemax model.
                reuse = "scratch-mr-sparsemax-s0" if lam == 0 and "sparsemax" in args.mappings else None
                impl = "sparsemax" if lam == 0 else f"sparsegen_lin:lambda={lam:g}"
                units.append(Unit(f"sweep-mr-lambda{lam:g}-s0", part, "scratch", "mr", f"lambda={lam:g}", impl, 0,
                                  {"lambda": lam}, reuse))
        elif part == "adversarial":
            units.append(Unit("adversarial-mr-s0", part, "scratch", "mr", "adversarial", "softmax", 0,
                              {"lambda_adv": args.adversarial_lambda}))
            # Control: the same loop with lambda_adv = 0, so that the accuracy change is not the loop's own doing.
            units.append(Unit("adversarial-control-mr-s0", part, "scratch", "mr", "adversarial_control", "softmax", 0,
                              {"lambda_adv": 0.0}))
        elif part in ("minilm-mr", "minilm-trec"):
            dataset = part.split("-")[1]
            units += [Unit(f"minilm-{dataset}-{m}-s0", part, "minilm", dataset, m, MAPPINGS[m], 0) for m in args.mappings]
    return units


# --------------------------------------------------------------------------------------------- arguments


def train_argv(unit: Unit, args, run_dir: Path) -> list[str]:
    common = ["--dataset", unit.dataset, "--attn-impl", unit.attn_impl, "--output-dir", str(run_dir),
              "--seed", str(unit.seed), "--cpu", "--resume", "--max-length", str(args.max_length),
              "--max-eval-examples", str(args.max_eval_examples), "--save-every", "100", "--eval-every", "100000"]
    if args.max_train_examples:
        common += ["--max-train-examples", str(args.max_train_examples)]
    if unit.encoder == "scratch":
        return ["--from-scratch", "paper-roberta", "--lr", str(args.scratch_lr), "--batch-size", str(args.scratch_batch_size),
                "--max-steps", str(args.scratch_steps), "--warmup-ratio", "0.0", *common]
    return ["--lr", str(args.minilm_lr), "--batch-size", str(args.minilm_batch_size), "--max-steps", str(args.minilm_steps),
            *common]


def eval_argv(unit: Unit, args, checkpoint: Path, eval_dir: Path) -> list[str]:
    limit = args.scratch_limit if unit.encoder == "scratch" else args.minilm_limit
    return [str(checkpoint), "--dataset", unit.dataset, "--split", "test", "--limit", str(limit), "--output-dir",
            str(eval_dir), "--max-length", str(args.max_length), "--seed", "0", "--resume", "--plot-examples", "0",
            "--ig-steps", str(args.ig_steps), "--faithfulness-attention", "none", "--fractions", "0.1,0.5", "--cpu"]


# --------------------------------------------------------------------------------------------- running


def _write_json_atomic(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _call_main(main, argv: list[str], what: str) -> None:
    """Run a CLI entry point in this process; a non-zero exit becomes a RuntimeError naming the step."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors and parser.exit
        code = exit_.code
    if code not in (0, None):
        raise RuntimeError(f"{what} exited with status {code}")


def learned_alphas(run_dir: Path) -> list[dict] | None:
    """Per layer/head alpha of the last test evaluation in train_log.jsonl (None when absent)."""
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    tests = [r for r in records if r.get("split") == "test"] or records
    if not tests:
        return None
    return [{"layer": h["layer"], "head": h["head"], "alpha": h.get("alpha"), "sparsity": h.get("sparsity")}
            for h in tests[-1].get("per_layer_head", [])]


def compact_results(results: dict) -> dict:
    """The part of eval_suite's results.json that the report needs (keeps committed JSONs small)."""
    heads = []
    for h in results["per_layer_head"]:
        heads.append({
            "layer": h["layer"], "head": h["head"], "sparsity": h["sparsity"], "support_size": h["support_size"],
            "attention_entropy": h["attention_entropy"], "special_mass": h.get("special_mass"),
            "kendall_tau_b": {m: {k: v[k] for k in ("mean", "std")} for m, v in h["kendall_tau_b"].items()},
            "importance_entropy": {m: v["mean"] for m, v in h.get("importance_entropy", {}).items()},
            "projected_kendall_tau_b": {m: v["mean"] for m, v in h.get("projected", {}).get("kendall_tau_b", {}).items()},
        })
    layers = [{"layer": l["layer"], "input_to_repr_entropy": l["input_to_repr_entropy"],
               "coindexed_share": l.get("coindexed_share"),
               "importance_entropy": {m: v for m, v in l.get("importance_entropy", {}).items()}}
              for l in results["per_layer"]]
    keep = ("attn_impl", "sparse_attention", "dataset", "split", "n_examples", "accuracy", "macro_f1", "n_layers",
            "n_heads", "weights_fingerprint")
    out = {k: results.get(k) for k in keep}
    out.update(per_layer_head=heads, per_layer=layers,
               summary={k: v for k, v in results.get("summary", {}).items() if k != "text"})
    return out


def run_unit(unit: Unit, args, out_dir: Path) -> dict:
    """Train (or reuse) and evaluate one unit; returns the compact record written to results/<name>.json."""
    from hf_sparse_attn.train import main as train_main

    from .adversarial import main as adversarial_main
    from .cli import main as eval_main

    run_dir = out_dir / RUNS_DIR / unit.name
    seconds = {}
    started = time.time()
    adversarial = None
    if unit.part == "adversarial":
        baseline = out_dir / RUNS_DIR / "scratch-mr-softmax-s0" / "final"
        if not (baseline / "config.json").is_file():
            raise RuntimeError("the adversary needs the softmax baseline scratch-mr-softmax-s0; run part scratch-mr first")
        argv = ["--baseline", str(baseline), "--dataset", "mr", "--output-dir", str(run_dir),
                "--lambda-adv", str(unit.knob["lambda_adv"]), "--max-steps", str(args.adversarial_steps),
                "--batch-size", str(args.scratch_batch_size), "--lr", str(args.scratch_lr),
                "--max-length", str(args.max_length), "--limit", str(args.scratch_limit), "--seed", "0"]
        if args.max_train_examples:
            argv += ["--max-train-examples", str(args.max_train_examples)]
        _call_main(adversarial_main, argv, f"adversarial training of {unit.name}")
        adversarial = json.loads((run_dir / "adversarial.json").read_text(encoding="utf-8"))
    elif not (run_dir / "final" / "final_metrics.json").is_file():
        _call_main(train_main, train_argv(unit, args, run_dir), f"training of {unit.name}")
    seconds["train"] = round(time.time() - started, 1)

    started = time.time()
    eval_dir = run_dir / "eval"
    if not (eval_dir / "results.json").is_file():
        _call_main(eval_main, eval_argv(unit, args, run_dir / "final", eval_dir), f"evaluation of {unit.name}")
    seconds["eval"] = round(time.time() - started, 1)
    results = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))

    record = {"unit": {k: v for k, v in vars(unit).items()}, "seconds": seconds, "eval": compact_results(results)}
    metrics_path = run_dir / "final" / "final_metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        record["train_metrics"] = {split: {k: metrics[split].get(k) for k in ("accuracy", "macro_f1", "loss", "step")}
                                   for split in ("validation", "test") if split in metrics}
        record["train_seconds_per_step"] = metrics.get("train_seconds_per_step")
    if unit.mapping == "learned_alpha":
        record["learned_alpha"] = learned_alphas(run_dir)
    if adversarial is not None:
        record["adversarial"] = {k: v for k, v in adversarial.items() if k != "settings"}
        record["adversarial"]["settings"] = {k: v for k, v in adversarial["settings"].items() if k != "baseline"}
    return record


COMMON_KEYS = ("max_length", "max_train_examples", "max_eval_examples", "ig_steps")
ENCODER_KEYS = {"scratch": ("scratch_steps", "scratch_lr", "scratch_batch_size", "scratch_limit"),
                "minilm": ("minilm_steps", "minilm_lr", "minilm_batch_size", "minilm_limit")}
ADVERSARIAL_KEYS = ("adversarial_steps", "adversarial_lambda")


def unit_settings(unit: Unit, args) -> dict:
    """The settings that change what ``unit`` computes (a cached unit must have been made under the same ones)."""
    keys = COMMON_KEYS + ENCODER_KEYS[unit.encoder] + (ADVERSARIAL_KEYS if unit.part == "adversarial" else ())
    return {k: getattr(args, k) for k in keys}


def settings_record(args) -> dict:
    keys = ("quick", "seeds", "mappings", "alphas", "lambdas", "parts", "max_length", "max_train_examples",
            "max_eval_examples", "scratch_steps", "scratch_lr", "scratch_batch_size", "minilm_steps", "minilm_lr",
            "minilm_batch_size", "scratch_limit", "minilm_limit", "ig_steps", "adversarial_steps", "adversarial_lambda",
            "threads")
    return {k: getattr(args, k) for k in keys}


def run_study(args) -> dict:
    """Run every unit not yet cached (in order), regenerating the report after each; returns a status dict."""
    from .study_report import write_report

    out_dir = Path(args.output_dir)
    results_dir = out_dir / RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    _ensure_gitignore(out_dir)
    study_path = out_dir / STUDY_FILE
    study = json.loads(study_path.read_text(encoding="utf-8")) if study_path.is_file() else {"sittings": []}
    units = plan_units(args)
    if not args.report_only:
        for unit in units:  # before any work: a cached unit made under other sizes would mix two studies
            path = results_dir / f"{unit.name}.json"
            if path.is_file():
                stored = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
                wanted = unit_settings(unit, args)
                differing = sorted(k for k in wanted if k in stored and stored[k] != wanted[k])
                if differing:
                    shown = ", ".join(f"--{k.replace('_', '-')} {stored[k]!r} (now {wanted[k]!r})" for k in differing)
                    raise ReproduceError(f"unit {unit.name} in '{out_dir}' was made with {shown}; repeat those values "
                                         f"or delete {path} and {out_dir / RUNS_DIR / unit.name} to redo it")
        study["settings"] = settings_record(args)
    study.setdefault("settings", settings_record(args))
    ran, failed, skipped = [], [], []
    sitting_started = time.time()
    if not args.report_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        for unit in units:
            path = results_dir / f"{unit.name}.json"
            if path.is_file():
                skipped.append(unit.name)
                continue
            if unit.reuse is not None:
                source = results_dir / f"{unit.reuse}.json"
                if not source.is_file():
                    skipped.append(unit.name)  # its source runs in an earlier part; nothing to copy yet
                    continue
                record = json.loads(source.read_text(encoding="utf-8"))
                record["unit"] = {**vars(unit)}
                record["seconds"] = {"train": 0.0, "eval": 0.0}
                record["settings"] = unit_settings(unit, args)
                _write_json_atomic(path, record)
                ran.append(unit.name)
                continue
            logger.info("unit %s (%s): %s on %s", unit.name, unit.part, unit.attn_impl, unit.dataset)
            print(f"[reproduce] {time.strftime('%H:%M:%S')} unit {unit.name} ...", flush=True)
            try:
                record = run_unit(unit, args, out_dir)
            except Exception as error:  # noqa: BLE001  (one failed unit must not end a study of dozens)
                traceback.print_exc()
                print(f"[reproduce] unit {unit.name} FAILED: {error}", flush=True)
                failed.append({"unit": unit.name, "error": str(error).splitlines()[0] if str(error) else repr(error)})
                continue
            record["settings"] = unit_settings(unit, args)
            _write_json_atomic(path, record)
            ran.append(unit.name)
            print(f"[reproduce] {time.strftime('%H:%M:%S')} unit {unit.name} done: train {record['seconds']['train']} s, "
                  f"eval {record['seconds']['eval']} s", flush=True)
            write_report(out_dir, study, [u for u in units])
        # Re-read: another process may have run other --parts of the same study meanwhile.
        latest = json.loads(study_path.read_text(encoding="utf-8")) if study_path.is_file() else {"sittings": []}
        study["sittings"] = latest.get("sittings", []) + [{
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sitting_started)),
            "seconds": round(time.time() - sitting_started, 1), "parts": args.parts, "ran": ran, "failed": failed}]
        _write_json_atomic(study_path, study)
    write_report(out_dir, study, units)
    return {"ran": ran, "failed": failed, "skipped": skipped, "units": [u.name for u in units]}


def _ensure_gitignore(out_dir: Path) -> None:
    path = out_dir / ".gitignore"
    if not path.is_file():
        path.write_text("# models and evaluation rows: large, re-creatable with python -m eval_suite.reproduce\n"
                        "runs/\n*.safetensors\n*.npz\n*.bin\n*.pt\n*.log\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- CLI

QUICK = dict(seeds=1, mappings=["softmax", "sparsemax", "learned_alpha"], alphas=[1.0, 1.25, 2.0], lambdas=[0.5],
             max_train_examples=48, max_eval_examples=16, scratch_steps=2, minilm_steps=1, scratch_limit=4,
             minilm_limit=4, ig_steps=2, adversarial_steps=2, max_length=24, scratch_batch_size=8, minilm_batch_size=4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval_suite.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="studies/paper")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): every part, seconds each")
    p.add_argument("--report-only", action="store_true", help="only regenerate REPORT.md from finished units")
    p.add_argument("--parts", default=",".join(PART_ORDER), help=f"comma list, run in this order (default: {','.join(PART_ORDER)})")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the scratch models on mr (default 3)")
    p.add_argument("--mappings", default=",".join(MAPPINGS), help=f"comma list of {', '.join(MAPPINGS)}")
    p.add_argument("--alphas", default="1.0,1.1,1.25,1.5,1.75,2.0", help="alpha-entmax sweep (scratch, mr)")
    p.add_argument("--lambdas", default="-1.0,0.0,0.5,0.75", help="sparsegen-lin sweep (scratch, mr); larger is sparser")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-train-examples", type=int, help="use only the first N training examples (default: all)")
    p.add_argument("--max-eval-examples", type=int, default=400, help="validation/test examples scored during training")
    p.add_argument("--scratch-steps", type=int, default=400, help="optimizer steps of each from-scratch model")
    p.add_argument("--scratch-lr", type=float, default=1e-3)
    p.add_argument("--scratch-batch-size", type=int, default=32)
    p.add_argument("--minilm-steps", type=int, default=200)
    p.add_argument("--minilm-lr", type=float, default=1e-4)
    p.add_argument("--minilm-batch-size", type=int, default=16)
    p.add_argument("--scratch-limit", type=int, default=250, help="test examples evaluated per scratch model")
    p.add_argument("--minilm-limit", type=int, default=150, help="test examples evaluated per MiniLM model")
    p.add_argument("--ig-steps", type=int, default=4, help="integrated-gradients steps (IG is not in the paper's tables)")
    p.add_argument("--adversarial-steps", type=int, default=400)
    p.add_argument("--adversarial-lambda", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if any(opt in (argv if argv is not None else sys.argv[1:])
                                                    for opt in a.option_strings)}
    try:
        args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        args.mappings = [m.strip() for m in args.mappings.split(",") if m.strip()] if isinstance(args.mappings, str) else args.mappings
        args.alphas = [float(a) for a in args.alphas.split(",") if a.strip()] if isinstance(args.alphas, str) else args.alphas
        args.lambdas = [float(a) for a in args.lambdas.split(",") if a.strip()] if isinstance(args.lambdas, str) else args.lambdas
    except ValueError:
        parser.exit(2, "error: --alphas and --lambdas take comma-separated numbers, e.g. --alphas 1.0,1.5,2.0\n")
    if args.quick:
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    unknown = [p for p in args.parts if p not in PART_ORDER]
    if unknown:
        parser.exit(2, f"error: unknown --parts {unknown}; choose from {', '.join(PART_ORDER)}\n")
    bad = [m for m in args.mappings if m not in MAPPINGS]
    if bad:
        parser.exit(2, f"error: unknown --mappings {bad}; choose from {', '.join(MAPPINGS)}\n")
    if any(not 1.0 <= a <= 2.0 for a in args.alphas):
        parser.exit(2, "error: --alphas must lie in [1, 2] (1 = softmax, 2 = sparsemax)\n")
    if any(lam >= 1 for lam in args.lambdas):
        parser.exit(2, "error: --lambdas must be < 1 (sparsegen-lin divides by 1 - lambda)\n")
    for name in ("seeds", "max_length", "scratch_steps", "minilm_steps", "scratch_limit", "minilm_limit", "ig_steps",
                 "adversarial_steps", "max_eval_examples", "scratch_batch_size", "minilm_batch_size"):
        if getattr(args, name) < 1:
            parser.exit(2, f"error: --{name.replace('_', '-')} must be >= 1\n")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.exit(2, f"error: --output-dir {args.output_dir!r} is a file; pass a folder\n")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.time()
    try:
        status = run_study(args)
    except ReproduceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"[reproduce] ran {len(status['ran'])} unit(s), failed {len(status['failed'])}, cached/waiting "
          f"{len(status['skipped'])} in {time.time() - started:.0f} s; report: {Path(args.output_dir) / 'REPORT.md'}")
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
