"""The paper's findings, each with a verdict that survives its error bars (studies/paper/verdicts.py).

Every finding is read on encoder (a), the paper's architecture, over seeds: "agrees"/"disagrees" only where the 95%
interval of the difference excludes 0 (or, for a band, lies wholly inside/outside it), else "inconclusive".
"""

from __future__ import annotations

import math

from . import paper as P
from .records import fmt, group, input_to_repr_entropy, tau
from .verdicts import (INCONCLUSIVE, NOT_RUN, Interval, adversary_verdict, band_verdict, combine, difference_interval,
                       mean_interval, sign_verdict)

ENCODER = "pooling"
DATASETS = ("mr", "trec")


def _text(interval: Interval) -> str:
    if interval.n == 0:
        return "not run"
    if not interval.defined:
        return f"{fmt(interval.mean)} (n={interval.n}, no interval)"
    return f"{fmt(interval.mean)} [{fmt(interval.low)}, {fmt(interval.high)}] (n={interval.n})"


def _finding(key: str, claim: str, verdict: str, evidence: str) -> dict:
    return {"key": key, "claim": claim, "verdict": verdict, "evidence": evidence}


def input_to_repr_finding(records: dict) -> dict:
    cells, verdicts = [], []
    for dataset in DATASETS:
        for mapping in ("softmax", "sparsemax"):
            interval = mean_interval([input_to_repr_entropy(r) for r in group(records, ENCODER, dataset, mapping)])
            if interval.n:
                verdicts.append(band_verdict(interval, 0.5, 0.9))
                cells.append(f"{dataset} {mapping} {_text(interval)}")
    return _finding("input_to_repr", "Inputs and their co-indexed representations are only weakly related (paper: "
                    "normalised entropies .5-.9 of input influence on a representation).", combine(verdicts),
                    ("Ours, entropy: " + "; ".join(cells) + ".") if cells else "")


def _gap(record: dict) -> float | None:
    rep, inp = tau(record, "repr_grad_norm"), tau(record, "grad_norm")
    return None if rep is None or inp is None else rep - inp


def repr_vs_input_findings(records: dict) -> list[dict]:
    cells, verdicts, gaps = [], [], {}
    for dataset in DATASETS:
        for mapping in ("softmax", "sparsemax"):
            rs = group(records, ENCODER, dataset, mapping)
            interval = difference_interval([tau(r, "repr_grad_norm") for r in rs], [tau(r, "grad_norm") for r in rs],
                                           paired=True)
            gaps[(dataset, mapping)] = [_gap(r) for r in rs]
            if interval.n:
                verdicts.append(sign_verdict(interval, +1))
                cells.append(f"{dataset} {mapping} {_text(interval)}")
    out = [_finding("repr_vs_input", "Attention agrees more with the importance of the representations than with "
                    "that of the inputs (gradient importance).", combine(verdicts),
                    ("Ours, tau(att, repr) - tau(att, input) per seed: " + "; ".join(cells) + ".") if cells else "")]
    cells, verdicts = [], []
    for dataset in DATASETS:
        interval = difference_interval(gaps.get((dataset, "sparsemax"), []), gaps.get((dataset, "softmax"), []))
        if interval.n:
            verdicts.append(sign_verdict(interval, +1))
            cells.append(f"{dataset} {_text(interval)}")
    out.append(_finding("repr_vs_input_sparsemax", "... and more so under sparsemax.", combine(verdicts),
                        ("Ours, gap under sparsemax minus gap under softmax: " + "; ".join(cells) + ".") if cells else ""))
    return out


