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
of each encoder family (from scratch, MiniLM) and dataset is chosen by the lr search: softmax, seed 0, one model
per value of the grid, the best validation accuracy wins (ties: the smaller lr). The lr units of a (family,
dataset) are planned just before the first part that needs them, so that two processes given parts on different
datasets never train the same lr unit.

No model is trained twice. The lr search's winner IS the softmax seed-0 model of its encoder (same settings), a
softmax model does not change when only its last layer is "sparse" (softmax is softmax in every layer), and the
sweep's end points are the named mappings' models: such units carry ``reuse`` (copy the named unit's record) or
are resolved to the lr unit's model at run time (:func:`lr_twin`).

Softmax and sparse models of one seed share their initialisation and data order (hf_sparse_attn.training seeds
both from ``seed``; the mappings compared add no parameters), so their differences are paired by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The four mappings compared, named as in the report -> attn_impl of hf_sparse_attn.
MAPPINGS = {"softmax": "softmax", "sparsemax": "sparsemax", "entmax15": "entmax15", "learned_alpha": "entmax_learned"}
# The plan's mappings; learned alpha is an extension run only when asked for (--mappings).
DEFAULT_MAPPINGS = ("softmax", "sparsemax", "entmax15")
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
# The seeds flag of each encoder: (a) carries the paper's comparisons, the extensions fewer seeds.
ENCODER_SEEDS = {"pooling": "seeds", "scratch": "extension_seeds", "scratch-last": "extension_seeds",
                 "minilm": "minilm_seeds", "minilm-last": "minilm_seeds"}
# A last-layer-only softmax model is the every-layer softmax model: the layer selection has nothing to select.
SOFTMAX_TWIN = {"scratch-last": "scratch", "minilm-last": "minilm"}
# The encoder each family's learning rate is chosen on.
LR_ENCODER = {"scratch": "pooling", "minilm": "minilm"}
DATASETS = ("mr", "trec")
# Every part, in the order a full study runs them; the plan is the first DEFAULT_PART_COUNT of them.
PART_ORDER = ("lr", "pooling-mr", "pooling-trec", "sweep", "adversarial", "scratch-mr", "minilm-mr", "minilm-last-mr",
              "scratch-last-mr", "scratch-trec", "scratch-last-trec", "minilm-trec", "minilm-last-trec")
DEFAULT_PARTS = PART_ORDER[:8]
# Parts needing the (scratch, mr) models of encoder (a) without being "<encoder>-<dataset>".
MR_POOLING_PARTS = ("sweep", "adversarial")

# Settings that change what a unit computes (a cached unit must have been made under the same ones).
COMMON_KEYS = ("max_length", "max_train_examples", "max_eval_examples", "ig_steps", "patience", "eval_every")
ENCODER_KEYS = {"scratch": ("scratch_steps", "scratch_lrs", "scratch_batch_size"),
                "minilm": ("minilm_steps", "minilm_lrs", "minilm_batch_size")}
SETTINGS_KEYS = ("quick", "seeds", "extension_seeds", "minilm_seeds", "sweep_seeds", "mappings", "alphas", "lambdas",
                 "parts", "max_length", "max_train_examples", "max_eval_examples", "scratch_steps", "scratch_lrs",
                 "scratch_batch_size", "minilm_steps", "minilm_lrs", "minilm_batch_size", "scratch_limits",
                 "minilm_limits", "ig_steps", "adversarial_lambdas", "patience", "eval_every", "threads")


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
    reuse: str | None = None  # name of a unit whose model and numbers this one shares (no second training)

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


def lr_twin(unit: Unit) -> bool:
    """Whether ``unit``'s model is its lr search's winner: softmax, seed 0, on the encoder the lr is chosen on."""
    return (unit.part != "lr" and unit.mapping == "softmax" and unit.seed == 0
            and LR_ENCODER.get(unit.family) == unit.encoder)


def eval_limit(unit_or_family, dataset: str, args) -> int | None:
    """Test examples evaluated per model of this family on ``dataset`` (None: the whole test split)."""
    family = unit_or_family if isinstance(unit_or_family, str) else unit_or_family.family
    return (args.scratch_limits if family == "scratch" else args.minilm_limits).get(dataset)


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


def _part_needs(part: str) -> tuple[str, str] | None:
    """The (family, dataset) whose lr search ``part`` needs (None for the lr part itself)."""
    if part == "lr":
        return None
    if part in MR_POOLING_PARTS:
        return "scratch", "mr"
    encoder, dataset = part.rsplit("-", 1)
    return ENCODERS[encoder][0], dataset


def _lr_units(family: str, dataset: str, args) -> list[Unit]:
    return [Unit(lr_unit_name(family, dataset, lr), "lr", LR_ENCODER[family], dataset, "softmax", "softmax", 0,
                 {"lr": lr}) for lr in (args.scratch_lrs if family == "scratch" else args.minilm_lrs)]


def _adversarial_units(args, part: str) -> list[Unit]:
    units = [Unit(f"adversarial-mr-lambda{lam:g}-s0", part, "pooling", "mr", "adversarial", "softmax", 0,
                  {"lambda_adv": lam}) for lam in args.adversarial_lambdas]
    # Control: the same loop with lambda_adv = 0, so that the accuracy change is not the loop's own doing.
    units.append(Unit("adversarial-control-mr-s0", part, "pooling", "mr", "adversarial_control", "softmax", 0,
                      {"lambda_adv": 0.0}))
    if args.seeds >= 2:  # how far apart independently trained softmax baselines' attention already is (every pair)
        units.append(Unit("adversarial-seed-jsd-mr", part, "pooling", "mr", "seed_jsd", "softmax", 0, {}))
    return units


def _model_units(part: str, args) -> list[Unit]:
    encoder, dataset = part.rsplit("-", 1)
    units = []
    for seed in range(getattr(args, ENCODER_SEEDS[encoder])):
        for mapping in args.mappings:
            reuse = (model_unit_name(SOFTMAX_TWIN[encoder], dataset, mapping, seed)
                     if mapping == "softmax" and encoder in SOFTMAX_TWIN else None)
            units.append(Unit(model_unit_name(encoder, dataset, mapping, seed), part, encoder, dataset, mapping,
                              MAPPINGS[mapping], seed, reuse=reuse))
    return units


def plan_units(args) -> list[Unit]:
    """Every unit of the study in priority order: the parts in ``args.parts`` in that order, each preceded by the lr
    search it needs when no earlier part needed it (part ``lr`` alone plans every search the other parts need)."""
    units: list[Unit] = []
    searched: set = set()
    parts = list(args.parts)
    needs = [_part_needs(p) for p in parts]
    if "lr" in parts:  # the searches of every chosen part, first
        parts = ["lr"] + [p for p in parts if p != "lr"]
    for part in parts:
        needed = [n for n in needs if n] if part == "lr" else [_part_needs(part)]
        for family_dataset in dict.fromkeys(needed):
            if family_dataset not in searched:
                searched.add(family_dataset)
                units += _lr_units(*family_dataset, args)
        if part == "lr":
            continue
        if part == "sweep":
            units += _sweep_units(args, part)
        elif part == "adversarial":
            units += _adversarial_units(args, part)
        else:
            units += _model_units(part, args)
    return units


def unit_settings(unit: Unit, args) -> dict:
    """The settings that change what ``unit`` computes."""
    keys = COMMON_KEYS + ENCODER_KEYS[unit.family]
    settings = {k: getattr(args, k) for k in keys}
    settings["test_limit"] = eval_limit(unit, unit.dataset, args)
    return settings


def settings_record(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS_KEYS}
