"""checkpoint -> per-example rows -> results.json, per_layer_head.csv, plots; resumable, and split over processes.

Work is planned as fixed batches (examples sorted by token length, then index, chunked by ``batch_size``, padded
tokens and the share of padding; :func:`plan_batches`). The plan depends only on the data, the checkpoint and the
settings, never on the number of processes, so every batch is computed identically whether one process or several
run it: ``accelerate launch`` gives exactly the numbers of a single-process run. Each finished batch is stored as
``OUTDIR/rows/batch_NNNNN.npz`` (written atomically) together with the plan's fingerprint; ``--resume`` skips the
batches already there after checking that each was produced by this plan. Processes take every k-th remaining batch,
send their rows to the main process (``accelerate.utils.gather_object``), and the main process aggregates and writes
the outputs, each to a temporary file renamed into place.

One evaluation at a time per output folder (``hf_sparse_attn.output_dir.OutputLock``, held by the main process
from before anything loads). A folder that holds another checkpoint's or another setting's results is refused
unless ``--overwrite`` is given; then the new evaluation is built complete in a sibling folder
``.OUTDIR.overwrite`` and swapped in for the old one, so stale rows and plots go with it and a crash leaves the old
results as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_sparse_attn.constants import (EVAL_OUTPUT_NAMES, LAYER_HEAD_TABLE_FILE, PLAN_FILE, RESULTS_FILE, ROWS_DIR,
                                      RUN_INFO_FILE, TOKEN_EXAMPLES_FILE)
from hf_sparse_attn.files import DiskFullError, atomic_path, atomic_write_text, reporting_disk_full
from hf_sparse_attn.output_dir import LOCK_FILE, LOCK_HOLDER_FILE, OutputDirError, \
    lock_for_processes, recover_interrupted_replace, replace_folder

from .aggregate import aggregate, concatenate_rows, layer_head_table
from .errors import EvalError
from .registry import describe_selection, tiers
from .settings import EvalRequest, MeasureConfig  # noqa: F401  (EvalRequest: the entry's argument)

logger = logging.getLogger(__name__)

SPECIAL_TOKENS_POLICY = (
    "all metrics use content tokens only (not padding, not tokenizer-added special tokens); attention and "
    "importance are restricted to them and renormalised; rollout and projection propagate through all "
    "non-padding positions before the restriction"
)


# ----------------------------------------------------------------------------------------------- data


def load_split(request: EvalRequest):
    """The requested split as a datasets.Dataset with ``text`` and ``label``; EvalError on bad names."""
    try:
        from hf_sparse_attn.data import load_text_classification
    except ImportError as error:
        raise EvalError(f"hf_sparse_attn.data is not importable ({error}); install the package (pip install -e .)") from None
    splits = load_text_classification(request.dataset, text_column=request.text_column,
                                      label_column=request.label_column, label_map=request.label_map,
                                      text_pair_column=request.text_pair_column)
    if request.split not in splits:
        raise EvalError(f"dataset {request.dataset!r} has no split {request.split!r}; choose one of {list(splits)}")
    return splits[request.split]


def select_examples(n_available: int, limit: int | None, seed: int) -> list[int]:
    """Dataset indices to evaluate: all, or a seeded random subset of ``limit`` (kept in dataset order)."""
    if limit is None or limit >= n_available:
        return list(range(n_available))
    chosen = np.random.default_rng(seed).permutation(n_available)[:limit]
    return sorted(int(i) for i in chosen)


def plan_batches(indices: list[int], lengths: list[int], batch_size: int,
                 max_batch_tokens: int | None = None, max_padding: float | None = None) -> list[list[int]]:
    """Positions into ``indices`` grouped into batches of similar length (sorted by length, then index): at most
    ``batch_size`` examples, when given at most ``max_batch_tokens`` padded tokens, and when given at most
    ``max_padding`` padding per real token (a batch closes before the example that would pass it). Every batch
    has at least one example."""
    order = sorted(range(len(indices)), key=lambda k: (lengths[k], indices[k]))
    batches, current, real = [], [], 0
    for k in order:
        longest = lengths[k]  # sorted by length: the newest member is the longest
        padded = (len(current) + 1) * longest
        if current and (len(current) == batch_size or
                        (max_batch_tokens is not None and padded > max_batch_tokens) or
                        (max_padding is not None and padded > (1 + max_padding) * (real + longest))):
            batches.append(current)
            current, real = [], 0
        current.append(k)
        real += longest
    return batches + ([current] if current else [])


# ----------------------------------------------------------------------------------------------- files


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def dumps(results: dict) -> str:
    return json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n"


def _shard_path(rows_dir: Path, batch_id: int) -> Path:
    return rows_dir / f"batch_{batch_id:05d}.npz"


_SHARD_META = ("token_maps_json", "plan_id")


def save_shard(rows_dir: Path, batch_id: int, arrays: dict, token_maps: dict, plan_id: str) -> None:
    """One batch's rows, its token maps and the fingerprint of the plan that produced them, written atomically."""
    payload = dict(arrays)
    payload["token_maps_json"] = np.frombuffer(json.dumps(token_maps).encode("utf-8"), dtype=np.uint8)
    payload["plan_id"] = np.frombuffer(plan_id.encode("utf-8"), dtype=np.uint8)
    with atomic_path(_shard_path(rows_dir, batch_id)) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **payload)


