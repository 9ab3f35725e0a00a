"""Names of the files and config keys the packages hand to each other (docs/CONTRACTS.md), in one place.

The remote-code files keep their own copies of ``CONFIG_KEY`` and ``REMOTE_CODE_FILES`` (they must stay
self-contained); these are the same objects, imported from there.
"""

from __future__ import annotations

from .sparse_attn_modeling import CONFIG_KEY, REMOTE_CODE_FILES

# A training run's output folder (OUTDIR) and its finished model folder (OUTDIR/final).
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_LOG_FILE = "train_log.jsonl"
TRAINING_ARGS_FILE = "training_args.json"
FINAL_METRICS_FILE = "final_metrics.json"
TRAINER_STATE_FILE = "trainer_state.json"

# An evaluation's output folder.
RESULTS_FILE = "results.json"
LAYER_HEAD_TABLE_FILE = "per_layer_head.csv"
TOKEN_EXAMPLES_FILE = "token_examples.json"
RUN_INFO_FILE = "run_info.json"
ROWS_DIR = "rows"
PLAN_FILE = "plan.json"
PLOTS_DIR = "plots"
REPORT_FILE = "report.html"  # the interactive page of an evaluation, also published with the card
# Everything an evaluation writes into its output folder: what --overwrite may replace.
EVAL_OUTPUT_NAMES = (RESULTS_FILE, LAYER_HEAD_TABLE_FILE, TOKEN_EXAMPLES_FILE, RUN_INFO_FILE, ROWS_DIR, PLOTS_DIR,
                     REPORT_FILE)

# What a model card adds to a model folder.
CARD_FILE = "README.md"
CARD_IMAGES_DIR = "interpretability"

__all__ = [
    "CARD_FILE",
    "CARD_IMAGES_DIR",
    "CHECKPOINTS_DIR",
    "CONFIG_KEY",
    "EVAL_OUTPUT_NAMES",
    "FINAL_DIR",
    "FINAL_METRICS_FILE",
    "LAYER_HEAD_TABLE_FILE",
    "PLAN_FILE",
    "PLOTS_DIR",
    "REMOTE_CODE_FILES",
    "REPORT_FILE",
    "RESULTS_FILE",
    "ROWS_DIR",
    "RUN_INFO_FILE",
    "TOKEN_EXAMPLES_FILE",
    "TRAINER_STATE_FILE",
    "TRAINING_ARGS_FILE",
    "TRAIN_LOG_FILE",
]
