"""The files of a training run: checkpoints (complete or absent), the evaluation log, and the final model folder.

Every writer stages into a temporary name and renames, so an interrupted run never leaves a half checkpoint or
final folder. In multi-process runs every process calls these functions; only the main process touches the file
system outside accelerate's own ``save_state`` / ``save_pretrained``.
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


def clear_previous_run(out: Path) -> None:
    """--overwrite: remove what an earlier run in ``out`` wrote (only our own files and folders)."""
    for name in (FINAL_DIR, f".{FINAL_DIR}.tmp", CHECKPOINTS_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (TRAIN_LOG_FILE, TRAINING_ARGS_FILE):
        (out / name).unlink(missing_ok=True)


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


def save_checkpoint(accelerator, out: Path, step: int, loss_sum: float, loss_count: int, keep: int) -> Path:
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
        atomic_write_json(staging / TRAINER_STATE_FILE,
                          {"step": step, "loss_sum": float(totals[0]), "loss_count": int(totals[1])})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        for _, old in _step_folders(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def write_final_folder(accelerator, model, tokenizer, out: Path, run_record: dict, metrics: dict) -> Path:
    """Model + remote code + tokenizer + args + metrics + log, staged beside and renamed into OUTDIR/final."""
    final, staging = out / FINAL_DIR, out / f".{FINAL_DIR}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(str(staging), is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    accelerator.wait_for_everyone()  # every process has finished with the staging folder before it is renamed
    if accelerator.is_main_process:
        tokenizer.save_pretrained(str(staging))
        atomic_write_json(staging / TRAINING_ARGS_FILE, run_record)
        shutil.copyfile(out / TRAIN_LOG_FILE, staging / TRAIN_LOG_FILE)
        atomic_write_json(staging / FINAL_METRICS_FILE, metrics)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
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
