"""checkpoint -> per-example rows -> results.json, per_layer_head.csv, plots; resumable, and split over processes.

Work is planned as fixed batches (examples sorted by token length, then index, chunked by ``batch_size``). The
plan depends only on the data, the checkpoint and the settings, never on the number of processes, so every
batch is computed identically whether one process or several run it: ``accelerate launch`` gives exactly the
numbers of a single-process run. Each finished batch is stored as ``OUTDIR/rows/batch_NNNNN.npz`` (written
atomically); ``--resume`` skips the batches already there. Processes take every k-th remaining batch, send their
rows to the main process (``accelerate.utils.gather_object``), and the main process aggregates and writes the
outputs, each to a temporary file renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hf_sparse_attn.constants import (LAYER_HEAD_TABLE_FILE, PLAN_FILE, RESULTS_FILE, ROWS_DIR, RUN_INFO_FILE,
                                      TOKEN_EXAMPLES_FILE)
from hf_sparse_attn.files import atomic_path, atomic_write_text

from .aggregate import AggregateConfig, aggregate, concatenate_rows, layer_head_table
from .errors import EvalError
from .attribution import InputToRepresentation
from .measure import AOPC_BOUNDS, MeasureConfig
from .measures import REGISTRY, describe_selection

logger = logging.getLogger(__name__)

SPECIAL_TOKENS_POLICY = (
    "all metrics use content tokens only (not padding, not tokenizer-added special tokens); attention and "
    "importance are restricted to them and renormalised; rollout and projection propagate through all "
    "non-padding positions before the restriction"
)


@dataclass
class EvalRequest:
    """Everything ``python -m eval_suite`` takes (see eval_suite/cli.py for the meaning of each field)."""

    checkpoint: str
    output_dir: str
    dataset: str = "mr"
    split: str = "test"
    limit: int | None = None
    attn_impl: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    batch_size: int = 32
    max_length: int | None = None
    resume: bool = False
    plot_examples: int = 3
    cpu: bool = False  # the same as device="cpu"
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    aggregation: AggregateConfig = field(default_factory=AggregateConfig)
    device: str = "auto"  # "auto" (a GPU when there is one), "cpu", "cuda", "cuda:N"
    budget_seconds: float | None = None  # refuse, before writing anything, when the forecast exceeds it
    max_batch_tokens: int = 4096  # a batch holds at most this many padded tokens (long documents: fewer examples)

    def validate(self) -> None:
        """One-line EvalError for settings that are wrong before anything is loaded."""
        m = self.measure
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit must be a positive number of examples, got {self.limit}; leave it out to "
                            "evaluate the whole split")
        if self.batch_size < 1:
            raise EvalError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 3:
            raise EvalError(f"--max-length must be >= 3 tokens, got {self.max_length}")
        if m.ig_steps < 1 or m.ig_max_steps < m.ig_steps:
            raise EvalError(f"--ig-steps must be >= 1 and --ig-max-steps >= --ig-steps, got {m.ig_steps} and "
                            f"{m.ig_max_steps}")
        if m.ig_tolerance is not None and not (m.ig_tolerance > 0 and math.isfinite(m.ig_tolerance)):
            raise EvalError(f"--ig-tolerance must be a positive number (or 'none'), got {m.ig_tolerance}")
        if m.aopc_bounds not in AOPC_BOUNDS:
            raise EvalError(f"--aopc-bounds must be one of {', '.join(AOPC_BOUNDS)}, got {m.aopc_bounds!r}")
        if m.input_to_repr not in InputToRepresentation.MODES:
            raise EvalError(f"--input-to-repr must be one of {', '.join(InputToRepresentation.MODES)}, got "
                            f"{m.input_to_repr!r}")
        if m.ig_baseline not in ("pad", "zero"):
            raise EvalError(f"--ig-baseline must be 'pad' or 'zero', got {m.ig_baseline!r}")
        if m.attention_query not in ("cls", "mean"):
            raise EvalError(f"--attention-query must be 'cls' or 'mean', got {m.attention_query!r}")
        if m.faithfulness_attention not in ("layers", "none"):
            raise EvalError(f"--faithfulness-attention must be 'layers' or 'none', got {m.faithfulness_attention!r}")
        if not m.fractions or any(not (0 < f <= 1) for f in m.fractions):
            raise EvalError(f"--fractions must be numbers in (0, 1], got {list(m.fractions)}")
        if self.plot_examples < 0:
            raise EvalError(f"--plot-examples must be >= 0, got {self.plot_examples}")
        if m.input_to_repr_sample is not None and m.input_to_repr_sample < 2:
            raise EvalError(f"--input-to-repr-sample must be >= 2 positions per example (a standard error needs two), "
                            f"got {m.input_to_repr_sample}")
        if self.budget_seconds is not None and not (self.budget_seconds > 0 and math.isfinite(self.budget_seconds)):
            raise EvalError(f"--budget must be a positive duration (e.g. 90s, 10m, 1.5h), got {self.budget_seconds}")
        if self.max_batch_tokens < 1:
            raise EvalError(f"--max-batch-tokens must be >= 1, got {self.max_batch_tokens}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise EvalError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda") and not self.cpu:
            import torch

            if not torch.cuda.is_available():
                raise EvalError(f"--device {self.device}: no CUDA device is visible to this process; use --device cpu "
                                "(or auto)")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise EvalError(f"--output-dir {self.output_dir!r} is a file; pass a folder")


# ----------------------------------------------------------------------------------------------- data


def load_split(request: EvalRequest):
    """The requested split as a datasets.Dataset with ``text`` and ``label``; EvalError on bad names."""
    try:
        from hf_sparse_attn.data import load_text_classification
    except ImportError as error:
        raise EvalError(f"hf_sparse_attn.data is not importable ({error}); install the package (pip install -e .)") from None
    splits = load_text_classification(request.dataset, text_column=request.text_column,
                                      label_column=request.label_column)
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
                 max_batch_tokens: int | None = None) -> list[list[int]]:
    """Positions into ``indices`` grouped into batches of similar length (sorted by length, then index): at most
    ``batch_size`` examples and, when given, at most ``max_batch_tokens`` padded tokens (at least one example)."""
    order = sorted(range(len(indices)), key=lambda k: (lengths[k], indices[k]))
    batches, current = [], []
    for k in order:
        longest = lengths[k]  # sorted by length: the newest member is the longest
        if current and (len(current) == batch_size or
                        (max_batch_tokens is not None and (len(current) + 1) * longest > max_batch_tokens)):
            batches.append(current)
            current = []
        current.append(k)
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


def save_shard(rows_dir: Path, batch_id: int, arrays: dict, token_maps: dict) -> None:
    payload = dict(arrays)
    payload["token_maps_json"] = np.frombuffer(json.dumps(token_maps).encode("utf-8"), dtype=np.uint8)
    with atomic_path(_shard_path(rows_dir, batch_id)) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **payload)


def load_shard(rows_dir: Path, batch_id: int) -> tuple[dict, dict] | None:
    path = _shard_path(rows_dir, batch_id)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k != "token_maps_json"}
            token_maps = json.loads(bytes(data["token_maps_json"]).decode("utf-8"))
        return arrays, {int(k): v for k, v in token_maps.items()}
    except Exception:  # noqa: BLE001 - a damaged shard is recomputed
        logger.warning("ignoring unreadable %s; it will be recomputed", path)
        return None


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
    from .batching import encode_texts
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
    texts = [split[i]["text"] for i in indices] if len(indices) < len(split) else list(split["text"])
    encodings, n_truncated = encode_texts(classifier.tokenizer, texts, max_length)
    if n_truncated and is_main_process:
        print(f"eval_suite: truncated {n_truncated} of {len(texts)} texts to {max_length} tokens", flush=True)
    batches = plan_batches(indices, [len(e["input_ids"]) for e in encodings], request.batch_size,
                           request.max_batch_tokens)
    measure = MeasureConfig(**{**request.measure.__dict__,
                               "token_map_indices": frozenset(indices[: request.plot_examples])})
    description = {
        "checkpoint": classifier.checkpoint, "weights_fingerprint": classifier.weights_fingerprint,
        "attn_impl": classifier.attn_impl, "dataset": request.dataset, "split": request.split,
        "indices": indices, "batches": batches, "max_length": max_length, "measure": measure.to_dict(),
        "plot_examples": request.plot_examples,
    }
    return _Plan(classifier, indices, [labels_all[i] for i in indices], encodings, batches, max_length, n_truncated,
                 measure, _plan_fingerprint(description), len(split))


def _check_rows_dir(request: EvalRequest, plan: _Plan) -> Path:
    """OUTDIR/rows for this plan; on --resume, refuse rows stored by another plan (every process checks, so all of
    them stop together). Nothing is written."""
    rows_dir = Path(request.output_dir) / ROWS_DIR
    plan_path = rows_dir / PLAN_FILE
    if request.resume and plan_path.is_file():
        previous = json.loads(plan_path.read_text(encoding="utf-8")).get("plan_id")
        if previous != plan.plan_id:
            raise EvalError(f"{rows_dir} holds rows of a different checkpoint, dataset or setting; drop --resume "
                            "or pass another --output-dir")
    return rows_dir


def _prepare_rows_dir(request: EvalRequest, plan: _Plan, rows_dir: Path, state) -> None:
    """Create OUTDIR/rows with this plan's record, emptied unless --resume."""
    state.wait_for_everyone()
    if state.is_main_process:
        rows_dir.mkdir(parents=True, exist_ok=True)
        if not request.resume:
            for stale in rows_dir.glob("batch_*.npz"):
                stale.unlink()
        atomic_write_text(rows_dir / PLAN_FILE,
                          json.dumps({"plan_id": plan.plan_id, "n_batches": len(plan.batches)}) + "\n")
    state.wait_for_everyone()


