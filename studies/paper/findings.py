"""The paper's findings, each with a verdict that survives its error bars (studies/paper/verdicts.py).

Every finding is read on encoder (a), the paper's architecture, over seeds: "agrees"/"disagrees" only where the 95%
interval of the difference excludes 0 (or, for a band, lies wholly inside/outside it), else "inconclusive".

Agreement is read as tau-b's EXCESS over the null of a random attention with the same support (eval_suite's
``kendall_tau_b_excess``), for input and representation importance alike: representation importance shares the
exact zeros of sparse attention, which inflate the raw tau-b of a sparse mapping (raw stays in the tables, next to
the paper's numbers). Softmax and sparse models of one seed share initialisation and data order, so their
differences are paired by seed; the adversary's numbers are paired by test example.
"""

from __future__ import annotations

import math

from eval_suite.agreement import HEADLINE

from . import paper as P
from .records import INPUT_PAIR, REPR_PAIR, fmt, group, input_to_repr_entropy, tau
from .verdicts import (INCONCLUSIVE, NOT_RUN, TAU_DIFFERENCE_RANGE, UNIT_DIFFERENCE_RANGE, UNIT_RANGE,
                       Interval, accuracy_criterion, adversary_verdict, band_verdict, combine, difference_interval,
                       mean_interval, sign_verdict)

ENCODER = "pooling"
DATASETS = ("mr", "trec")
# The agreement figure every verdict reads (see the module docstring).
AGREEMENT = HEADLINE
# input importance method -> the representation importance measured the same way
METHOD_PAIRS = dict(zip(INPUT_PAIR, REPR_PAIR))
CHANCE_MARGIN = 0.05  # a test loss this far below ln K counts as "clearly below chance"


def _text(interval: Interval) -> str:
    if interval.n == 0:
        return "not run"
    if not interval.defined:
        return f"{fmt(interval.mean)} (n={interval.n}, no interval)"
    return f"{fmt(interval.mean)} [{fmt(interval.low)}, {fmt(interval.high)}] (n={interval.n})"


def _finding(key: str, claim: str, verdict: str, evidence: str) -> dict:
    return {"key": key, "claim": claim, "verdict": verdict, "evidence": evidence}


def agreement(record: dict, method: str) -> float | None:
    return tau(record, method, metric=AGREEMENT)


def by_seed(records: list[dict], fn) -> dict[int, float]:
    """seed -> fn(record) for the records where it is defined."""
    out = {}
    for r in records:
        value = fn(r)
        if value is not None and math.isfinite(value):
            out[r["unit"]["seed"]] = value
    return out


