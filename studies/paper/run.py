"""Running the study's units through the libraries' functions, each cached as ``OUTDIR/results/<unit>.json``.

A unit trains a model with :func:`hf_sparse_attn.training.train` (or the adversary with
:func:`studies.paper.adversarial.train_adversary`) and evaluates it with :func:`eval_suite.run_evaluation`. Its
compact result is written last and atomically, so a unit whose result exists is done; an interrupted unit resumes
(training from its last checkpoint, evaluation from its finished batches). Models live under ``OUTDIR/runs/``
(git-ignored). After every unit the report is regenerated from whatever has finished.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

from hf_sparse_attn.constants import FINAL_DIR, FINAL_METRICS_FILE, RESULTS_FILE, TRAIN_LOG_FILE
from hf_sparse_attn.files import atomic_write_json, first_line

from .plan import (ENCODERS, Unit, eval_limit, lr_twin, lr_unit_name, model_unit_name, plan_units, settings_record,
                   unit_settings)

logger = logging.getLogger("studies.paper")

RESULTS_DIR = "results"
RUNS_DIR = "runs"
STUDY_FILE = "study.json"
ADVERSARIAL_BASELINE = model_unit_name("pooling", "mr", "softmax", 0)
SEED_PAIR = model_unit_name("pooling", "mr", "softmax", 1)  # an independently trained twin of the baseline


class ReproduceError(ValueError):
    """Invalid study request; one line naming the fix."""


class UnitWaiting(RuntimeError):
    """A unit needs another unit's result that has not been written yet (by this process or another one)."""


def _write_record(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload, indent=1, trailing_newline=False)


# --------------------------------------------------------------------------------------------- one unit


def train_config(unit: Unit, args, run_dir: Path, lr: float):
    """The TrainConfig of a unit's model: its encoder (ENCODERS), early stopping on validation accuracy under a step
    cap, the family's chosen ``lr``."""
    from hf_sparse_attn.training import TrainConfig

    family, preset, layers = ENCODERS[unit.encoder]
    common = dict(dataset=unit.dataset, attn_impl=unit.attn_impl, attn_layers=layers, output_dir=str(run_dir),
                  seed=unit.seed, cpu=True, resume=True, max_length=args.max_length,
                  max_eval_examples=args.max_eval_examples, eval_every=args.eval_every, save_every=args.eval_every,
                  patience=args.patience, max_train_examples=args.max_train_examples, lr=lr)
    if family == "scratch":
        return TrainConfig(from_scratch=preset, batch_size=args.scratch_batch_size, max_steps=args.scratch_steps,
                           warmup_ratio=0.0, **common)
    return TrainConfig(batch_size=args.minilm_batch_size, max_steps=args.minilm_steps, **common)


def lr_search(out_dir: Path, family: str, dataset: str, args) -> dict:
    """The recorded lr search of (family, dataset): every grid value's validation accuracy and the chosen lr."""
    grid = args.scratch_lrs if family == "scratch" else args.minilm_lrs
    tried = {}
    for lr in grid:
        path = out_dir / RESULTS_DIR / f"{lr_unit_name(family, dataset, lr)}.json"
        if path.is_file():
            tried[lr] = json.loads(path.read_text(encoding="utf-8"))["train_metrics"]["validation"]["accuracy"]
    missing = [lr for lr in grid if lr not in tried]
    # ties: the smaller lr (sorted grid, strict improvement)
    chosen = None if missing else max(sorted(tried), key=lambda lr: (tried[lr], -lr))
    return {"grid": list(grid), "validation_accuracy": {f"{lr:g}": tried[lr] for lr in sorted(tried)},
            "chosen": chosen, "missing": missing}


def chosen_lr(unit: Unit, args, out_dir: Path) -> float:
    if unit.part == "lr":
        return unit.knob["lr"]
    search = lr_search(out_dir, unit.family, unit.dataset, args)
    if search["chosen"] is None:
        raise UnitWaiting(f"the lr search of {unit.family}/{unit.dataset} has not finished (missing lr "
                           f"{search['missing']}); run part lr first")
    return search["chosen"]


def eval_request(unit: Unit, args, checkpoint: Path, eval_dir: Path):
    """The evaluation of a unit: the same seeded test subset for every model, IG and faithfulness kept small."""
    from eval_suite import EvalRequest, MeasureConfig

    limit = eval_limit(unit, unit.dataset, args)
    # The full set, as the committed study was run (its tables use the paper tier's measurements), without context
    # mixing: it needs a stack of encoder layers, which the attention-pooling classifier's last layer is not.
    measure = MeasureConfig.of(ig_steps=args.ig_steps, faithfulness_attention="none", fractions=(0.1, 0.5), seed=0,
                            measures="full,-mixing")
    return EvalRequest(checkpoint=str(checkpoint), output_dir=str(eval_dir), dataset=unit.dataset, split="test",
                       limit=limit, max_length=args.max_length, resume=True, plot_examples=0, cpu=True, measure=measure)


