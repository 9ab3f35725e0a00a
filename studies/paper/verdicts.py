"""Verdicts that survive their error bars: a finding "agrees" or "disagrees" only when the 95% interval of the
difference it rests on excludes 0 (or lies wholly inside / outside the paper's band); otherwise "inconclusive".

Intervals over seeds use Student's t (scipy.stats.t): seeds are few (3-5), and the t interval is the standard one
for a mean of a handful of independent runs. One seed gives no interval, hence no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN, NOT_REACHED = "agrees", "disagrees", "inconclusive", "not run", "not reached"


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and its 95% interval (``low``/``high`` None when n < 2)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high] if self.defined else None, "n": self.n}


def _finite(values) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def mean_interval(values) -> Interval:
    """Mean and t-based 95% interval of independent values (seeds); undefined values are left out and counted out."""
    from scipy import stats

    x = _finite(values)
    if x.size == 0:
        return Interval(None, None, None, 0)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, 1)
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


def difference_interval(a, b, paired: bool = False) -> Interval:
    """Interval of mean(a) - mean(b): paired (same seeds, e.g. two measures of one model) or Welch (independent)."""
    from scipy import stats

    if paired:
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
        return mean_interval([x - y for x, y in pairs])
    xa, xb = _finite(a), _finite(b)
    if xa.size == 0 or xb.size == 0:
        return Interval(None, None, None, 0)
    diff = float(xa.mean() - xb.mean())
    n = int(min(xa.size, xb.size))
    if xa.size < 2 or xb.size < 2:
        return Interval(diff, None, None, n)
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, n)
    dof = (va + vb) ** 2 / (va ** 2 / (xa.size - 1) + vb ** 2 / (xb.size - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.975, dof) * se)
    return Interval(diff, diff - half, diff + half, n)


def sign_verdict(interval: Interval, expected_sign: int) -> str:
    """``expected_sign`` +1: the paper says the difference is positive; -1: negative."""
    if interval.n == 0:
        return NOT_RUN
    if not interval.defined:
        return INCONCLUSIVE
    if interval.low > 0:
        return AGREES if expected_sign > 0 else DISAGREES
    if interval.high < 0:
        return AGREES if expected_sign < 0 else DISAGREES
    return INCONCLUSIVE


def band_verdict(interval: Interval, low: float, high: float) -> str:
    """Agrees when the whole interval lies in the paper's band [low, high], disagrees when it lies wholly outside."""
    if interval.n == 0:
        return NOT_RUN
    if not interval.defined:
        return INCONCLUSIVE
    if low <= interval.low and interval.high <= high:
        return AGREES
    if interval.high < low or interval.low > high:
        return DISAGREES
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """One verdict over several cells: agrees/disagrees only when every run cell says so."""
    ran = [v for v in verdicts if v != NOT_RUN]
    if not ran:
        return NOT_RUN
    return ran[0] if all(v == ran[0] for v in ran) else INCONCLUSIVE


def kendall(x, y) -> float | None:
    from scipy.stats import kendalltau

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    value = kendalltau([a for a, _ in pairs], [b for _, b in pairs], variant="b").statistic
    return None if not math.isfinite(value) else float(value)


def partial_kendall(x, y, z) -> float | None:
    """Kendall's partial tau of x and y controlling for z: (t_xy - t_xz t_yz) / sqrt((1 - t_xz^2)(1 - t_yz^2)).

    Hand-written: scipy has no partial Kendall tau, and this closed form (Kendall 1942) is all it takes. None when
    z ties completely with x or y (the denominator vanishes) or fewer than 3 complete points exist.
    """
    rows = [(a, b, c) for a, b, c in zip(x, y, z)
            if all(v is not None and math.isfinite(v) for v in (a, b, c))]
    if len(rows) < 3:
        return None
    xs, ys, zs = zip(*rows)
    txy, txz, tyz = kendall(xs, ys), kendall(xs, zs), kendall(ys, zs)
    if txy is None or txz is None or tyz is None:
        return None
    denominator = math.sqrt(max(0.0, (1 - txz ** 2) * (1 - tyz ** 2)))
    if denominator < 1e-6:  # y or x ranks exactly like z (float noise keeps 1 - tau^2 just above 0)
        return None
    return max(-1.0, min(1.0, (txy - txz * tyz) / denominator))


def adversary_verdict(adversary_accuracy: float, baseline_accuracy: float, adversary_loss: float, chance_loss: float,
                      jsd: Interval, seed_jsd: Interval, max_drop: float = 0.02, chance_margin: float = 0.05) -> str:
    """The paper's criterion first: accuracy within ``max_drop`` of the baseline and a test loss clearly below chance
    (ln K minus ``chance_margin``), else "not reached". When reached, agrees if the adversary's JSD to the baseline
    exceeds the seed-to-seed JSD of independently trained baselines (interval of the difference above 0)."""
    reached = (adversary_accuracy >= baseline_accuracy - max_drop) and (adversary_loss < chance_loss - chance_margin)
    if not reached:
        return NOT_REACHED
    if jsd.n == 0 or seed_jsd.n == 0:
        return INCONCLUSIVE
    # Per-example JSDs on the same test inputs: their means' difference, with both spreads (Welch on summaries).
    return sign_verdict(summary_difference(jsd, seed_jsd), +1)


def summary_difference(a: Interval, b: Interval) -> Interval:
    """Interval of a.mean - b.mean from two intervals (half-widths added in quadrature: independent estimates)."""
    if a.mean is None or b.mean is None:
        return Interval(None, None, None, 0)
    diff = a.mean - b.mean
    if not (a.defined and b.defined):
        return Interval(diff, None, None, min(a.n, b.n))
    half = math.hypot((a.high - a.low) / 2, (b.high - b.low) / 2)
    return Interval(diff, diff - half, diff + half, min(a.n, b.n))
