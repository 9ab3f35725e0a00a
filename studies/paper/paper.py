"""The published numbers of Meister et al. (2021) that the study sets next to ours (``paper_numbers.json``).

Only the Transformer rows are kept: our from-scratch encoder (a) is the paper's 2-layer, 1-head Transformer; the
BiLSTM has no counterpart here. Our ``mr`` stands in for SST (binary sentiment) and ``trec`` for 20News (topic-like
classification; 6 classes instead of the paper's 2-class sports subset).
"""

from __future__ import annotations

import json
from pathlib import Path

_NUMBERS = json.loads((Path(__file__).with_name("paper_numbers.json")).read_text(encoding="utf-8"))


def _pairs(table: dict) -> dict:
    return {mapping: {column: tuple(pair) for column, pair in row.items()} for mapping, row in table.items()}


# dataset in our study -> the paper's column it stands in for
PAPER_COLUMN = _NUMBERS["our_dataset_for_paper_column"]
# Mean tau-b of attention with input importance (gradient, LOO).
TAU_INPUT = _pairs(_NUMBERS["tau_input"])
# Mean tau-b of attention with importance of the intermediate representations (gradient, LOO).
TAU_REPRESENTATION = _pairs(_NUMBERS["tau_representation"])
# Mean normalised entropy of input influence on a representation (measurement 4).
INPUT_TO_REPR_ENTROPY = _NUMBERS["input_to_repr_entropy"]
# Kendall tau-b between the sparsegen-lin knob lambda and the mean normalised entropy of input importance.
KNOB_ENTROPY_TAU = _NUMBERS["knob_entropy_tau"]
# Adversarial attention trained from scratch: JSD to the baseline's attention, accuracy change.
ADVERSARIAL = {"jsd_range": tuple(_NUMBERS["adversarial"]["jsd_range"]),
               "max_accuracy_drop": _NUMBERS["adversarial"]["max_accuracy_drop"]}
# Baseline test accuracy range over the paper's models and datasets.
ACCURACY_RANGE = tuple(_NUMBERS["accuracy_range"])
