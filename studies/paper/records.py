"""Reading the study's unit records (results/<unit>.json): the numbers every table and finding is built from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from eval_suite.agreement import HEADLINE, RAW

NOT_RUN = "not run"
INPUT_PAIR = ("grad_norm", "loo")
REPR_PAIR = ("repr_grad_norm", "repr_loo")
MAPPING_ORDER = ("softmax", "sparsemax", "entmax15", "learned_alpha")


def load_records(out_dir: Path) -> dict[str, dict]:
    """unit name -> record, for every finished unit in OUTDIR/results."""
    records = {}
    for path in sorted((out_dir / "results").glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue  # a file being written by another sitting; it appears complete on the next regeneration
    return records


def last_layer(record: dict) -> int:
    return record["eval"]["n_layers"] - 1


def _mean(stat) -> float | None:
    """The mean of a defined stat from eval_suite (None for an undefined one)."""
    if isinstance(stat, dict):
        return stat.get("mean") if stat.get("defined", True) else None
    return stat


def layer_stat(record: dict, layer: int, key: str):
    """A per-layer pooled stat of the record (eval_suite pools a layer's defined heads, weighted by their n)."""
    return record["eval"]["per_layer"][layer].get(key)


def tau(record: dict, method: str, layer: int | None = None, metric: str = RAW) -> float | None:
    """A layer's pooled tau-b figure (``metric``: raw, excess, on_support, ...) of attention against ``method``."""
    layer = last_layer(record) if layer is None else layer
    agreement = layer_stat(record, layer, "agreement") or {}
    return _mean(agreement.get(method, {}).get(metric))


def input_to_repr_entropy(record: dict, layer: int | None = None) -> float | None:
    layer = last_layer(record) if layer is None else layer
    return _mean(record["eval"]["per_layer"][layer].get("input_to_repr_entropy"))  # None: eq. 5 not measured


def coindexed_share(record: dict, layer: int | None = None) -> float | None:
    layer = last_layer(record) if layer is None else layer
    return _mean(record["eval"]["per_layer"][layer].get("coindexed_share"))


def importance_entropy(record: dict, method: str) -> float | None:
    layer = last_layer(record)
    return _mean((record["eval"]["per_layer"][layer].get("importance_entropy") or {}).get(method))


def sparsity(record: dict, layer: int | None = None) -> float | None:
    layer = last_layer(record) if layer is None else layer
    return _mean(layer_stat(record, layer, "attention_sparsity"))


def special_mass(record: dict, layer: int) -> float | None:
    return _mean(layer_stat(record, layer, "special_mass"))


def accuracy(record: dict) -> float | None:
    return record["eval"].get("accuracy")


def over_seeds(records: list[dict], fn) -> tuple[float | None, float | None, int]:
    values = [fn(r) for r in records]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    return float(np.mean(values)), float(np.std(values)), len(values)


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    text = f"{value:.{digits}f}"
    return text.replace("0.", ".", 1) if abs(value) < 1 else text  # the paper's style: .72, -.18


def fmt_seeds(stat, digits: int = 2) -> str:
    mean, std, n = stat
    if n == 0:
        return NOT_RUN
    return f"{fmt(mean, digits)} ± {fmt(std, digits)} ({n} seeds)" if n > 1 else fmt(mean, digits)


def group(records: dict, encoder: str, dataset: str, mapping: str) -> list[dict]:
    """Records of one (encoder, dataset, mapping) over seeds (sweep copies excluded)."""
    return [r for name, r in records.items() if r["unit"]["encoder"] == encoder and r["unit"]["dataset"] == dataset
            and r["unit"]["mapping"] == mapping and not name.startswith(("sweep-", "adversarial-", "lr-"))]


def sweep_rows(records: dict, knob: str) -> list[dict]:
    rows = []
    for name, r in records.items():
        if name.startswith("sweep-") and knob in r["unit"].get("knob", {}):
            rows.append({
                "knob": r["unit"]["knob"][knob], "name": name, "accuracy": accuracy(r), "sparsity": sparsity(r),
                "entropy": {m: importance_entropy(r, m) for m in INPUT_PAIR},
                "tau": {m: tau(r, m) for m in INPUT_PAIR + REPR_PAIR},
                "tau_excess": {m: tau(r, m, metric=HEADLINE) for m in INPUT_PAIR + REPR_PAIR},
                "seed": r["unit"]["seed"], "at_cap": at_step_cap(r),
            })
    return sorted(rows, key=lambda row: row["knob"])


def at_step_cap(record: dict) -> bool | None:
    """Whether the model stopped at its step cap while validation accuracy was still improving (not early-stopped):
    possibly under-trained. None when the record does not say."""
    train = (record.get("train_metrics") or {}).get("train") or {}
    cap = record.get("step_cap") or train.get("step_cap")
    if cap is None or train.get("stopped_at_step") is None:
        return None
    return not train.get("stopped_early", False) and train["stopped_at_step"] >= cap


def trained_here(name: str, record: dict) -> bool:
    """Whether unit ``name`` trained a model of its own (not a copy of another unit, not the lr search's model)."""
    return (record["unit"].get("reuse") is None and record.get("model_run", name) == name
            and record["unit"]["mapping"] != "seed_jsd")
