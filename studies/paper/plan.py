"""The units of the study: which models are trained and evaluated, in which order, with which settings.

Encoders (the report's letters):

* ``pooling`` (a) — the paper's architecture: 2-layer, 1-head, hidden-128 softmax encoder plus one attention-pooling
  layer (learned query) that feeds the classifier; only the pooling carries the mapping. The rows compared with
  the paper.
* ``scratch`` (b) — the same encoder without the pooling, every self-attention layer sparse, classifying from the
  first token.
* ``scratch-last`` (c) — as (b) with only the last self-attention layer sparse.
* ``minilm`` / ``minilm-last`` — the embedded all-MiniLM-L6-v2 fine-tuned, every layer / only the last layer sparse.

Every unit trains with early stopping on validation accuracy (``--patience``) under a step cap; the learning rate
of each encoder family (from scratch, MiniLM) and dataset is chosen first by part ``lr``: softmax, seed 0, one
model per value of the grid, the best validation accuracy wins (ties: the smaller lr). Its units are recorded
like any other and the chosen lr is written into every unit's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The four mappings compared, named as in the report -> attn_impl of hf_sparse_attn.
MAPPINGS = {"softmax": "softmax", "sparsemax": "sparsemax", "entmax15": "entmax15", "learned_alpha": "entmax_learned"}
# encoder -> (family, from-scratch preset or None for MiniLM, sparse layers: None = every layer)
ENCODERS = {
    "pooling": ("scratch", "paper-pooling", "[-1]"),
    "scratch": ("scratch", "paper-roberta", None),
    "scratch-last": ("scratch", "paper-roberta", "[-1]"),
    "minilm": ("minilm", None, None),
    "minilm-last": ("minilm", None, "[-1]"),
}
ENCODER_LABELS = {"pooling": "(a) paper architecture, pooling sparse", "scratch": "(b) encoder, every layer sparse",
                  "scratch-last": "(c) encoder, last layer sparse", "minilm": "MiniLM, every layer sparse",
                  "minilm-last": "MiniLM, last layer sparse"}
# The encoder each family's learning rate is chosen on.
LR_ENCODER = {"scratch": "pooling", "minilm": "minilm"}
DATASETS = ("mr", "trec")
PART_ORDER = ("lr", "pooling-mr", "sweep", "adversarial", "pooling-trec", "scratch-mr", "scratch-last-mr",
              "scratch-trec", "scratch-last-trec", "minilm-mr", "minilm-last-mr", "minilm-trec", "minilm-last-trec")

# Settings that change what a unit computes (a cached unit must have been made under the same ones).
COMMON_KEYS = ("max_length", "max_train_examples", "max_eval_examples", "ig_steps", "patience", "eval_every")
ENCODER_KEYS = {"scratch": ("scratch_steps", "scratch_lrs", "scratch_batch_size", "scratch_limit"),
                "minilm": ("minilm_steps", "minilm_lrs", "minilm_batch_size", "minilm_limit")}
ADVERSARIAL_KEYS = ("adversarial_steps",)
SETTINGS_KEYS = ("quick", "seeds", "minilm_seeds", "sweep_seeds", "mappings", "alphas", "lambdas", "parts",
                 "max_length", "max_train_examples", "max_eval_examples", "scratch_steps", "scratch_lrs",
                 "scratch_batch_size", "minilm_steps", "minilm_lrs", "minilm_batch_size", "scratch_limit",
                 "minilm_limit", "ig_steps", "adversarial_steps", "adversarial_lambdas", "patience", "eval_every",
                 "threads")


@dataclass
class Unit:
    """One cached step of the study: train a model (or the adversary), then evaluate it."""

    name: str
    part: str
    encoder: str  # a key of ENCODERS
    dataset: str
    mapping: str  # report name: softmax, sparsemax, entmax15, learned_alpha, alpha=A, lambda=L, adversarial
    attn_impl: str
    seed: int
    knob: dict = field(default_factory=dict)  # {"alpha": A} / {"lambda": L} / {"lr": X} / {"lambda_adv": L}
    reuse: str | None = None  # name of a unit whose model and numbers this one shares (sweep end points)

    @property
    def family(self) -> str:
        return ENCODERS[self.encoder][0]


def alpha_impl(alpha: float) -> str:
    """The attn_impl of alpha-entmax at ``alpha``; the end points and 1.5 are the named mappings."""
    if alpha == 1.0:
        return "softmax"
    if alpha == 1.5:
        return "entmax15"
    if alpha == 2.0:
        return "sparsemax"
    return f"entmax:alpha={alpha:g}"


def model_unit_name(encoder: str, dataset: str, mapping: str, seed: int) -> str:
    return f"{encoder}-{dataset}-{mapping}-s{seed}"


def lr_unit_name(family: str, dataset: str, lr: float) -> str:
    return f"lr-{family}-{dataset}-lr{lr:g}"


def _sweep_units(args, part: str) -> list[Unit]:
    """alpha and lambda sweeps on the paper architecture (a), mr, ``sweep_seeds`` seeds per knob value."""
    units = []
    for seed in range(args.sweep_seeds):
        for alpha in args.alphas:
            impl = alpha_impl(alpha)
            named = {"softmax": "softmax", "entmax15": "entmax15", "sparsemax": "sparsemax"}.get(impl)
            reuse = (model_unit_name("pooling", "mr", named, seed) if named in args.mappings and seed < args.seeds
                     else None)
            units.append(Unit(f"sweep-mr-alpha{alpha:g}-s{seed}", part, "pooling", "mr", f"alpha={alpha:g}", impl, seed,
                              {"alpha": alpha}, reuse))
        for lam in args.lambdas:
            # lambda = 0 is sparsemax exactly: share the sparsemax model.
            reuse = (model_unit_name("pooling", "mr", "sparsemax", seed)
                     if lam == 0 and "sparsemax" in args.mappings and seed < args.seeds else None)
            impl = "sparsemax" if lam == 0 else f"sparsegen_lin:lambda={lam:g}"
            units.append(Unit(f"sweep-mr-lambda{lam:g}-s{seed}", part, "pooling", "mr", f"lambda={lam:g}", impl, seed,
                              {"lambda": lam}, reuse))
    return units


def _needed_lr_units(args) -> list[Unit]:
    """One softmax model per lr of the grid, for every (family, dataset) that a chosen part trains."""
    needed = []
    for part in args.parts:
        if part in ("sweep", "adversarial"):
            needed.append(("scratch", "mr"))
        elif part != "lr":
            encoder, dataset = part.rsplit("-", 1)
            needed.append((ENCODERS[encoder][0], dataset))
    units = []
    for family, dataset in dict.fromkeys(needed):
        for lr in (args.scratch_lrs if family == "scratch" else args.minilm_lrs):
            units.append(Unit(lr_unit_name(family, dataset, lr), "lr", LR_ENCODER[family], dataset, "softmax",
                              "softmax", 0, {"lr": lr}))
    return units


def plan_units(args) -> list[Unit]:
    """Every unit of the study in priority order (only the parts in ``args.parts``; part lr whenever needed)."""
    units: list[Unit] = []
    parts = list(args.parts)
    if "lr" not in parts:
        parts.insert(0, "lr")  # every trained unit needs its family's chosen lr
    for part in parts:
        if part == "lr":
            units += _needed_lr_units(args)
        elif part == "sweep":
            units += _sweep_units(args, part)
        elif part == "adversarial":
            for lam in args.adversarial_lambdas:
                units.append(Unit(f"adversarial-mr-lambda{lam:g}-s0", part, "pooling", "mr", "adversarial", "softmax",
                                  0, {"lambda_adv": lam}))
            # Control: the same loop with lambda_adv = 0, so that the accuracy change is not the loop's own doing.
            units.append(Unit("adversarial-control-mr-s0", part, "pooling", "mr", "adversarial_control", "softmax", 0,
                              {"lambda_adv": 0.0}))
            if args.seeds >= 2:  # how far apart two independently trained softmax baselines' attention already is
                units.append(Unit("adversarial-seed-jsd-mr", part, "pooling", "mr", "seed_jsd", "softmax", 0, {}))
        else:
            encoder, dataset = part.rsplit("-", 1)
            seeds = args.minilm_seeds if ENCODERS[encoder][0] == "minilm" else args.seeds
            units += [Unit(model_unit_name(encoder, dataset, m, s), part, encoder, dataset, m, MAPPINGS[m], s)
                      for s in range(seeds) for m in args.mappings]
    return units


def unit_settings(unit: Unit, args) -> dict:
    """The settings that change what ``unit`` computes."""
    keys = COMMON_KEYS + ENCODER_KEYS[unit.family] + (ADVERSARIAL_KEYS if unit.part == "adversarial" else ())
    return {k: getattr(args, k) for k in keys}


def settings_record(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS_KEYS}