def shard_plan_id(path: Path) -> str | None:
    """The plan fingerprint a stored shard carries ("" for a shard written without one); None if unreadable."""
    try:
        with np.load(path) as data:
            return bytes(data["plan_id"]).decode("utf-8") if "plan_id" in data.files else ""
    except Exception:  # noqa: BLE001 - numpy raises several types for a damaged archive
        return None


def load_shard(rows_dir: Path, batch_id: int, plan_id: str) -> tuple[dict, dict] | None:
    """(arrays, token maps) of a stored shard of plan ``plan_id``; None if absent or unreadable, EvalError if it
    belongs to another plan."""
    path = _shard_path(rows_dir, batch_id)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            produced_by = bytes(data["plan_id"]).decode("utf-8") if "plan_id" in data.files else ""
            arrays = {k: data[k] for k in data.files if k not in _SHARD_META}
            token_maps = json.loads(bytes(data["token_maps_json"]).decode("utf-8"))
    except Exception:  # noqa: BLE001 - a damaged shard is recomputed
        logger.warning("ignoring unreadable %s; it will be recomputed", path)
        return None
    if produced_by != plan_id:
        raise _foreign_shard(path)
    return arrays, {int(k): v for k, v in token_maps.items()}


def _foreign_shard(path: Path) -> EvalError:
    return EvalError(f"{path} was computed for another checkpoint, dataset or setting than this evaluation; drop "
                     "--resume to recompute every batch, or pass another --output-dir")


def stored_batches(rows_dir: Path, plan_id: str, n_batches: int) -> set[int]:
    """Batch ids whose stored shard belongs to ``plan_id`` (unreadable ones are left to be recomputed); EvalError
    for a shard of another plan."""
    done = set()
    for batch_id in range(n_batches):
        path = _shard_path(rows_dir, batch_id)
        if not path.is_file():
            continue
        produced_by = shard_plan_id(path)
        if produced_by is None:
            logger.warning("ignoring unreadable %s; it will be recomputed", path)
            continue
        if produced_by != plan_id:
            raise _foreign_shard(path)
        done.add(batch_id)
    return done


# ----------------------------------------------------------------------------------------------- run


def _plan_fingerprint(description: dict) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


@dataclass
class _Plan:
    """What one evaluation measures: the classifier, the chosen examples, their encodings and the batch plan."""

    classifier: object
    indices: list[int]
    labels: list[int]
    encodings: list[dict]
    batches: list[list[int]]
    max_length: int
    n_truncated: int
    measure: MeasureConfig
    plan_id: str
    n_split: int