def _all_rows(plan: _Plan, gathered: list, done: set[int], rows_dir: Path) -> tuple[dict, dict]:
    """Every batch's rows (computed now or stored earlier), in example order, and the token maps."""
    by_batch = {batch_id: (arrays, maps) for batch_id, arrays, maps in gathered}
    for batch_id in done:
        loaded = load_shard(rows_dir, batch_id)
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
    from accelerate.utils import gather_object

    from .schedule import run_batches

    request.validate()
    state, device = _state(request)
    started = time.perf_counter()
    plan = plan_evaluation(request, device, state.is_main_process)
    rows_dir = _check_rows_dir(request, plan)

    n_batches = len(plan.batches)
    done = {b for b in range(n_batches) if request.resume and _shard_path(rows_dir, b).is_file()}
    remaining = [b for b in range(n_batches) if b not in done]
    loop = run_batches(plan, remaining, state, budget_seconds=request.budget_seconds,
                       n_done=sum(len(plan.batches[b]) for b in done),
                       on_ready=lambda: _prepare_rows_dir(request, plan, rows_dir, state),
                       save=lambda batch_id, arrays, maps: save_shard(rows_dir, batch_id, arrays, maps))
    computed = loop.computed
    gathered = gather_object(computed) if state.num_processes > 1 else computed
    if not state.is_main_process:
        state.wait_for_everyone()
        return None

    rows, token_maps = _all_rows(plan, gathered, done, rows_dir)
    out_dir = Path(request.output_dir)
    results = build_results(request, plan, rows)
    write_outputs(out_dir, results, token_maps)
    n_new = sum(len(plan.batches[b]) for b in remaining)
    run_info = {
        "processes": state.num_processes, "device": str(device),
        "examples_measured_this_run": n_new, "measure_seconds": loop.measure_seconds,
        "examples_per_second": n_new / loop.measure_seconds if loop.measure_seconds > 0 and n_new else None,
        "total_seconds": time.perf_counter() - started,
        "stage_seconds_main_process": {k: round(v, 3) for k, v in loop.timings.items()},
        "forecast": loop.forecast,
    }
    atomic_write_text(out_dir / RUN_INFO_FILE, json.dumps(run_info, indent=2) + "\n")
    state.wait_for_everyone()
    return results


