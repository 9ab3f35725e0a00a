"""Training encoders with sparse attention: one config, one function, one command line over it.

    from hf_sparse_attn.training import TrainConfig, train
    result = train(TrainConfig(output_dir="out/mr-entmax15", dataset="mr", attn_impl="entmax15", max_steps=150))
    result.final_dir, result.metrics["test"]["accuracy"]

    python -m hf_sparse_attn.training --dataset mr --attn-impl entmax15 --max-steps 150 --output-dir out/mr-entmax15
    accelerate launch -m hf_sparse_attn.training ...      # the same, split over processes

Modules: ``config`` (TrainConfig), ``loop`` (train), ``checkpoints`` (the run's files), ``metrics`` (accuracy,
macro-F1 and attention statistics: the one definition of sparsity), ``from_scratch`` (presets and tokenizer of
random-init encoders), ``cli``.
"""

from .config import TrainConfig, TrainError
from .from_scratch import PRESETS, FromScratchConfigError

__all__ = ["PRESETS", "FromScratchConfigError", "TrainConfig", "TrainError", "TrainResult", "TrainingCallback",
           "build_optimizer", "evaluate_split", "train"]
_FROM_LOOP = ("TrainingCallback", "TrainResult", "build_optimizer", "evaluate_split", "train")


def __getattr__(name: str):
    # The loop (torch, accelerate) loads on first use, so that `python -m hf_sparse_attn.training --help` is instant.
    if name in _FROM_LOOP:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'hf_sparse_attn.training' has no attribute {name!r}")