def plan_evaluation(request: EvalRequest, device, is_main_process: bool = True) -> _Plan:
    """Everything that can be wrong is checked here, before the first measurement; returns the batch plan."""
    from .batching import check_batches_fit, encode_texts
    from .model_access import load_classifier

    split = load_split(request)
    classifier = load_classifier(request.checkpoint, attn_impl=request.attn_impl, device=device)
    labels_all = list(split["label"])
    bad = sorted({label for label in labels_all if not 0 <= label < classifier.num_labels})
    if bad:
        raise EvalError(f"labels of {request.dataset!r} ({request.split}) include {bad[0]}, outside the model's "
                        f"{classifier.num_labels} classes 0..{classifier.num_labels - 1}; evaluate a checkpoint trained "
                        "on this dataset (or pass --label-column)")
    max_length = min(request.max_length or classifier.max_length, classifier.max_length)
    if request.max_length and request.max_length > classifier.max_length:
        logger.warning("--max-length %d exceeds what the model takes; using %d", request.max_length, max_length)
    indices = select_examples(len(split), request.limit, request.measure.seed)
    chosen = split.select(indices) if len(indices) < len(split) else split
    texts = list(chosen["text"])
    pairs = list(chosen["text_pair"]) if request.text_pair_column else None
    encodings, n_truncated = encode_texts(classifier.tokenizer, texts, max_length, pairs)
    if n_truncated and is_main_process:
        print(f"eval_suite: truncated {n_truncated} of {len(texts)} texts to {max_length} tokens", flush=True)
    lengths = [len(e["input_ids"]) for e in encodings]
    batches = plan_batches(indices, lengths, request.batch_size, request.max_batch_tokens, request.max_padding)
    check_batches_fit(classifier.model.config, batches, lengths, device)
    longest = max((len(e["special_tokens_mask"]) - sum(e["special_tokens_mask"]) for e in encodings), default=0)
    measure = dataclasses.replace(request.measure, token_map_indices=frozenset(indices[: request.plot_examples]),
                                  longest_content=longest)
    description = {
        "checkpoint": classifier.checkpoint, "weights_fingerprint": classifier.weights_fingerprint,
        "attn_impl": classifier.attn_impl, "dataset": request.dataset, "split": request.split,
        "label_map": request.label_map,
        **({"text_pair_column": request.text_pair_column} if request.text_pair_column else {}),
        "indices": indices, "batches": batches, "max_length": max_length, "measure": measure.to_dict(),
        "plot_examples": request.plot_examples,
    }
    return _Plan(classifier, indices, [labels_all[i] for i in indices], encodings, batches, max_length, n_truncated,
                 measure, _plan_fingerprint(description), len(split))


def _previous_plan(out_dir: Path) -> str | None:
    """The plan fingerprint of the evaluation ``out_dir`` already holds: None when it holds none, "" when it holds
    outputs whose plan is unknown (results without rows/plan.json, or an unreadable plan)."""
    plan_path = out_dir / ROWS_DIR / PLAN_FILE
    if plan_path.is_file():
        try:
            return json.loads(plan_path.read_text(encoding="utf-8")).get("plan_id") or ""
        except (OSError, ValueError, AttributeError):
            return ""
    if (out_dir / RESULTS_FILE).exists() or (out_dir / ROWS_DIR).exists():
        return ""
    return None


def overwrite_staging_dir(out_dir: Path) -> Path:
    """The sibling folder an --overwrite builds its complete results in before they replace ``out_dir``."""
    return out_dir.parent / f".{out_dir.name}.overwrite"


def _work_dir(request: EvalRequest, plan: _Plan, out_dir: Path) -> Path:
    """Where this evaluation writes: ``out_dir``, or its staging sibling when --overwrite replaces another
    evaluation's results; EvalError when the folder holds another evaluation and no --overwrite was given."""
    previous = _previous_plan(out_dir)
    if previous is None or previous == plan.plan_id:
        return out_dir
    if not request.overwrite:
        what = "rows" if request.resume else "results"
        raise EvalError(f"'{out_dir}' holds the {what} of another checkpoint, dataset or setting; pass --overwrite "
                        "to replace them, or another --output-dir")
    foreign = sorted(p.name for p in out_dir.iterdir()
                     if p.name not in EVAL_OUTPUT_NAMES + (LOCK_FILE, LOCK_HOLDER_FILE))
    if foreign:
        raise EvalError(f"--overwrite replaces '{out_dir}' as a whole, but it holds files no evaluation wrote "
                        f"({', '.join(foreign[:3])}); move them or pick another --output-dir")
    return overwrite_staging_dir(out_dir)


def _prepare_rows_dir(request: EvalRequest, plan: _Plan, state, work_dir: Path) -> Path:
    """WORK_DIR/rows for this plan: kept on --resume (its shards are checked later), emptied otherwise. Called once
    the first batch is measured and the forecast is within budget, so a refused run writes nothing."""
    rows_dir = work_dir / ROWS_DIR
    state.wait_for_everyone()
    if state.is_main_process:
        if work_dir != Path(request.output_dir):
            shutil.rmtree(work_dir, ignore_errors=True)  # left by an --overwrite that did not finish
        rows_dir.mkdir(parents=True, exist_ok=True)
        if not request.resume:
            for stale in rows_dir.glob("batch_*.npz"):
                stale.unlink()
        atomic_write_text(rows_dir / PLAN_FILE,
                          json.dumps({"plan_id": plan.plan_id, "n_batches": len(plan.batches)}) + "\n")
    state.wait_for_everyone()
    return rows_dir


