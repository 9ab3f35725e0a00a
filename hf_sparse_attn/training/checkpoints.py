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

``trainer_state.json`` also records the sha256 of every other file of its checkpoint and of its own content;
``--resume`` checks both before loading anything (:func:`read_checkpoint_state`), so an edited step, optimizer or
RNG state, or a planted file, is refused instead of silently continuing a run that never happened. Likewise
``training_args.json`` records the fingerprint of the data's content (``dataset_fingerprint``), which
:func:`check_same_data` compares on resume: a data file edited at the same path is refused.

A full disk during a save ends in one :class:`~hf_sparse_attn.files.DiskFullError` line with the staging folder
removed and the previous checkpoint or final folder intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..constants import (CHECKPOINTS_DIR, FINAL_DIR, FINAL_METRICS_FILE, TRAIN_LOG_FILE, TRAINER_STATE_FILE,
                         TRAINING_ARGS_FILE)
from ..files import atomic_write_json, atomic_write_text, reporting_disk_full
from ..output_dir import replace_folder
from .config import TrainError

logger = logging.getLogger("hf_sparse_attn.training")

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
                    scheduler_state: dict, early_stopping: dict | None = None, needed_bytes: int | None = None) -> Path:
    """accelerate save_state into checkpoints/step-N.tmp, then rename: a checkpoint folder is complete or absent.

    ``needed_bytes`` (the model's and optimizer's tensors) is what a full disk's error says the save needs."""
    root = out / CHECKPOINTS_DIR
    target, staging = root / f"step-{step}", root / f"step-{step}.tmp"
    totals = accelerator.reduce(torch.tensor([loss_sum, float(loss_count)], dtype=torch.float64,
                                             device=accelerator.device), "sum")
    with reporting_disk_full(root, what=f"checkpoint step-{step}", needed_bytes=needed_bytes,
                             fix="continue with --resume", remove=[staging] if accelerator.is_main_process else []):
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {"step": step, "loss_sum": float(totals[0]), "loss_count": int(totals[1]),
                     "scheduler": scheduler_state, "early_stopping": early_stopping, "files": _file_digests(staging)}
            atomic_write_json(staging / TRAINER_STATE_FILE, {**state, "sha256": _state_digest(state)})
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            for _, old in _step_folders(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def state_bytes(*objects) -> int:
    """Bytes of the tensors in the ``state_dict()`` of each object (a model, an optimizer): what saving them writes,
    give or take the file formats' headers."""
    def tensor_bytes(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(v) for v in value)
        return 0

    return sum(tensor_bytes(obj.state_dict()) for obj in objects)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a checkpoint folder but trainer_state.json."""
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != TRAINER_STATE_FILE}


def _state_digest(state: dict) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def read_checkpoint_state(folder: Path) -> dict:
    """The trainer_state.json of a checkpoint, after checking it and every file beside it against the digests it
    recorded when it was written; TrainError naming what changed otherwise (before anything is unpickled)."""
    def changed(detail: str) -> TrainError:
        return TrainError(f"{folder} changed after it was written ({detail}); its training state cannot be trusted: "
                          "start over with --overwrite")

    try:
        state = json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise changed(f"{TRAINER_STATE_FILE} is unreadable: {type(error).__name__}") from None
    if not isinstance(state, dict) or "scheduler" not in state:
        raise TrainError(f"{folder} was written by an older version that kept the scheduler in a pickle, which "
                         "--resume does not load; start over with --overwrite")
    recorded = state.pop("sha256", None)
    if recorded is None:
        logger.warning("%s was written by a version that recorded no digests; its files are not checked", folder)
    else:
        if _state_digest(state) != recorded:
            raise changed(f"the content of {TRAINER_STATE_FILE} differs from its recorded digest")
        files = _file_digests(folder)
        expected = state.get("files") or {}
        for name in sorted(set(files) | set(expected)):
            if name not in expected:
                raise changed(f"it holds {name}, which the save did not write")
            if files.get(name) != expected[name]:
                raise changed(f"{name} {'is missing' if name not in files else 'differs from what was saved'}")
    scheduler_steps = (state.get("scheduler") or {}).get("last_epoch")
    if not isinstance(state.get("step"), int) or scheduler_steps != state["step"]:
        raise changed(f"step {state.get('step')!r} but the scheduler took {scheduler_steps!r} steps")
    return state


def check_same_data(out: Path, dataset: str, fingerprint: str) -> None:
    """TrainError when the run in ``out`` recorded another data fingerprint than ``fingerprint`` (the data at the
    same path changed since it began); runs that recorded none pass."""
    stored = _read_json(out / TRAINING_ARGS_FILE) or {}
    if stored.get("data_fingerprint") not in (None, fingerprint):
        raise TrainError(f"the data of --dataset {dataset} changed since the interrupted run began (another content "
                         "fingerprint); resume with the data it started with, or pass --overwrite to start over on "
                         "this data")


def write_final_folder(accelerator, model, tokenizer, out: Path, run_record: dict, metrics: dict) -> Path:
    """Model + remote code + tokenizer + args + metrics + log, staged beside and swapped into OUTDIR/final."""
    final, staging = out / FINAL_DIR, out / STAGING_FINAL_DIR
    unwrapped = accelerator.unwrap_model(model)
    with reporting_disk_full(out, what="the final model", needed_bytes=state_bytes(unwrapped),
                             fix="continue with --resume", remove=[staging] if accelerator.is_main_process else []):
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        unwrapped.save_pretrained(str(staging), is_main_process=accelerator.is_main_process,
                                  save_function=accelerator.save)
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
    """Append one record as a line; a write that fails (a full disk) is cut off again, leaving no partial line."""
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


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
