"""Files of a training run: atomic checkpoints, the atomically renamed final folder, the log, resume helpers.

Everything that lands on disk is written beside its final name and renamed into place (``os.replace`` for files,
a directory rename for folders), so an interrupted run never leaves a half-written checkpoint or final folder.
In multi-process runs every process calls these functions; only the main process touches the file system
outside accelerate's own ``save_state`` / ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
ARGS_FILE = "training_args.json"
METRICS_FILE = "final_metrics.json"
TRAINER_STATE_FILE = "trainer_state.json"


def clear_previous_run(out: Path) -> None:
    """--overwrite: remove what an earlier run in ``out`` wrote (only our own files and folders)."""
    for name in (FINAL_DIR, f".{FINAL_DIR}.tmp", CHECKPOINTS_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (LOG_FILE, ARGS_FILE):
        (out / name).unlink(missing_ok=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``out/checkpoints`` (staging folders ignored), or None."""
    root = out / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    steps = [(int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit() and (p / TRAINER_STATE_FILE).is_file()]
    return max(steps)[1] if steps else None


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
        write_json_atomic(staging / TRAINER_STATE_FILE,
                           {"step": step, "loss_sum": float(totals[0]), "loss_count": int(totals[1])})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        finished = sorted((int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*")
                          if p.is_dir() and p.name.split("-", 1)[1].isdigit())
        for _, old in finished[:-keep]:
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
        write_json_atomic(staging / ARGS_FILE, run_record)
        shutil.copyfile(out / LOG_FILE, staging / LOG_FILE)
        write_json_atomic(staging / METRICS_FILE, metrics)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    accelerator.wait_for_everyone()
    return final


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def finished_result(out: Path, is_main: bool) -> dict:
    final = out / FINAL_DIR
    metrics = json.loads((final / METRICS_FILE).read_text(encoding="utf-8"))
    test_records = [json.loads(line) for line in (final / LOG_FILE).read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["split"] == "test"]
    return {"metrics": metrics, "per_layer_head": test_records[-1]["per_layer_head"], "final_dir": str(final),
            "is_main_process": is_main}