def _all_rows(plan: _Plan, gathered: list, done: set[int], rows_dir: Path) -> tuple[dict, dict]:
    """Every batch's rows (computed now or stored earlier), in example order, and the token maps."""
    by_batch = {batch_id: (arrays, maps) for batch_id, arrays, maps in gathered}
    for batch_id in done:
        loaded = load_shard(rows_dir, batch_id, plan.plan_id)
        if loaded is None:
            raise EvalError(f"stored rows of batch {batch_id} in {rows_dir} are unreadable; re-run without --resume")
        by_batch[batch_id] = loaded
    missing = [b for b in range(len(plan.batches)) if b not in by_batch]
    if missing:
        raise RuntimeError(f"rows of {len(missing)} batches never arrived (first: {missing[0]})")
    rows = concatenate_rows([by_batch[b][0] for b in range(len(plan.batches))])
    token_maps = {k: v for b in range(len(plan.batches)) for k, v in by_batch[b][1].items()}
    return rows, token_maps


def _state(request: EvalRequest):
    """accelerate's process state for the requested device (one GPU per process under ``accelerate launch``)."""
    from accelerate import PartialState

    wanted = "cpu" if request.cpu else request.device
    state = PartialState(cpu=wanted == "cpu")
    device = state.device
    if wanted.startswith("cuda:") and state.num_processes == 1:
        import torch

        device = torch.device(wanted)
    return state, device


def run_evaluation(request: EvalRequest) -> dict | None:
    """Evaluate; return the results dict on the main process (None on the others). Writes OUTDIR (module docstring).

    Before writing anything it measures the first batch, prints the forecast and, with ``budget_seconds``, raises
    :class:`eval_suite.schedule.BudgetExceeded` (an EvalError) when the forecast exceeds it.
    """
    request.validate()
    state, device = _state(request)
    out_dir = Path(request.output_dir)
    if state.is_main_process:
        recover_interrupted_replace(out_dir)  # an --overwrite without atomic exchange that died between renames
    state.wait_for_everyone()
    try:
        lock = lock_for_processes(out_dir, state)  # before anything loads; names the holder's pid
    except OutputDirError as error:
        raise EvalError(str(error)) from None
    staging = [overwrite_staging_dir(out_dir)] if request.overwrite and state.is_main_process else []
    try:
        with reporting_disk_full(out_dir, what="the evaluation", fix="run the same command again", remove=staging):
            return _run_locked(request, state, device, out_dir)
    except DiskFullError as error:  # the staging folder of an --overwrite is gone; the old results are intact
        raise EvalError(str(error)) from None
    finally:
        if lock is not None:
            lock.release()


def _run_locked(request: EvalRequest, state, device, out_dir: Path) -> dict | None:
    from accelerate.utils import gather_object

    from .schedule import run_batches

    started = time.perf_counter()
    plan = plan_evaluation(request, device, state.is_main_process)
    work_dir = _work_dir(request, plan, out_dir)  # every process decides the same, so all of them stop together
    rows_dir = work_dir / ROWS_DIR

    n_batches = len(plan.batches)
    done = stored_batches(rows_dir, plan.plan_id, n_batches) if request.resume else set()
    remaining = [b for b in range(n_batches) if b not in done]
    loop = run_batches(plan, remaining, state, budget_seconds=request.budget_seconds,
                       n_done=sum(len(plan.batches[b]) for b in done),
                       on_ready=lambda: _prepare_rows_dir(request, plan, state, work_dir),
                       save=lambda batch_id, arrays, maps: save_shard(rows_dir, batch_id, arrays, maps, plan.plan_id))
    computed = loop.computed
    gathered = gather_object(computed) if state.num_processes > 1 else computed
    if not state.is_main_process:
        state.wait_for_everyone()
        return None

    rows, token_maps = _all_rows(plan, gathered, done, rows_dir)
    results = build_results(request, plan, rows)
    write_outputs(work_dir, results, token_maps, write_plots=not request.no_plots)
    n_new = sum(len(plan.batches[b]) for b in remaining)
    run_info = {
        "processes": state.num_processes, "device": str(device),
        "examples_measured_this_run": n_new, "measure_seconds": loop.measure_seconds,
        "measure_cpu_seconds": loop.measure_cpu_seconds,
        "examples_per_second": n_new / loop.measure_seconds if loop.measure_seconds > 0 and n_new else None,
        "total_seconds": time.perf_counter() - started,
        "stage_seconds_main_process": {k: round(v, 3) for k, v in loop.timings.items()},
        "forecast": loop.forecast,
    }
    atomic_write_text(work_dir / RUN_INFO_FILE, json.dumps(run_info, indent=2) + "\n")
    if work_dir != out_dir:
        replace_folder(work_dir, out_dir)  # the complete new evaluation takes the old one's place in one step
    state.wait_for_everyone()
    return results