def paired_by_seed(a: dict[int, float], b: dict[int, float], bounds) -> Interval:
    """Interval of the mean of a[seed] - b[seed] over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return difference_interval([a[s] for s in seeds], [b[s] for s in seeds], paired=True, bounds=bounds)


def input_to_repr_finding(records: dict) -> dict:
    cells, verdicts = [], []
    for dataset in DATASETS:
        for mapping in ("softmax", "sparsemax"):
            interval = mean_interval([input_to_repr_entropy(r) for r in group(records, ENCODER, dataset, mapping)],
                                     UNIT_RANGE)
            if interval.n:
                verdicts.append(band_verdict(interval, 0.5, 0.9))
                cells.append(f"{dataset} {mapping} {_text(interval)}")
    return _finding("input_to_repr", "Inputs and their co-indexed representations are only weakly related (paper: "
                    "normalised entropies .5-.9 of input influence on a representation).", combine(verdicts),
                    ("Ours, entropy: " + "; ".join(cells) + ".") if cells else "")


def _gap(record: dict, method: str) -> float | None:
    rep, inp = agreement(record, METHOD_PAIRS[method]), agreement(record, method)
    return None if rep is None or inp is None else rep - inp


def _by_method(intervals_of) -> tuple[list[str], list[str]]:
    """Per input method, the sign verdicts (+1) of the intervals ``intervals_of(method)`` gives as (label, Interval)
    and their text; undefined intervals (no seed) are left out."""
    texts, verdicts = [], []
    for method in INPUT_PAIR:
        found = [(label, interval) for label, interval in intervals_of(method) if interval.n]
        method_verdicts = [sign_verdict(interval, +1) for _, interval in found]
        if found:
            texts.append(f"{method} ({combine(method_verdicts)}): "
                         + "; ".join(f"{label} {_text(interval)}" for label, interval in found))
        verdicts += method_verdicts
    return texts, verdicts


def repr_vs_input_findings(records: dict) -> list[dict]:
    """Representation vs input agreement, by gradient AND by leave-one-out (the paper's LOO numbers go the other way
    on SST and 20News), each paired over the seeds of one model; then whether sparsemax widens the gap."""
    def gap_per_model(method):
        for dataset in DATASETS:
            for mapping in ("softmax", "sparsemax"):
                gaps = [_gap(r, method) for r in group(records, ENCODER, dataset, mapping)]
                yield f"{dataset} {mapping}", mean_interval(gaps, TAU_DIFFERENCE_RANGE)

    def widening_by_sparsemax(method):
        for dataset in DATASETS:
            gaps = {m: by_seed(group(records, ENCODER, dataset, m), lambda r, k=method: _gap(r, k))
                    for m in ("softmax", "sparsemax")}
            yield dataset, paired_by_seed(gaps["sparsemax"], gaps["softmax"], (-4.0, 4.0))

    texts, verdicts = _by_method(gap_per_model)
    out = [_finding("repr_vs_input", "Attention agrees more with the importance of the representations than with "
                    "that of the inputs (tested on gradient and leave-one-out importance).", combine(verdicts),
                    ("Ours, excess tau(att, repr) - excess tau(att, input) per seed: " + " | ".join(texts) + ".")
                    if texts else "")]
    texts, verdicts = _by_method(widening_by_sparsemax)
    out.append(_finding("repr_vs_input_sparsemax", "... and more so under sparsemax.", combine(verdicts),
                        ("Ours, gap under sparsemax minus gap under softmax, paired by seed: " + " | ".join(texts) + ".")
                        if texts else ""))
    return out


def softmax_vs_sparsemax_finding(records: dict) -> dict:
    cells, verdicts = [], []
    for dataset in DATASETS:
        values = {m: by_seed(group(records, ENCODER, dataset, m), lambda r: agreement(r, "grad_norm"))
                  for m in ("softmax", "sparsemax")}
        interval = paired_by_seed(values["softmax"], values["sparsemax"], TAU_DIFFERENCE_RANGE)
        if interval.n:
            verdicts.append(sign_verdict(interval, +1))
            cells.append(f"{dataset} {_text(interval)}")
    return _finding("table1_softmax_vs_sparsemax", "Sparsemax lowers attention's agreement with input-gradient "
                    "importance (paper: .72 -> .67 on SST, .54 -> .47 on 20News).", combine(verdicts),
                    ("Ours, excess tau softmax - excess tau sparsemax, paired by seed: " + "; ".join(cells) + ".")
                    if cells else "")


def _stored_interval(stat: dict | None) -> Interval:
    if not stat or stat.get("n", 0) == 0:
        return Interval(None, None, None, 0)
    low, high = (stat.get("ci95") or [None, None])
    return Interval(stat.get("mean"), low, high, stat["n"])


def _trend_verdict(per_seed: Interval, partial: Interval) -> str:
    """A negative trend per seed that also survives controlling for accuracy; a partial tau that is undefined (the
    measure ranks exactly like accuracy) or has no interval leaves it inconclusive."""
    if per_seed.n == 0:
        return NOT_RUN
    return combine([sign_verdict(per_seed, -1), sign_verdict(partial, -1) if partial.defined else INCONCLUSIVE])


def sweep_findings(summary: dict) -> list[dict]:
    """A trend counts only if it holds per seed AND controlled for accuracy (partial tau, bootstrap over seeds)."""
    sweep = summary.get("sweep", {})
    out = []
    verdicts, cells = [], []
    for knob in ("lambda", "alpha"):
        if knob in sweep:
            per_seed = _stored_interval(sweep[knob]["knob_vs_tau"])
            partial = _stored_interval(sweep[knob]["partial_knob_vs_tau_given_accuracy"])
            verdicts.append(_trend_verdict(per_seed, partial))
            cells.append(f"{knob} {_text(per_seed)}, controlled for accuracy {_text(partial)}")
    out.append(_finding("sweep_tau", "Agreement with input importance falls as sparsity rises (per seed, and "
                        "controlled for accuracy).", combine(verdicts),
                        ("Ours, tau-b(knob, excess tau(att, grad_norm)) per seed, then Kendall's partial tau given "
                         "accuracy (95% interval by bootstrap over seeds): " + "; ".join(cells) + ".") if cells else ""))
    if "lambda" in sweep:
        per_seed = _stored_interval(sweep["lambda"]["knob_vs_entropy"])
        partial = _stored_interval(sweep["lambda"]["partial_knob_vs_entropy_given_accuracy"])
        out.append(_finding("sweep_entropy_sign", f"Kendall tau-b between lambda and the entropy of input importance "
                            f"is negative (paper: {P.KNOB_ENTROPY_TAU['SST']} on SST).",
                            _trend_verdict(per_seed, partial),
                            f"Ours, per seed: {_text(per_seed)}; controlled for accuracy: {_text(partial)}."))
    else:
        out.append(_finding("sweep_entropy_sign", "Kendall tau-b between lambda and the entropy of input importance "
                            "is negative.", NOT_RUN, ""))
    return out


def _per_example(adversary: dict, key: str) -> list:
    return (adversary.get("per_example") or {}).get(key) or []


def paired_examples(a: list, b: list, bounds) -> Interval:
    """Per-example difference a - b; nothing when the two lists are not over the same examples."""
    if not a or len(a) != len(b):
        return Interval(None, None, None, 0)
    return difference_interval(a, b, paired=True, bounds=bounds)


def adversarial_summary(records: dict, max_drop: float) -> dict | None:
    """The adversary chosen on VALIDATION (the largest content JSD among those within ``max_drop`` of the lambda=0
    control's validation accuracy), then judged on test: its accuracy change against the control, paired by
    example, and its content JSD to the baseline against the JSD between every pair of independently trained
    baselines, paired by example. JSD in bits."""
    adversaries = sorted((r["unit"]["knob"]["lambda_adv"], r["adversarial"]) for name, r in records.items()
                         if name.startswith("adversarial-mr-lambda") and "validation" in r.get("adversarial", {}))
    if not adversaries:
        return None
    control = records.get("adversarial-control-mr-s0", {}).get("adversarial")
    pairs = (records.get("adversarial-seed-jsd-mr", {}).get("adversarial") or {}).get("pairs", {})
    reference = control["validation"]["adversary_accuracy"] if control else None
    kept = [(lam, a) for lam, a in adversaries
            if reference is not None and a["validation"]["adversary_accuracy"] >= reference - max_drop]
    lam, chosen = max(kept or adversaries, key=lambda t: t[1]["validation"]["jsd_bits_content"]["mean"])
    change = (paired_examples(_per_example(chosen, "adversary_correct"), _per_example(control, "adversary_correct"),
                               UNIT_DIFFERENCE_RANGE) if control else Interval(None, None, None, 0))
    jsd = _per_example(chosen, "jsd_bits_content")
    excess = {name: paired_examples(jsd, pair["per_example"], UNIT_DIFFERENCE_RANGE) for name, pair in pairs.items()}
    loss_ok = chosen["adversary_loss"] < chosen["chance_loss"] - CHANCE_MARGIN
    criterion = accuracy_criterion(change, max_drop)
    return {
        "lambda_adv": lam, "chosen_on_validation": bool(kept), "control_validation_accuracy": reference,
        "jsd_bits_content": mean_interval(jsd, UNIT_RANGE).to_dict(),
        "accuracy_change_vs_control": change.to_dict(), "criterion": criterion, "loss_below_chance": loss_ok,
        "adversary_accuracy": chosen["adversary_accuracy"], "baseline_accuracy": chosen["baseline_accuracy"],
        "control_accuracy": control["adversary_accuracy"] if control else None,
        "adversary_loss": chosen["adversary_loss"], "chance_loss": chosen["chance_loss"],
        "seed_pairs": {name: {"jsd_bits_content": mean_interval(p["per_example"], UNIT_RANGE).to_dict(),
                              "adversary_minus_pair": excess[name].to_dict()} for name, p in pairs.items()},
        "verdict": adversary_verdict(criterion, loss_ok, list(excess.values())) if pairs else INCONCLUSIVE,
    }


def adversarial_finding(summary: dict) -> dict:
    claim = ("Attention can be moved far from the baseline's (paper: JSD .57-.67) while accuracy stays within .02, "
             "further than independently trained baselines differ.")
    adv = summary.get("adversarial")
    if not adv:
        return _finding("adversarial", claim, NOT_RUN, "")
    change = _stored_interval(adv["accuracy_change_vs_control"])
    pairs = adv["seed_pairs"]
    widest = max(pairs.values(), key=lambda p: p["jsd_bits_content"]["mean"] or 0.0) if pairs else None
    least = min((_stored_interval(p["adversary_minus_pair"]) for p in pairs.values()),
                key=lambda i: i.low if i.defined else -math.inf, default=None)
    return _finding("adversarial", claim, adv["verdict"],
                    f"Ours (lambda_adv {adv['lambda_adv']:g}, chosen on validation"
                    f"{'' if adv['chosen_on_validation'] else ': none stayed within .02 of the control, the largest JSD'}): "
                    f"content JSD {_text(_stored_interval(adv['jsd_bits_content']))} bits; accuracy change against "
                    f"the lambda=0 control, paired by example: {_text(change)} ({adv['criterion']}); test loss "
                    f"{fmt(adv['adversary_loss'])} (chance {fmt(adv['chance_loss'])}); widest baseline pair "
                    f"{_text(_stored_interval(widest['jsd_bits_content'])) if widest else 'not run'} bits; the "
                    f"smallest excess over a pair {_text(least) if least else 'not run'} ({len(pairs)} pairs).")


def findings(records: dict, summary: dict) -> list[dict]:
    """Every finding, in the report's order."""
    out = [input_to_repr_finding(records), *repr_vs_input_findings(records), softmax_vs_sparsemax_finding(records)]
    out += sweep_findings(summary)
    out.append(adversarial_finding(summary))
    return out


__all__ = ["findings", "adversarial_summary", "INCONCLUSIVE"]