def learned_alphas(run_dir: Path) -> list[dict] | None:
    """Per layer/head alpha of the last test evaluation in train_log.jsonl (None when absent)."""
    from hf_sparse_attn.training.checkpoints import read_log

    log = run_dir / TRAIN_LOG_FILE
    if not log.is_file():
        return None
    records = read_log(log)
    tests = [r for r in records if r.get("split") == "test"] or records
    if not tests:
        return None
    return [{"layer": h["layer"], "head": h["head"], "alpha": h.get("alpha"), "sparsity": h.get("sparsity")}
            for h in tests[-1].get("per_layer_head", [])]


def compact_results(results: dict) -> dict:
    """The part of eval_suite's results.json that the report needs (keeps committed JSONs small)."""
    from eval_suite.agreement import HEADLINE, RAW

    def stat(value):
        return {k: value.get(k) for k in ("mean", "std", "n", "ci95", "defined")} if isinstance(value, dict) else value

    heads = []
    for h in results["per_layer_head"]:
        heads.append({
            "layer": h["layer"], "head": h["head"], "defined_share": h.get("defined_share"),
            **{k: stat(h.get(k)) for k in ("attention_sparsity", "attention_support_size", "attention_entropy",
                                           "special_mass")},
            **{metric: {m: stat(v) for m, v in h.get(metric, {}).items()}
               for metric in (RAW, HEADLINE, "kendall_tau_b_on_support")},
        })
    layers = [{"layer": l["layer"], "n_heads_defined": l.get("n_heads_defined"),
               "agreement": {m: {k: stat(v) for k, v in a.items()} for m, a in l["agreement"].items()},
               **{k: stat(l.get(k)) for k in ("attention_sparsity", "special_mass", "input_to_repr_entropy",
                                              "coindexed_share")},
               "importance_entropy": {m: stat(v) for m, v in l.get("importance_entropy", {}).items()}}
              for l in results["per_layer"]]
    keep = ("attn_impl", "sparse_attention", "dataset", "split", "n_examples", "accuracy", "macro_f1", "n_layers",
            "n_heads", "weights_fingerprint", "measures")
    out = {k: results.get(k) for k in keep}
    out.update(per_layer_head=heads, per_layer=layers,
               summary={k: v for k, v in results.get("summary", {}).items() if k != "text"})
    return out


def _baseline_folder(out_dir: Path, name: str) -> Path:
    """The final folder of the model that unit ``name`` evaluates (an lr twin's model lives in its lr unit's run)."""
    record_path = out_dir / RESULTS_DIR / f"{name}.json"
    run = json.loads(record_path.read_text(encoding="utf-8")).get("model_run", name) if record_path.is_file() else name
    folder = out_dir / RUNS_DIR / run / FINAL_DIR
    if not (folder / "config.json").is_file():
        raise UnitWaiting(f"the adversarial part needs the softmax model {name}; run part pooling-mr first")
    return folder


def _train_adversary(unit: Unit, args, out_dir: Path, run_dir: Path) -> dict:
    from .adversarial import AdversarialConfig, measure_seed_pairs, train_adversary

    baseline = _baseline_folder(out_dir, ADVERSARIAL_BASELINE)
    config = AdversarialConfig(baseline=str(baseline), output_dir=str(run_dir), dataset="mr",
                               lambda_adv=unit.knob.get("lambda_adv", 0.0), max_steps=args.scratch_steps,
                               eval_every=args.eval_every, patience=args.patience,
                               batch_size=args.scratch_batch_size, lr=chosen_lr(unit, args, out_dir),
                               max_length=args.max_length, limit=eval_limit(unit, "mr", args), seed=0,
                               max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples)
    if unit.mapping == "seed_jsd":
        names = [model_unit_name("pooling", "mr", "softmax", seed) for seed in range(args.seeds)]
        return measure_seed_pairs(config, {name: str(_baseline_folder(out_dir, name)) for name in names})
    return train_adversary(config)


def model_run(unit: Unit, args, out_dir: Path) -> str:
    """The run folder (under OUTDIR/runs) holding the model ``unit`` evaluates: its own, or, for the softmax seed-0
    model of the encoder the lr is chosen on, the lr search's winner (the same training; never run twice)."""
    if lr_twin(unit):
        return lr_unit_name(unit.family, unit.dataset, chosen_lr(unit, args, out_dir))
    return unit.name


