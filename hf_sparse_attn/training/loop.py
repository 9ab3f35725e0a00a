"""Fine-tune (or train from scratch) an encoder with sparse attention: ``train(TrainConfig) -> TrainResult``.

Output folder (docs/CONTRACTS.md section 3)::

    OUTDIR/train_log.jsonl          one JSON object per evaluation (live during training)
    OUTDIR/training_args.json       the settings of the run (checked on resume)
    OUTDIR/checkpoints/step-N/      accelerate save_state (model, optimizer, scheduler, RNG) + trainer_state.json
    OUTDIR/best/step-N.safetensors  with --patience: the weights of the best validation accuracy so far
    OUTDIR/final/                   Hub-ready: model + remote code + tokenizer + training_args.json +
                                    final_metrics.json + train_log.jsonl; appears in one rename when training ends
                                    (with --overwrite, replaces the previous final/ only then)

One run at a time per output folder: the main process holds ``OUTDIR/.hf-sparse-attn.lock`` (output_dir.py) from
before anything is loaded until the run ends; a second run exits with the holder's pid. A step whose loss or
gradient norm is not finite stops the run at once (TrainError naming the step) and no final folder is written.

Determinism: data order comes from a seeded sampler per epoch and every step reseeds torch's RNG from
(seed, step, process), so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes, and
how often a run evaluates or checkpoints never changes its weights at a given step (evaluation draws no random
numbers the next step would see). With ``--patience N`` every evaluation compares validation accuracy with the
best so far (ties keep the earlier weights); after N evaluations without improvement the run stops and final/
holds the best weights, evaluated again on validation and test. The early-stopping state travels in each
checkpoint's trainer_state.json, so a resumed run stops where the uninterrupted one would.
Works the same in one process and under ``accelerate launch`` (every process calls :func:`train`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from ..constants import CHECKPOINTS_DIR, FINAL_DIR, FINAL_METRICS_FILE, TRAIN_LOG_FILE, TRAINING_ARGS_FILE
from ..data import load_text_classification, tokenize_for_classification
from ..files import atomic_write_json, first_line, reporting_disk_full
from ..fingerprint import dataset_fingerprint
from ..limits import check_batch_memory, check_encoder_config
from ..output_dir import lock_for_processes, recover_interrupted_replace
from ..sparse_attn_modeling import attention_alphas
from .checkpoints import (append_log, check_same_data, clear_previous_run, finished_result, latest_checkpoint,
                          read_checkpoint_state, run_is_finished, save_checkpoint, state_bytes, truncate_log,
                          write_final_folder)
from .config import RESULT_FIELDS, TrainConfig, TrainError
from .from_scratch import build_from_scratch_config, build_word_level_tokenizer, load_from_scratch_config
from .metrics import accuracy, attention_row_statistics, macro_f1, summarise_attention

logger = logging.getLogger("hf_sparse_attn.training")


class TrainingCallback:
    """Hook into the loop: ``on_step_end`` runs after every optimizer step (and that step's evaluation and
    checkpoint, when there is one). Subclass and pass instances to :func:`train`."""

    def on_step_end(self, step: int) -> None:
        pass


@dataclass
class TrainResult:
    """What :func:`train` returns on every process."""

    metrics: dict  # final_metrics.json: {"validation": {...}, "test": {...}, "train": {...}}
    per_layer_head: list[dict]  # the test split's per layer x head attention statistics
    final_dir: Path
    is_main_process: bool


@dataclass
class _Session:
    """Everything the loop works with, made once per run."""

    config: TrainConfig
    accelerator: object
    out: Path
    tokenizer: object
    model: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: object
    eval_loaders: dict
    steps_per_epoch: int
    total_steps: int
    run_record: dict


# --------------------------------------------------------------------------------------------- output folder


def prepare_output_dir(config: TrainConfig, num_processes: int) -> Path | None:
    """Check the output folder's state against resume/overwrite. Returns the latest checkpoint to resume."""
    out = Path(config.output_dir)
    if config.overwrite:
        return None  # live files cleared by clear_previous_run once data and model have loaded; final/ kept
    finished = run_is_finished(out)
    latest = latest_checkpoint(out)
    if not config.resume:
        if latest is not None or ((out / TRAIN_LOG_FILE).exists() and not finished):
            raise TrainError(f"'{out}' holds an unfinished run; pass --resume to continue it or --overwrite to start "
                             "over")
        if (out / FINAL_DIR / FINAL_METRICS_FILE).is_file():
            raise TrainError(f"'{out}' already holds a finished run; pass --overwrite to train again or pick another "
                             "--output-dir")
    if config.resume and (latest is not None or finished):
        _check_same_run(config, out / TRAINING_ARGS_FILE, num_processes)
    return latest


