"""The published numbers of Meister et al. (2021) that the reproduction study sets next to ours.

Source: ../shared/PAPER.md ("Numbers reported"), which summarises Meister, Lazov, Augenstein, Cotterell, "Is Sparse
Attention more Interpretable?", ACL-IJCNLP 2021, Tables 1-3 and Section 5. Only the Transformer rows are kept: our
from-scratch encoder (a) is the paper's 2-layer, 1-head Transformer; the BiLSTM has no counterpart here. Pairs are
(gradient, leave-one-out). Our ``mr`` stands in for SST (binary sentiment) and ``trec`` for 20News (topic-like
classification; 6 classes instead of the paper's 2-class sports subset).
"""

from __future__ import annotations

# dataset in our study -> the paper's column it stands in for
PAPER_COLUMN = {"mr": "SST", "trec": "20News"}

# Mean tau-b of attention with input importance (gradient, LOO), Transformer rows.
TAU_INPUT = {
    "softmax": {"IMDb": (0.67, 0.20), "20News": (0.54, 0.05), "SST": (0.72, 0.33)},
    "sparsemax": {"IMDb": (0.44, 0.21), "20News": (0.47, 0.14), "SST": (0.67, 0.30)},
}

# Mean tau-b of attention with importance of the intermediate representations (gradient, LOO), Transformer rows.
TAU_REPRESENTATION = {
    "softmax": {"IMDb": (0.76, 0.10), "20News": (0.62, 0.05), "SST": (0.89, 0.16)},
    "sparsemax": {"IMDb": (0.92, 0.19), "20News": (0.76, 0.15), "SST": (0.88, 0.25)},
}

# Mean normalised entropy of input influence on a representation (measurement 4), Transformer rows.
INPUT_TO_REPR_ENTROPY = {
    "softmax": {"IMDb": 0.76, "20News": 0.48, "SST": 0.73},
    "sparsemax": {"IMDb": 0.72, "20News": 0.46, "SST": 0.63},
}

# Kendall tau-b between the sparsegen-lin knob lambda and the mean normalised entropy of input importance.
KNOB_ENTROPY_TAU = {"IMDb": -0.83, "20News": -0.41, "SST": -0.81}

# Adversarial attention trained from scratch: JSD to the baseline's attention, accuracy change.
ADVERSARIAL = {"jsd_range": (0.57, 0.67), "max_accuracy_drop": 0.02}

# Baseline test accuracy range over the paper's models and datasets.
ACCURACY_RANGE = (0.79, 0.91)