def _train_metrics(run_dir: Path) -> dict | None:
    """Accuracy, loss and steps of the model final/ holds (hf_sparse_attn.training's final_metrics.json)."""
    metrics_path = run_dir / FINAL_DIR / FINAL_METRICS_FILE
    if not metrics_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    out = {split: {k: metrics[split].get(k) for k in ("accuracy", "macro_f1", "loss", "step")}
           for split in ("validation", "test") if split in metrics}
    out["train"] = {k: metrics["train"].get(k) for k in ("step", "stopped_at_step", "best_step", "stopped_early",
                                                         "seconds_per_step")}
    return out


def run_unit(unit: Unit, args, out_dir: Path) -> dict:
    """Train (or reuse) and evaluate one unit; returns the compact record written to results/<name>.json."""
    from eval_suite import run_evaluation
    from hf_sparse_attn.training import train

    seconds = {}
    started, cpu_started = time.time(), time.process_time()
    adversarial = None
    lr = None
    run_name = unit.name
    if unit.part == "adversarial":
        adversarial = _train_adversary(unit, args, out_dir, out_dir / RUNS_DIR / unit.name)
    else:
        lr = chosen_lr(unit, args, out_dir)
        run_name = model_run(unit, args, out_dir)
        if not (out_dir / RUNS_DIR / run_name / FINAL_DIR / FINAL_METRICS_FILE).is_file():
            if run_name != unit.name:
                raise UnitWaiting(f"{unit.name} is the model of {run_name}, which has not finished")
            train(train_config(unit, args, out_dir / RUNS_DIR / run_name, lr))
    seconds["train"] = round(time.time() - started, 1)
    run_dir = out_dir / RUNS_DIR / run_name

    record = {"unit": {k: v for k, v in vars(unit).items()}, "seconds": seconds, "lr": lr, "model_run": run_name,
              "step_cap": args.scratch_steps if unit.family == "scratch" else args.minilm_steps}
    if unit.part != "lr" and unit.mapping != "seed_jsd":  # the lr search needs validation accuracy only
        started = time.time()
        eval_dir = out_dir / RUNS_DIR / unit.name / "eval"
        if not (eval_dir / RESULTS_FILE).is_file():
            run_evaluation(eval_request(unit, args, run_dir / FINAL_DIR, eval_dir))
        seconds["eval"] = round(time.time() - started, 1)
        record["eval"] = compact_results(json.loads((eval_dir / RESULTS_FILE).read_text(encoding="utf-8")))
    else:
        seconds["eval"] = 0.0
    # CPU time of this process (all its threads): on a shared machine wall-clock says more about the neighbours.
    seconds["cpu"] = round(time.process_time() - cpu_started, 1)
    if unit.part != "lr" and unit.part != "adversarial":
        record["lr_search"] = lr_search(out_dir, unit.family, unit.dataset, args)
    metrics = _train_metrics(run_dir)
    if metrics is not None:
        record["train_metrics"] = metrics
    if unit.mapping == "learned_alpha":
        record["learned_alpha"] = learned_alphas(run_dir)
    if adversarial is not None:
        record["adversarial"] = {k: v for k, v in adversarial.items() if k != "settings"}
        record["adversarial"]["settings"] = {k: v for k, v in adversarial["settings"].items() if k != "baseline"}
        if "training" in adversarial:
            record["train_metrics"] = {"validation": {"accuracy": adversarial["training"]["best_validation_accuracy"]},
                                       "train": adversarial["training"]}
    return record


# --------------------------------------------------------------------------------------------- the study


def _check_cached_settings(units: list[Unit], args, out_dir: Path) -> None:
    """Before any work: a cached unit made under other sizes would mix two studies."""
    results_dir = out_dir / RESULTS_DIR
    for unit in units:
        path = results_dir / f"{unit.name}.json"
        if not path.is_file():
            continue
        stored = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        wanted = unit_settings(unit, args)
        differing = sorted(k for k in wanted if k in stored and stored[k] != wanted[k])
        if differing:
            shown = ", ".join(f"--{k.replace('_', '-')} {stored[k]!r} (now {wanted[k]!r})" for k in differing)
            raise ReproduceError(f"unit {unit.name} in '{out_dir}' was made with {shown}; repeat those values "
                                 f"or delete {path} and {out_dir / RUNS_DIR / unit.name} to redo it")


def _copy_reused(unit: Unit, args, results_dir: Path) -> bool:
    """A sweep end point shares its named mapping's model and numbers; False while that unit has not run."""
    source = results_dir / f"{unit.reuse}.json"
    if not source.is_file():
        return False
    record = json.loads(source.read_text(encoding="utf-8"))
    record["unit"] = {**vars(unit)}
    record["seconds"] = {"train": 0.0, "eval": 0.0}
    record["settings"] = unit_settings(unit, args)
    _write_record(results_dir / f"{unit.name}.json", record)
    return True


