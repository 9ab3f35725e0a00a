"""The files of a training run: checkpoints (complete or absent), the evaluation log, and the final model folder.

Every writer stages into a temporary name and renames, so an interrupted run never leaves a half checkpoint or
final folder; a new final folder replaces an old one only once it is complete (``replace_folder``), so
``--overwrite`` loses the previous model only when its successor exists. In multi-process runs every process calls
these functions; only the main process touches the file system outside accelerate's own ``save_state`` /
``save_pretrained``.

A checkpoint holds nothing that ``--resume`` unpickles with code execution: accelerate's ``save_state`` files
(weights as safetensors; optimizer and RNG states, which accelerate loads with ``weights_only=True``) and
``trainer_state.json`` with the step, the loss sums and the learning-rate scheduler's state as JSON. The scheduler is
deliberately not registered with accelerate, whose custom-state loader unpickles with ``weights_only=False``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..constants import (CHECKPOINTS_DIR, FINAL_DIR, FINAL_METRICS_FILE, TRAIN_LOG_FILE, TRAINER_STATE_FILE,
                         TRAINING_ARGS_FILE)
from ..files import atomic_write_json, atomic_write_text
from ..output_dir import replace_folder

STAGING_FINAL_DIR = f".{FINAL_DIR}.tmp"


def clear_previous_run(out: Path) -> None:
    """--overwrite: remove the live files of an earlier run in ``out`` (only our own files and folders). Its
    ``final/`` stays until the new run's final folder replaces it."""
    for name in (STAGING_FINAL_DIR, CHECKPOINTS_DIR, "best"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (TRAIN_LOG_FILE, TRAINING_ARGS_FILE):
        (out / name).unlink(missing_ok=True)


def published_run_record(run_record: dict) -> dict:
    """The run record as ``final/training_args.json`` publishes it: local paths reduced to names (public_names)."""
    from ..data import public_dataset_name
    from ..public_names import public_name

    published = dict(run_record)
    for key in ("output_dir", "model", "tokenizer", "from_scratch"):
        published[key] = public_name(published.get(key))
    published["dataset"] = public_dataset_name(published["dataset"])
    return published


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_is_finished(out: Path) -> bool:
    """Whether ``out/final`` is the finished model of the run ``out/training_args.json`` describes (after an
    interrupted --overwrite, ``final/`` still holds the previous run's model)."""
    final = out / FINAL_DIR
    if not (final / FINAL_METRICS_FILE).is_file():
        return False
    live, published = _read_json(out / TRAINING_ARGS_FILE), _read_json(final / TRAINING_ARGS_FILE)
    if live is None:
        return True  # only the final folder is left: nothing else to compare it with
    return published in (live, published_run_record(live))


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``step-N`` folder under ``root``, staging folders excluded, in step order."""
    if not root.is_dir():
        return []
    return sorted((int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*")
                  if p.is_dir() and p.name.split("-", 1)[1].isdigit())


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``out/checkpoints``, or None."""
    complete = [(step, p) for step, p in _step_folders(out / CHECKPOINTS_DIR) if (p / TRAINER_STATE_FILE).is_file()]
    return complete[-1][1] if complete else None


def save_checkpoint(accelerator, out: Path, step: int, loss_sum: float, loss_count: int, keep: int,
                    scheduler_state: dict, early_stopping: dict | None = None) -> Path:
    """accelerate save_state into checkpoints/step-N.tmp, then rename: a checkpoint folder is complete or absent."""
    root = out / CHECKPOINTS_DIR
    target, staging = root / f"step-{step}", root / f"step-{step}.tmp"
    totals = accelerator.reduce(torch.tensor([loss_sum, float(loss_count)], dtype=torch.float64,
                                             device=accelerator.device), "sum")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(staging / TRAINER_STATE_FILE, {"step": step, "loss_sum": float(totals[0]),
                                                         "loss_count": int(totals[1]), "scheduler": scheduler_state,
                                                         "early_stopping": early_stopping})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        for _, old in _step_folders(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def write_final_folder(accelerator, model, tokenizer, out: Path, run_record: dict, metrics: dict) -> Path:
    """Model + remote code + tokenizer + args + metrics + log, staged beside and swapped into OUTDIR/final."""
    final, staging = out / FINAL_DIR, out / STAGING_FINAL_DIR
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(str(staging), is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    accelerator.wait_for_everyone()  # every process has finished with the staging folder before it is renamed
    if accelerator.is_main_process:
        tokenizer.save_pretrained(str(staging))
        atomic_write_json(staging / TRAINING_ARGS_FILE, published_run_record(run_record))
        shutil.copyfile(out / TRAIN_LOG_FILE, staging / TRAIN_LOG_FILE)
        atomic_write_json(staging / FINAL_METRICS_FILE, metrics)
        replace_folder(staging, final)
    accelerator.wait_for_everyone()
    return final


def read_log(path: Path) -> list[dict]:
    """The records of a train_log.jsonl (one JSON object per line)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = [record for record in read_log(path) if record["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def finished_result(out: Path) -> tuple[dict, list[dict], Path]:
    """(final metrics, test per_layer_head records, final folder) of a run that has already finished."""
    final = out / FINAL_DIR
    metrics = json.loads((final / FINAL_METRICS_FILE).read_text(encoding="utf-8"))
    test_records = [r for r in read_log(final / TRAIN_LOG_FILE) if r["split"] == "test"]
    return metrics, test_records[-1]["per_layer_head"], final