def softmax_vs_sparsemax_finding(records: dict) -> dict:
    cells, verdicts = [], []
    for dataset in DATASETS:
        soft = [tau(r, "grad_norm") for r in group(records, ENCODER, dataset, "softmax")]
        sparse = [tau(r, "grad_norm") for r in group(records, ENCODER, dataset, "sparsemax")]
        interval = difference_interval(soft, sparse)
        if interval.n:
            verdicts.append(sign_verdict(interval, +1))
            cells.append(f"{dataset} {_text(interval)}")
    return _finding("table1_softmax_vs_sparsemax", "Sparsemax lowers attention's agreement with input-gradient "
                    "importance (paper: .72 -> .67 on SST, .54 -> .47 on 20News).", combine(verdicts),
                    ("Ours, tau softmax - tau sparsemax: " + "; ".join(cells) + ".") if cells else "")


def _stored_interval(stat: dict | None) -> Interval:
    if not stat or stat.get("n", 0) == 0:
        return Interval(None, None, None, 0)
    low, high = (stat.get("ci95") or [None, None])
    return Interval(stat.get("mean"), low, high, stat["n"])


def sweep_findings(summary: dict) -> list[dict]:
    sweep = summary.get("sweep", {})
    out = []
    verdicts, cells = [], []
    for knob in ("lambda", "alpha"):
        if knob in sweep:
            interval = _stored_interval(sweep[knob]["knob_vs_tau"])
            verdicts.append(sign_verdict(interval, -1))
            cells.append(f"{knob} {_text(interval)} (controlled for accuracy: "
                         f"{fmt(sweep[knob]['partial_knob_vs_tau_given_accuracy'])})")
    out.append(_finding("sweep_tau", "Agreement with input importance falls as sparsity rises.", combine(verdicts),
                        ("Ours, tau-b(knob, tau(att, grad_norm)) per seed: " + "; ".join(cells) + ".") if cells else ""))
    if "lambda" in sweep:
        interval = _stored_interval(sweep["lambda"]["knob_vs_entropy"])
        out.append(_finding("sweep_entropy_sign", f"Kendall tau-b between lambda and the entropy of input importance "
                            f"is negative (paper: {P.KNOB_ENTROPY_TAU['SST']} on SST).", sign_verdict(interval, -1),
                            f"Ours, per seed: {_text(interval)}; controlled for accuracy: "
                            f"{fmt(sweep['lambda']['partial_knob_vs_entropy_given_accuracy'])}."))
    else:
        out.append(_finding("sweep_entropy_sign", "Kendall tau-b between lambda and the entropy of input importance "
                            "is negative.", NOT_RUN, ""))
    return out


def adversarial_finding(summary: dict) -> dict:
    claim = ("Attention can be moved far from the baseline's (paper: JSD .57-.67) while accuracy stays within .02, "
             "further than independently trained baselines differ.")
    adv = summary.get("adversarial")
    if not adv:
        return _finding("adversarial", claim, NOT_RUN, "")
    jsd, seed = _stored_interval(adv["jsd"]), _stored_interval(adv["seed_jsd"])
    chance = adv.get("chance_loss") if adv.get("chance_loss") is not None else math.log(2)
    loss = adv.get("adversary_loss") if adv.get("adversary_loss") is not None else math.inf
    verdict = adversary_verdict(adv["adversary_accuracy"], adv["baseline_accuracy"], loss, chance, jsd, seed,
                                max_drop=P.ADVERSARIAL["max_accuracy_drop"])
    return _finding("adversarial", claim, verdict,
                    f"Ours (lambda_adv {adv['lambda_adv']:g}{'' if adv['criterion_reached'] else ', the largest JSD tried'}): "
                    f"JSD {_text(jsd)} nats, seed-to-seed JSD {_text(seed)}, accuracy {adv['baseline_accuracy']:.3f} -> "
                    f"{adv['adversary_accuracy']:.3f}, test loss {fmt(loss)} (chance {fmt(chance)}).")


def findings(records: dict, summary: dict) -> list[dict]:
    """Every finding, in the report's order."""
    out = [input_to_repr_finding(records), *repr_vs_input_findings(records), softmax_vs_sparsemax_finding(records)]
    out += sweep_findings(summary)
    out.append(adversarial_finding(summary))
    return out


__all__ = ["findings", "INCONCLUSIVE"]