def _check_same_run(config: TrainConfig, args_path: Path, num_processes: int) -> None:
    if not args_path.is_file():
        return
    stored = json.loads(args_path.read_text(encoding="utf-8"))
    differing = [k for k in RESULT_FIELDS if k in stored and stored[k] != getattr(config, k)]
    if differing:
        shown = ", ".join(f"--{k.replace('_', '-')} {stored[k]!r} (now {getattr(config, k)!r})" for k in differing)
        raise TrainError(f"--resume must repeat the interrupted run's arguments: it used {shown}")
    if stored.get("num_processes", num_processes) != num_processes:
        raise TrainError(f"the interrupted run used {stored['num_processes']} process(es), this one {num_processes}; "
                         "resume with the same --num_processes (the data order per step depends on it)")


# --------------------------------------------------------------------------------------------- model & data


def load_tokenizer_and_model(config: TrainConfig, dataset_dict, num_labels: int, label_names: list[str]):
    """(tokenizer, sequence classifier with ``config.attn_impl``): from a checkpoint, or from scratch."""
    # attn_impl= is taught to the Auto classes when the hf_sparse_attn package is imported (this module is in it).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    if config.from_scratch:
        train = dataset_dict["train"]
        pairs = "text_pair" in train.column_names
        texts = list(train["text"]) + (list(train["text_pair"]) if pairs else [])
        tokenizer = build_word_level_tokenizer(texts, vocab_size=config.from_scratch_vocab_size,
                                               max_length=config.max_length)
        spec = load_from_scratch_config(config.from_scratch)
        model_config = build_from_scratch_config(spec, tokenizer, config.max_length)
        if pairs:  # the word-level tokenizer marks the second segment with token type 1
            model_config.type_vocab_size = max(2, getattr(model_config, "type_vocab_size", 2))
        derived = {} if "max_position_embeddings" in spec else {"max_position_embeddings": ("--max-length",
                                                                                            config.max_length)}
        check_encoder_config(model_config, f"--from-scratch {config.from_scratch}", training=True, overrides=derived)
        model_config.num_labels, model_config.id2label, model_config.label2id = num_labels, id2label, label2id
        model = AutoModelForSequenceClassification.from_config(model_config, attn_impl=config.attn_impl)
        return tokenizer, model
    _check_pretrained_config(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
    except (OSError, ValueError) as error:
        raise TrainError(f"cannot load a tokenizer from '{config.tokenizer or config.model}' ({first_line(error)}); "
                         "pass --tokenizer") from None
    from safetensors import SafetensorError

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            config.model, num_labels=num_labels, id2label=id2label, label2id=label2id, attn_impl=config.attn_impl,
            ignore_mismatched_sizes=True,  # a head trained for other labels is re-initialised, not an error
        )
    except OSError as error:
        raise TrainError(f"cannot load model '{config.model}' ({first_line(error)}); pass a checkpoint folder or "
                         "Hub id") from None
    except SafetensorError as error:  # a truncated or foreign weights file
        raise TrainError(f"the weights of '{config.model}' are not a readable safetensors file ({first_line(error)}); "
                         "download or save the model again") from None
    return tokenizer, model