def _run_one(unit: Unit, args, out_dir: Path, outcome: dict) -> bool:
    """Run ``unit`` unless cached; file it under ran / failed / skipped / waiting. True when a record was written."""
    path = out_dir / RESULTS_DIR / f"{unit.name}.json"
    if path.is_file():
        outcome["skipped"].append(unit.name)
        return False
    if unit.reuse is not None:
        copied = _copy_reused(unit, args, out_dir / RESULTS_DIR)
        outcome["ran" if copied else "waiting"].append(unit.name)
        return copied
    logger.info("unit %s (%s): %s on %s", unit.name, unit.part, unit.attn_impl, unit.dataset)
    print(f"[reproduce] {time.strftime('%H:%M:%S')} unit {unit.name} ...", flush=True)
    try:
        record = run_unit(unit, args, out_dir)
    except UnitWaiting as waiting:
        print(f"[reproduce] unit {unit.name} waits: {waiting}", flush=True)
        outcome["waiting"].append(unit.name)
        return False
    except Exception as error:  # noqa: BLE001  (one failed unit must not end a study of dozens)
        traceback.print_exc()
        print(f"[reproduce] unit {unit.name} FAILED: {error}", flush=True)
        outcome["failed"].append({"unit": unit.name, "error": first_line(error)})
        return False
    record["settings"] = unit_settings(unit, args)
    _write_record(path, record)
    outcome["ran"].append(unit.name)
    print(f"[reproduce] {time.strftime('%H:%M:%S')} unit {unit.name} done: train {record['seconds']['train']} s, "
          f"eval {record['seconds']['eval']} s", flush=True)
    return True


def _run_units(units: list[Unit], args, out_dir: Path, study: dict, report_units: list[Unit]) -> dict:
    """Every unit in order; units waiting for another's result are tried again once at the end (a second process
    may have written it meanwhile, or a later unit of this one)."""
    from .report import write_report

    outcome = {"ran": [], "failed": [], "skipped": [], "waiting": []}
    for unit in units:
        if _run_one(unit, args, out_dir, outcome) and unit.reuse is None:
            try:
                write_report(out_dir, study, report_units)
            except Exception as error:  # noqa: BLE001  (the report is regenerated later; the units must go on)
                traceback.print_exc()
                print(f"[reproduce] the report could not be regenerated ({first_line(error)}); "
                      "--report-only regenerates it", flush=True)
    waiting, outcome["waiting"] = outcome["waiting"], []
    for unit in [u for u in units if u.name in waiting]:
        _run_one(unit, args, out_dir, outcome)
    return outcome


def report_plan(args) -> list[Unit]:
    """The units a report is measured against: the study's plan (the default parts) and any other parts asked for,
    whatever this process runs."""
    from argparse import Namespace

    from .plan import DEFAULT_PARTS, PART_ORDER

    parts = [p for p in PART_ORDER if p in DEFAULT_PARTS or p in args.parts]
    return plan_units(Namespace(**{**vars(args), "parts": parts}))


def run_study(args) -> dict:
    """Run every unit not yet cached (in order), regenerating the report after each; returns a status dict."""
    # Everything a long run will call, imported now: a run of hours must not pick up code edited while it runs.
    from . import adversarial  # noqa: F401
    from .report import write_report

    out_dir = Path(args.output_dir)
    (out_dir / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    _ensure_gitignore(out_dir)
    study_path = out_dir / STUDY_FILE
    study = json.loads(study_path.read_text(encoding="utf-8")) if study_path.is_file() else {"sittings": []}
    units = plan_units(args)
    if not args.report_only:
        _check_cached_settings(units, args, out_dir)
        study["settings"] = settings_record(args)
    study.setdefault("settings", settings_record(args))
    outcome = {"ran": [], "failed": [], "skipped": [], "waiting": []}
    report_units = report_plan(args)
    sitting_started = time.time()
    if not args.report_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        outcome = _run_units(units, args, out_dir, study, report_units)
        # Re-read: another process may have run other --parts of the same study meanwhile.
        latest = json.loads(study_path.read_text(encoding="utf-8")) if study_path.is_file() else {"sittings": []}
        study["sittings"] = latest.get("sittings", []) + [{
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sitting_started)),
            "seconds": round(time.time() - sitting_started, 1), "parts": args.parts, "ran": outcome["ran"],
            "failed": outcome["failed"], "waiting": outcome["waiting"]}]
        _write_record(study_path, study)
    write_report(out_dir, study, report_units)
    return {**outcome, "units": [u.name for u in units]}


def _ensure_gitignore(out_dir: Path) -> None:
    path = out_dir / ".gitignore"
    if not path.is_file():
        path.write_text("# models and evaluation rows: large, re-creatable with python -m studies.paper\n"
                        "runs/\n*.safetensors\n*.npz\n*.bin\n*.pt\n*.log\n", encoding="utf-8")
