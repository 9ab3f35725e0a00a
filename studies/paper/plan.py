"""The units of the study: which models are trained and evaluated, in which order, with which settings."""

from __future__ import annotations

from dataclasses import dataclass, field

# The four mappings compared, named as in the report -> attn_impl of hf_sparse_attn.
MAPPINGS = {"softmax": "softmax", "sparsemax": "sparsemax", "entmax15": "entmax15", "learned_alpha": "entmax_learned"}
PART_ORDER = ("scratch-mr", "sweep", "adversarial", "minilm-mr", "scratch-trec", "scratch-seeds", "minilm-trec")

# Settings that change what a unit computes (a cached unit must have been made under the same ones).
COMMON_KEYS = ("max_length", "max_train_examples", "max_eval_examples", "ig_steps")
ENCODER_KEYS = {"scratch": ("scratch_steps", "scratch_lr", "scratch_batch_size", "scratch_limit"),
                "minilm": ("minilm_steps", "minilm_lr", "minilm_batch_size", "minilm_limit")}
ADVERSARIAL_KEYS = ("adversarial_steps", "adversarial_lambda")
SETTINGS_KEYS = ("quick", "seeds", "mappings", "alphas", "lambdas", "parts", "max_length", "max_train_examples",
                 "max_eval_examples", "scratch_steps", "scratch_lr", "scratch_batch_size", "minilm_steps", "minilm_lr",
                 "minilm_batch_size", "scratch_limit", "minilm_limit", "ig_steps", "adversarial_steps",
                 "adversarial_lambda", "threads")


@dataclass
class Unit:
    """One cached step of the study: train a model (or the adversary), then evaluate it."""

    name: str
    part: str
    encoder: str  # "scratch" | "minilm"
    dataset: str
    mapping: str  # report name: softmax, sparsemax, entmax15, learned_alpha, alpha=A, lambda=L, adversarial
    attn_impl: str
    seed: int
    knob: dict = field(default_factory=dict)  # {"alpha": A} or {"lambda": L} for sweep members
    reuse: str | None = None  # name of a unit whose model and numbers this one shares (sweep end points)


def alpha_impl(alpha: float) -> str:
    """The attn_impl of alpha-entmax at ``alpha``; the end points and 1.5 are the named mappings."""
    if alpha == 1.0:
        return "softmax"
    if alpha == 1.5:
        return "entmax15"
    if alpha == 2.0:
        return "sparsemax"
    return f"entmax:alpha={alpha:g}"


def _sweep_units(args, part: str) -> list[Unit]:
    units = []
    for alpha in args.alphas:
        impl = alpha_impl(alpha)
        named = {"softmax": "softmax", "entmax15": "entmax15", "sparsemax": "sparsemax"}.get(impl)
        reuse = f"scratch-mr-{named}-s0" if named in args.mappings else None
        units.append(Unit(f"sweep-mr-alpha{alpha:g}-s0", part, "scratch", "mr", f"alpha={alpha:g}", impl, 0,
                          {"alpha": alpha}, reuse))
    for lam in args.lambdas:
        # lambda = 0 is sparsemax exactly: share the sparsemax model.
        reuse = "scratch-mr-sparsemax-s0" if lam == 0 and "sparsemax" in args.mappings else None
        impl = "sparsemax" if lam == 0 else f"sparsegen_lin:lambda={lam:g}"
        units.append(Unit(f"sweep-mr-lambda{lam:g}-s0", part, "scratch", "mr", f"lambda={lam:g}", impl, 0,
                          {"lambda": lam}, reuse))
    return units


def plan_units(args) -> list[Unit]:
    """Every unit of the study in priority order (only the parts in ``args.parts``)."""
    seeds = list(range(args.seeds))
    units: list[Unit] = []

    def scratch(dataset: str, mapping: str, seed: int, part: str) -> Unit:
        return Unit(f"scratch-{dataset}-{mapping}-s{seed}", part, "scratch", dataset, mapping, MAPPINGS[mapping], seed)

    for part in args.parts:
        if part == "scratch-mr":
            units += [scratch("mr", m, 0, part) for m in args.mappings]
        elif part == "scratch-trec":
            units += [scratch("trec", m, 0, part) for m in args.mappings]
        elif part == "scratch-seeds":
            units += [scratch("mr", m, s, part) for s in seeds[1:] for m in args.mappings]
        elif part == "sweep":
            units += _sweep_units(args, part)
        elif part == "adversarial":
            units.append(Unit("adversarial-mr-s0", part, "scratch", "mr", "adversarial", "softmax", 0,
                              {"lambda_adv": args.adversarial_lambda}))
            # Control: the same loop with lambda_adv = 0, so that the accuracy change is not the loop's own doing.
            units.append(Unit("adversarial-control-mr-s0", part, "scratch", "mr", "adversarial_control", "softmax", 0,
                              {"lambda_adv": 0.0}))
        elif part in ("minilm-mr", "minilm-trec"):
            dataset = part.split("-")[1]
            units += [Unit(f"minilm-{dataset}-{m}-s0", part, "minilm", dataset, m, MAPPINGS[m], 0) for m in args.mappings]
    return units


def unit_settings(unit: Unit, args) -> dict:
    """The settings that change what ``unit`` computes."""
    keys = COMMON_KEYS + ENCODER_KEYS[unit.encoder] + (ADVERSARIAL_KEYS if unit.part == "adversarial" else ())
    return {k: getattr(args, k) for k in keys}


def settings_record(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS_KEYS}