def build_results(request: EvalRequest, plan: _Plan, rows: dict) -> dict:
    """The results dict (docs/CONTRACTS.md section 4) of the rows of every planned example."""
    classifier, measure = plan.classifier, plan.measure
    head = {
        "checkpoint": classifier.checkpoint,
        "weights_fingerprint": classifier.weights_fingerprint,
        "attn_impl": classifier.attn_impl,
        "sparse_attention": classifier.sparse_attention,
        "dataset": request.dataset,
        "split": request.split,
    }
    body = aggregate(rows, n_layers=classifier.n_layers, n_heads=classifier.n_heads,
                     ranking_names=measure.ranking_names(classifier.n_layers), fractions=list(measure.fractions),
                     config=request.aggregation, measures=measure.measures)
    results = {**head, "n_examples": body.pop("n_examples"), "n_split": plan.n_split,
               "selection": "all examples of the split" if request.limit is None or request.limit >= plan.n_split
               else f"a seeded random subset (seed {measure.seed}) of {len(plan.indices)} of {plan.n_split}",
               "accuracy": body.pop("accuracy"), "accuracy_ci95": body.pop("accuracy_ci95"),
               "macro_f1": body.pop("macro_f1"), "n_layers": classifier.n_layers, "n_heads": classifier.n_heads}
    results.update(body)
    results["measure_selection"] = describe_selection(measure.measures)
    results["measures_left_out"] = {name: measure.left_out.get(name, "not in the selection")
                                    for name in REGISTRY if name not in measure.measures}
    results["plots"] = []
    results["config"] = {
        **measure.to_dict(),
        "aggregation": request.aggregation.to_dict(),
        "limit": request.limit,
        "batch_size": request.batch_size,
        "max_batch_tokens": request.max_batch_tokens,
        "max_length": plan.max_length,
        "n_truncated": plan.n_truncated,
        "text_column": request.text_column,
        "label_column": request.label_column,
        "label_names": classifier.label_names,
        "target": "probability of the predicted class",
        "special_tokens": SPECIAL_TOKENS_POLICY,
        "token_removal": "deleted from the sequence (later tokens shift left)",
        "importance_input": "word embeddings (get_input_embeddings); keys of layer l are hidden_states[l]",
    }
    return results


def write_outputs(out_dir: Path, results: dict, token_maps: dict) -> None:
    """results.json, per_layer_head.csv, token_examples.json and plots/*.png, each written atomically."""
    from .plots import layer_head_plots, token_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = layer_head_plots(results, out_dir) + token_plots(token_maps, out_dir)
    results["plots"] = plots
    atomic_write_text(out_dir / LAYER_HEAD_TABLE_FILE, layer_head_table(results))
    atomic_write_text(out_dir / TOKEN_EXAMPLES_FILE,
                      json.dumps({str(k): v for k, v in sorted(token_maps.items())}, indent=1) + "\n")
    atomic_write_text(out_dir / RESULTS_FILE, dumps(results))