def _check_pretrained_config(config: TrainConfig) -> None:
    """The --model's config.json, read and checked before the tokenizer or the weights load: readable JSON, sizes
    that fit (hf_sparse_attn.limits), and enough positions for --max-length."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, RobertaConfig

    try:
        model_config = AutoConfig.from_pretrained(config.model)
    except (OSError, ValueError, StrictDataclassError) as error:  # the last: a field of the wrong type (1e7 layers)
        raise TrainError(f"cannot read the config.json of '{config.model}' ({' '.join(str(error).split())}); fix "
                         "that file or pass another --model") from None
    check_encoder_config(model_config, f"config.json of '{config.model}'", training=True)
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions:  # RoBERTa's family numbers positions from pad_token_id + 1 (saved sparse models: base_model_type)
        family = getattr(model_config, "base_model_type", model_config.model_type)
        roberta_like = family in ("roberta", "xlm-roberta", "camembert") or isinstance(model_config, RobertaConfig)
        offset = (model_config.pad_token_id or 0) + 1 if roberta_like else 0
        if config.max_length > positions - offset:
            raise TrainError(f"--max-length {config.max_length} exceeds the {positions - offset} positions the model "
                             f"has (max_position_embeddings {positions}); use at most {positions - offset}")


def _check_batch_memory(config: TrainConfig, model, tokenized: dict, device) -> None:
    """LimitError before the first step when the longest training or evaluation batch cannot fit (training also
    allocates the gradients and AdamW's two moments at its first step)."""
    longest = {split: max(map(len, data["input_ids"]), default=0) for split, data in tokenized.items()}
    check_batch_memory(model.config, min(config.batch_size, len(tokenized["train"])), longest["train"], device=device,
                       extra_bytes=3 * state_bytes(model), what="a training batch")
    for split in ("validation", "test"):
        check_batch_memory(model.config, min(config.eval_batch_size, len(tokenized[split])), longest[split],
                           device=device, what=f"a {split} batch", fix="lower --eval-batch-size or --max-length")


def build_optimizer(model, lr: float, alpha_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with three groups: decayed weights, undecayed biases/norms, and learned alpha (own lr, no decay)."""
    decayed, undecayed, alphas = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("sparse_attn.alpha_logit"):
            alphas.append(param)
        elif param.ndim < 2 or "norm" in name.lower():
            undecayed.append(param)
        else:
            decayed.append(param)
    groups = [
        {"params": decayed, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
        {"params": undecayed, "lr": lr, "weight_decay": 0.0, "name": "biases_and_norms"},
    ]
    if alphas:
        groups.append({"params": alphas, "lr": alpha_lr, "weight_decay": 0.0, "name": "attention_alpha"})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _step_seed(seed: int, step: int, process_index: int) -> int:
    return int(np.random.SeedSequence([seed, step, process_index]).generate_state(1)[0])


def _load_splits(config: TrainConfig):
    dataset_dict = load_text_classification(config.dataset, text_column=config.text_column,
                                            label_column=config.label_column, label_map=config.label_map,
                                            text_pair_column=config.text_pair_column)
    if config.max_train_examples:
        dataset_dict["train"] = dataset_dict["train"].select(range(min(config.max_train_examples,
                                                                       len(dataset_dict["train"]))))
    if config.max_eval_examples:
        for split in ("validation", "test"):
            dataset_dict[split] = dataset_dict[split].select(range(min(config.max_eval_examples,
                                                                       len(dataset_dict[split]))))
    label_names = list(dataset_dict["train"].features["label"].names)
    logger.info("data %s: %s examples (train/validation/test), %d labels", config.dataset,
                "/".join(str(len(dataset_dict[s])) for s in ("train", "validation", "test")), len(label_names))
    return dataset_dict, label_names


def _by_length(dataset):
    """``dataset`` in order of token count (stable: equal lengths keep their order)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def _start_session(config: TrainConfig, accelerator, out: Path, resume_from: Path | None) -> _Session:
    """Data, model, optimizer, scheduler and loaders, prepared for ``accelerator``; the run record written."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    dataset_dict, label_names = _load_splits(config)
    data_fingerprint = dataset_fingerprint(dataset_dict)
    if resume_from is not None:
        check_same_data(out, config.dataset, data_fingerprint)
    set_seed(config.seed)  # the classifier head, or the whole from-scratch model, is randomly initialised
    tokenizer, model = load_tokenizer_and_model(config, dataset_dict, len(label_names), label_names)
    tokenized = {}
    for split in ("train", "validation", "test"):
        # Logs "<split>: truncated N of M texts" itself.
        tokenized[split], _ = tokenize_for_classification(dataset_dict[split], tokenizer, config.max_length, desc=split)

    collator = DataCollatorWithPadding(tokenizer)
    train_loader = DataLoader(tokenized["train"], batch_size=config.batch_size, shuffle=True, collate_fn=collator)
    # Evaluation batches group examples of similar length: every reported number is an order-free aggregate over
    # the split, and padding a batch to its longest member costs in proportion to the padding (more for sparse
    # mappings, whose sort grows faster than the length).
    eval_loaders = {split: DataLoader(_by_length(tokenized[split]), batch_size=config.eval_batch_size,
                                      collate_fn=collator) for split in ("validation", "test")}
    optimizer = build_optimizer(model, config.lr, config.alpha_lr, config.weight_decay)
    model, optimizer, train_loader, eval_loaders["validation"], eval_loaders["test"] = accelerator.prepare(
        model, optimizer, train_loader, eval_loaders["validation"], eval_loaders["test"])
    _check_batch_memory(config, accelerator.unwrap_model(model), tokenized, accelerator.device)
    steps_per_epoch = len(train_loader)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    # Not passed through prepare(): accelerate would step it once per process. Not registered for checkpointing
    # either (accelerate would unpickle it on resume): its state goes into trainer_state.json (checkpoints.py).
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    run_record = {**config.to_dict(), "num_processes": accelerator.num_processes, "steps_per_epoch": steps_per_epoch,
                  "total_steps": total_steps, "label_names": label_names, "data_fingerprint": data_fingerprint}
    if accelerator.is_main_process:
        if config.overwrite:
            clear_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / TRAINING_ARGS_FILE, run_record)
    return _Session(config, accelerator, out, tokenizer, model, optimizer, scheduler, train_loader, eval_loaders,
                    steps_per_epoch, total_steps, run_record)


# --------------------------------------------------------------------------------------------- training


@dataclass
class _Progress:
    """The loop's counters: saved in checkpoints (step, loss sums) or timing of this session only."""

    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    step_seconds: float = 0.0
    timed_steps: int = 0
    examples_seen: int = 0  # by this process, this session
    # early stopping (--patience); saved in checkpoints
    best_accuracy: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False

    def early_stopping_state(self) -> dict:
        return {"best_accuracy": self.best_accuracy, "best_step": self.best_step,
                "evals_since_best": self.evals_since_best, "stopped_early": self.stopped_early}


def train(config: TrainConfig, callbacks=()) -> TrainResult:
    """Run (or resume) the training ``config`` describes; returns the final result on every process."""
    from accelerate import Accelerator, DataLoaderConfiguration

    # Without a GPU, multi-process runs (accelerate launch --multi_gpu / torchrun) need cpu=True to use gloo.
    use_cpu = config.cpu or not torch.accelerator.is_available()
    accelerator = Accelerator(cpu=use_cpu, dataloader_config=DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=config.seed))
    is_main = accelerator.is_main_process
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()
    out = Path(config.output_dir)
    lock = lock_for_processes(out, accelerator)  # before anything loads; OutputDirError names the holder
    try:
        if is_main:
            recover_interrupted_replace(out / FINAL_DIR)  # a crash between the two renames of a final/ swap
        accelerator.wait_for_everyone()
        resume_from = prepare_output_dir(config, accelerator.num_processes)  # every process checks and agrees
        # TrainError, before anything loads or is written, when any file of the checkpoint changed since its save
        resume_state = read_checkpoint_state(resume_from) if resume_from is not None else None
        accelerator.wait_for_everyone()
        if config.resume and run_is_finished(out):
            logger.info("'%s' is already finished; nothing to resume", out)
            metrics, per_layer_head, final_dir = finished_result(out)
            return TrainResult(metrics, per_layer_head, final_dir, is_main)

        # Saves report a full disk themselves (with the bytes they need); this covers the log and run record.
        with reporting_disk_full(out, what="the run's files", fix="continue with --resume"):
            session = _start_session(config, accelerator, out, resume_from)
            progress = _resume(session, resume_from, resume_state)
            _train_steps(session, progress, callbacks)
            return _finish(session, progress)
    finally:
        if lock is not None:
            lock.release()


def _resume(session: _Session, resume_from: Path | None, state: dict | None) -> _Progress:
    """The loop's counters: from ``state`` (the checked trainer_state.json of ``resume_from``), else from zero."""
    accelerator, out = session.accelerator, session.out
    progress = _Progress()
    if resume_from is not None:
        try:
            accelerator.load_state(str(resume_from))  # safetensors, and torch.load(weights_only=True) for the rest
        except Exception as error:  # noqa: BLE001 - an unpickling refusal, a damaged file: one line, no traceback
            raise TrainError(f"cannot resume from {resume_from} ({type(error).__name__}: {first_line(error)}); the "
                             "checkpoint is damaged or was not written by this package: start over with --overwrite") from None
        session.scheduler.load_state_dict(state["scheduler"])
        progress.step = state["step"]
        early = state.get("early_stopping") or {}
        progress.best_accuracy, progress.best_step = early.get("best_accuracy"), early.get("best_step")
        progress.evals_since_best = early.get("evals_since_best", 0)
        progress.stopped_early = early.get("stopped_early", False)
        if accelerator.is_main_process:  # the checkpoint holds the loss sums of all processes; the others start at 0
            progress.loss_sum, progress.loss_count = state["loss_sum"], state["loss_count"]
            truncate_log(out / TRAIN_LOG_FILE, progress.step)
        logger.info("resumed from %s (step %d of %d)", resume_from, progress.step, session.total_steps)
    elif accelerator.is_main_process:
        (out / TRAIN_LOG_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return progress


BEST_DIR = "best"  # OUTDIR/best/step-N.safetensors; a checkpoint prunes those older than its own best (resume reads it)


def _best_file_name(step: int | None) -> str | None:
    return None if step is None else f"step-{step}.safetensors"


def _weights_on_cpu(accelerator, model) -> dict:
    # Clones: safetensors refuses tensors that share memory (tied embeddings); load_state_dict re-ties them.
    return {k: v.detach().cpu().clone().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}


def _track_best(session: _Session, progress: _Progress, accuracy_now: float) -> None:
    """--patience: keep the weights of a new best validation accuracy; count evaluations without one."""
    from safetensors.torch import save_file

    accelerator, best_dir = session.accelerator, session.out / BEST_DIR
    if progress.best_accuracy is None or accuracy_now > progress.best_accuracy:
        progress.best_accuracy, progress.best_step, progress.evals_since_best = accuracy_now, progress.step, 0
        weights = _weights_on_cpu(accelerator, session.model)
        if accelerator.is_main_process:
            best_dir.mkdir(parents=True, exist_ok=True)
            target = best_dir / _best_file_name(progress.step)
            with reporting_disk_full(best_dir, what=f"the best weights ({target.name})", fix="continue with --resume",
                                     needed_bytes=sum(w.numel() * w.element_size() for w in weights.values()),
                                     remove=[target.with_suffix(".tmp")]):
                save_file(weights, str(target.with_suffix(".tmp")))
                target.with_suffix(".tmp").replace(target)
        accelerator.wait_for_everyone()
    else:
        progress.evals_since_best += 1
        progress.stopped_early = progress.evals_since_best >= session.config.patience


def _prune_best(out: Path, best_step: int | None) -> None:
    """Drop best-weight files other than ``best_step``'s: the latest checkpoint names that one, so no resume needs them."""
    for path in (out / BEST_DIR).glob("step-*.safetensors"):
        if path.name != _best_file_name(best_step):
            path.unlink(missing_ok=True)


def _restore_best(session: _Session, progress: _Progress) -> None:
    from safetensors.torch import load_file

    path = session.out / BEST_DIR / _best_file_name(progress.best_step)
    weights = load_file(str(path))
    session.accelerator.unwrap_model(session.model).load_state_dict(weights, strict=True)


def _evaluate(session: _Session, progress: _Progress, split: str) -> dict:
    record = {"step": progress.step, "epoch": round(progress.step / session.steps_per_epoch, 4)}
    record.update(evaluate_split(session.accelerator, session.model, session.eval_loaders[split], split))
    return record


def _log(session: _Session, record: dict) -> None:
    if session.accelerator.is_main_process:
        append_log(session.out / TRAIN_LOG_FILE, record)


def _train_steps(session: _Session, progress: _Progress, callbacks) -> None:
    from tqdm.auto import tqdm

    config, accelerator, model = session.config, session.accelerator, session.model
    bar = tqdm(total=session.total_steps, initial=progress.step, desc="train",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    try:
        model.train()
        while progress.step < session.total_steps:
            epoch, batches_done = divmod(progress.step, session.steps_per_epoch)
            session.train_loader.set_epoch(epoch)
            batches = (accelerator.skip_first_batches(session.train_loader, batches_done) if batches_done
                       else session.train_loader)
            for batch in batches:
                started = time.perf_counter()
                torch.manual_seed(_step_seed(config.seed, progress.step, accelerator.process_index))  # dropout masks
                loss = model(**batch).loss
                accelerator.backward(loss)
                # With clipping off, max_norm=inf only measures the norm (the gradients are scaled by exactly 1).
                grad_norm = accelerator.clip_grad_norm_(model.parameters(),
                                                        config.max_grad_norm if config.max_grad_norm > 0 else math.inf)
                _stop_unless_finite(accelerator, loss, grad_norm, progress.step + 1)
                session.optimizer.step()
                session.scheduler.step()
                session.optimizer.zero_grad()
                progress.step += 1
                progress.step_seconds += time.perf_counter() - started
                progress.timed_steps += 1
                progress.examples_seen += batch["labels"].shape[0]
                progress.loss_sum += float(loss.detach())
                progress.loss_count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{progress.loss_sum / progress.loss_count:.4f}")

                step = progress.step
                if step % config.eval_every == 0 and step < session.total_steps:
                    record = _evaluate(session, progress, "validation")
                    record["train_loss"] = _mean_over_processes(accelerator, progress.loss_sum, progress.loss_count)
                    progress.loss_sum, progress.loss_count = 0.0, 0
                    if config.patience is not None:
                        _track_best(session, progress, record["accuracy"])
                        record["best_step"] = progress.best_step
                    _log(session, record)
                    bar.write(_one_line(record))
                    model.train()
                if step % config.save_every == 0 and step < session.total_steps and not progress.stopped_early:
                    save_checkpoint(accelerator, session.out, step, progress.loss_sum, progress.loss_count,
                                    config.save_total_limit, session.scheduler.state_dict(),
                                    early_stopping=progress.early_stopping_state(),
                                    needed_bytes=state_bytes(model, session.optimizer))
                    if config.patience is not None and accelerator.is_main_process:
                        _prune_best(session.out, progress.best_step)
                for callback in callbacks:
                    callback.on_step_end(step)
                if step >= session.total_steps or progress.stopped_early:
                    break
            if progress.stopped_early:
                break
    finally:
        bar.close()  # also when a step stops the run: the error is then the last line printed


def _stop_unless_finite(accelerator, loss, grad_norm, step: int) -> None:
    """TrainError when any process's loss or the gradient norm of ``step`` is not finite (all processes agree)."""
    health = torch.stack([loss.detach().float().reshape(()), torch.as_tensor(grad_norm).float().reshape(()).to(
        loss.device)])
    if accelerator.num_processes > 1:
        health = accelerator.reduce(health, "sum")  # a NaN or inf anywhere reaches every process
    if not torch.isfinite(health).all():
        raise TrainError(f"step {step}: the loss ({float(loss.detach()):.4g}) or the gradient norm ({float(grad_norm):.4g}) is "
                         "not finite; training stopped and no final folder was written (lower --lr, or check the "
                         "data)")


def _finish(session: _Session, progress: _Progress) -> TrainResult:
    """Evaluate validation and test, write OUTDIR/final, drop the checkpoints."""
    accelerator, out = session.accelerator, session.out
    train_loss = _mean_over_processes(accelerator, progress.loss_sum, progress.loss_count)
    stopped_at = progress.step
    if session.config.patience is not None:
        if not progress.stopped_early and progress.best_step != progress.step:  # the last step is a candidate too
            _track_best(session, progress, _evaluate(session, progress, "validation")["accuracy"])
        if progress.best_step != progress.step:
            _restore_best(session, progress)
            progress.step = progress.best_step  # the records below describe the weights that final/ holds
    final_records = {}
    for split in ("validation", "test"):
        record = _evaluate(session, progress, split)
        record["train_loss"] = train_loss
        final_records[split] = record
        _log(session, record)
    metrics = {split: {k: r[k] for k in ("accuracy", "macro_f1", "loss", "step", "epoch", "sparsity",
                                         "support_size", "n_examples")}
               for split, r in final_records.items()}
    digests = accelerator.gather_for_metrics([_parameter_digest(accelerator.unwrap_model(session.model))],
                                             use_gather_object=True)
    metrics["train"] = {  # every value a per-split dict, so that cards can tabulate final_metrics.json by split
        "loss": train_loss,  # mean over the steps since the last evaluation
        "step": progress.step,
        "epoch": round(progress.step / session.steps_per_epoch, 4),
        "seconds_per_step": progress.step_seconds / max(progress.timed_steps, 1),  # this session, evaluation excluded
        "num_processes": accelerator.num_processes,
        "examples_seen_this_session": int(accelerator.reduce(
            torch.tensor(float(progress.examples_seen), dtype=torch.float64, device=accelerator.device), "sum")),
        "process_parameter_digests": list(digests),  # sha256 of each process's weights: all equal under DDP
        "stopped_at_step": stopped_at,  # the last optimizer step taken; "step" is that of the weights kept
    }
    if session.config.patience is not None:
        metrics["train"].update(best_step=progress.best_step, best_validation_accuracy=progress.best_accuracy,
                                stopped_early=progress.stopped_early)
    final_dir = write_final_folder(accelerator, session.model, session.tokenizer, out, session.run_record, metrics)
    if accelerator.is_main_process and not session.config.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
        shutil.rmtree(out / BEST_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(metrics, final_records["test"]["per_layer_head"], final_dir, accelerator.is_main_process)


@torch.no_grad()
def evaluate_split(accelerator, model, loader, split: str) -> dict:
    """Loss, accuracy, macro-F1 and per layer/head attention statistics over every example of ``loader``."""
    from tqdm.auto import tqdm

    model.eval()
    logits_all, labels_all, losses_all, stats_sum = [], [], [], None
    for batch in tqdm(loader, desc=f"eval {split}", leave=False, disable=not accelerator.is_local_main_process):
        outputs = model(**batch, output_attentions=True)
        losses = torch.nn.functional.cross_entropy(outputs.logits.float(), batch["labels"], reduction="none")
        stats = attention_row_statistics(outputs.attentions, batch["attention_mask"])
        logits, labels, losses, stats = accelerator.gather_for_metrics((outputs.logits, batch["labels"], losses, stats))
        logits_all.append(logits.float().cpu())
        labels_all.append(labels.cpu())
        losses_all.append(losses.cpu())
        summed = stats.sum(dim=0).cpu()
        stats_sum = summed if stats_sum is None else stats_sum + summed
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    predictions = logits.argmax(dim=-1).numpy()
    per_layer_head = summarise_attention(stats_sum, attention_alphas(accelerator.unwrap_model(model)))
    return {
        "split": split,
        "loss": float(torch.cat(losses_all).mean()),
        "accuracy": accuracy(predictions, labels.numpy()),
        "macro_f1": macro_f1(predictions, labels.numpy()),
        "n_examples": int(labels.numel()),
        "sparsity": float(np.mean([r["sparsity"] for r in per_layer_head])),
        "support_size": float(np.mean([r["support_size"] for r in per_layer_head])),
        "per_layer_head": per_layer_head,
    }


def _mean_over_processes(accelerator, total: float, count: int) -> float | None:
    summed = accelerator.reduce(torch.tensor([total, float(count)], dtype=torch.float64, device=accelerator.device),
                                "sum")
    return float(summed[0] / summed[1]) if summed[1] > 0 else None


def _one_line(record: dict) -> str:
    return (f"step {record['step']} {record['split']}: accuracy {record['accuracy']:.4f} macro-F1 "
            f"{record['macro_f1']:.4f} loss {record['loss']:.4f} sparsity {record['sparsity']:.3f}")


def _parameter_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