def build_results(request: EvalRequest, plan: _Plan, rows: dict) -> dict:
    """The results dict (docs/CONTRACTS.md section 4) of the rows of every planned example."""
    from hf_sparse_attn.data import public_dataset_name
    from hf_sparse_attn.public_names import public_name

    classifier, measure = plan.classifier, plan.measure
    head = {  # results.json may be published: local paths are recorded by name (hf_sparse_attn.public_names)
        "checkpoint": public_name(classifier.checkpoint),
        "weights_fingerprint": classifier.weights_fingerprint,
        "attn_impl": classifier.attn_impl,
        "sparse_attention": classifier.sparse_attention,
        "dataset": public_dataset_name(request.dataset),
        "split": request.split,
    }
    body = aggregate(rows, n_layers=classifier.n_layers, n_heads=classifier.n_heads, settings=measure,
                     config=request.aggregation)
    results = {**head, "n_examples": body.pop("n_examples"), "n_split": plan.n_split,
               "selection": "all examples of the split" if request.limit is None or request.limit >= plan.n_split
               else f"a seeded random subset (seed {measure.seed}) of {len(plan.indices)} of {plan.n_split}",
               "accuracy": body.pop("accuracy"), "accuracy_ci95": body.pop("accuracy_ci95"),
               "macro_f1": body.pop("macro_f1"), "n_layers": classifier.n_layers, "n_heads": classifier.n_heads}
    results.update(body)
    results["measure_selection"] = describe_selection(measure.measures)
    results["measures_left_out"] = {name: measure.left_out.get(name, "not in the selection")
                                    for name in tiers()["full"] if name not in measure.measures}
    results["plots"] = []
    results["config"] = {
        **measure.to_dict(),
        "aggregation": request.aggregation.to_dict(),
        "limit": request.limit,
        "batch_size": request.batch_size,
        "max_batch_tokens": request.max_batch_tokens,
        "max_padding": request.max_padding,
        "no_plots": request.no_plots,
        "max_length": plan.max_length,
        "n_truncated": plan.n_truncated,
        "text_column": request.text_column,
        "text_pair_column": request.text_pair_column,
        "label_column": request.label_column,
        "label_map": request.label_map,
        "label_names": classifier.label_names,
        "target": "probability of the predicted class",
        "special_tokens": SPECIAL_TOKENS_POLICY,
        "token_removal": "deleted from the sequence (later tokens shift left)",
        "importance_input": "word embeddings (get_input_embeddings); keys of layer l are hidden_states[l]",
    }
    return results


def write_outputs(out_dir: Path, results: dict, token_maps: dict, write_plots: bool = True) -> None:
    """results.json, per_layer_head.csv, token_examples.json, report.html and (unless ``write_plots`` is false)
    plots/*.png, each written atomically."""
    from .report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    results["plots"] = []
    if write_plots:
        from .plots import layer_head_plots, token_plots

        results["plots"] = layer_head_plots(results, out_dir) + token_plots(token_maps, out_dir,
                                                                            results["config"].get("label_names"))
    atomic_write_text(out_dir / LAYER_HEAD_TABLE_FILE, layer_head_table(results))
    atomic_write_text(out_dir / TOKEN_EXAMPLES_FILE,
                      json.dumps({str(k): v for k, v in sorted(token_maps.items())}, indent=1) + "\n")
    text = dumps(results)
    write_report(out_dir, json.loads(text), token_maps)
    atomic_write_text(out_dir / RESULTS_FILE, text)
