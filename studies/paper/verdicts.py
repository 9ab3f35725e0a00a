"""Verdicts that survive their error bars: a finding "agrees" or "disagrees" only when the 95% interval of the
difference it rests on excludes 0 (or lies wholly inside / outside the paper's band); otherwise "inconclusive".

Intervals over seeds use Student's t (scipy.stats.t): seeds are few (3-5), and the t interval is the standard one
for a mean of a handful of independent runs. One seed gives no interval, hence no verdict. Differences are paired
wherever the two sides share something: two measures of one model, softmax and sparse models of one seed (same
initialisation and data order), two models' JSDs or correctness on the same test examples. An interval is clipped to
the range its quantity can take (a tau-b to [-1, 1], an accuracy to [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN, NOT_REACHED = "agrees", "disagrees", "inconclusive", "not run", "not reached"
REACHED = "reached"


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

    def clipped(self, bounds: tuple[float, float] | None) -> "Interval":
        """The interval cut to ``bounds`` (lowest, highest value the quantity can take); the mean is kept."""
        if bounds is None or not self.defined:
            return self
        return Interval(self.mean, max(bounds[0], self.low), min(bounds[1], self.high), self.n)


# The range of each kind of quantity, for clipping its intervals.
TAU_RANGE, UNIT_RANGE = (-1.0, 1.0), (0.0, 1.0)
TAU_DIFFERENCE_RANGE, UNIT_DIFFERENCE_RANGE = (-2.0, 2.0), (-1.0, 1.0)


def _finite(values) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def mean_interval(values, bounds: tuple[float, float] | None = None) -> Interval:
    """Mean and t-based 95% interval of independent values (seeds); undefined values are left out and counted out.
    ``bounds``: the range of the quantity, to which the interval is clipped."""
    from scipy import stats

    x = _finite(values)
    if x.size == 0:
        return Interval(None, None, None, 0)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, 1)
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size)).clipped(bounds)


def difference_interval(a, b, paired: bool = False, bounds: tuple[float, float] | None = None) -> Interval:
    """Interval of mean(a) - mean(b): paired (a[i] and b[i] share a seed or an example: the interval of the mean
    per-pair difference) or Welch (independent sets). ``bounds``: the range of the difference."""
    from scipy import stats

    if paired:
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
        return mean_interval([x - y for x, y in pairs], bounds)
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
    return Interval(diff, diff - half, diff + half, n).clipped(bounds)


def minimal_detectable_difference(sd: float, n: int, paired: bool = True, power: float = 0.8) -> float | None:
    """The smallest true difference a two-sided 5% test detects with probability ``power``: (t_.975 + t_power) x SE,
    with SE = sd / sqrt(n) for ``n`` paired differences of spread ``sd``, or sd x sqrt(2 / n) for two independent
    sets of ``n`` runs each. The usual normal-approximation formula with t quantiles for few seeds; None when n < 2."""
    from scipy import stats

    if n < 2 or sd is None or not math.isfinite(sd):
        return None
    dof = n - 1 if paired else 2 * n - 2
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
    return float((stats.t.ppf(0.975, dof) + stats.t.ppf(power, dof)) * se)


def _partial_kendall_rows(x, y, z, mask):
    """Kendall's partial tau of every row of [B, L] arrays over ``mask`` (NaN where undefined), with eval_suite's
    batched tau-b: the same figure as :func:`partial_kendall`, for thousands of bootstrap resamples at once."""
    import torch

    from eval_suite.metrics import kendall_tau_b

    x, y, z, mask = (torch.as_tensor(v) for v in (x, y, z, mask))
    txy, txz, tyz = kendall_tau_b(x, y, mask), kendall_tau_b(x, z, mask), kendall_tau_b(y, z, mask)
    denominator = torch.sqrt(torch.clamp((1 - txz ** 2) * (1 - tyz ** 2), min=0.0))
    partial = (txy - txz * tyz) / torch.where(denominator < 1e-6, torch.ones_like(denominator), denominator)
    return torch.where(denominator < 1e-6, torch.full_like(partial, float("nan")), partial.clamp(-1.0, 1.0)).numpy()


def partial_kendall_bootstrap(clusters: dict, n_resamples: int = 2000, seed: int = 0) -> tuple[Interval, int]:
    """Kendall's partial tau of x and y given z over all rows (x, y, z) of ``clusters`` (the models of one seed form
    a cluster), with a percentile 95% interval from resampling whole clusters with replacement. Returns (interval,
    resamples on which the partial tau was undefined); ``n`` of the interval counts clusters.

    Hand-written resampling: scipy.stats.bootstrap resamples single observations and cannot leave out resamples on
    which the statistic is undefined (z tying completely with x or y), which few clusters make likely.
    """
    keys = sorted(clusters)
    rows = {k: [r for r in clusters[k] if all(v is not None and math.isfinite(v) for v in r)] for k in keys}
    point = partial_kendall(*zip(*[r for k in keys for r in rows[k]])) if any(rows.values()) else None
    if point is None or len(keys) < 2:
        return Interval(point, None, None, len(keys) if point is not None else 0), 0
    width = max(len(r) for r in rows.values())
    table, present = np.zeros((len(keys), width, 3)), np.zeros((len(keys), width), dtype=bool)
    for i, k in enumerate(keys):
        table[i, :len(rows[k])], present[i, :len(rows[k])] = rows[k], True
    drawn = np.random.default_rng(seed).integers(0, len(keys), size=(n_resamples, len(keys)))
    data, mask = table[drawn].reshape(n_resamples, -1, 3), present[drawn].reshape(n_resamples, -1)
    values = _partial_kendall_rows(data[..., 0], data[..., 1], data[..., 2], mask)
    defined = values[np.isfinite(values)]
    undefined = int(n_resamples - defined.size)
    if defined.size < n_resamples // 2:  # mostly undefined: no interval worth the name
        return Interval(point, None, None, len(keys)), undefined
    low, high = np.percentile(defined, [2.5, 97.5])
    return Interval(point, float(low), float(high), len(keys)), undefined


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


def accuracy_criterion(change: Interval, max_drop: float) -> str:
    """The paper's "accuracy within ``max_drop``" as a test: "reached" when the whole 95% interval of the accuracy
    change (paired by example) lies above -max_drop, "not reached" when it lies wholly below, else inconclusive."""
    if change.n == 0:
        return NOT_RUN
    if not change.defined:
        return INCONCLUSIVE
    if change.low >= -max_drop:
        return REACHED
    if change.high < -max_drop:
        return NOT_REACHED
    return INCONCLUSIVE


def adversary_verdict(criterion: str, loss_below_chance: bool, excess_over_pairs: list[Interval]) -> str:
    """The paper's criterion first (accuracy kept, by :func:`accuracy_criterion`, and a test loss clearly below
    chance), else "not reached" (or "inconclusive" when the accuracy interval straddles the limit). When reached,
    agrees if the adversary's JSD to the baseline exceeds the JSD between EVERY pair of independently trained
    baselines (each interval of the per-example difference above 0), disagrees if it falls short of any pair."""
    if criterion == NOT_RUN:
        return NOT_RUN
    if criterion == NOT_REACHED or not loss_below_chance:
        return NOT_REACHED
    if criterion != REACHED:
        return INCONCLUSIVE
    ran = [i for i in excess_over_pairs if i.n]
    if not ran or any(not i.defined for i in ran):
        return INCONCLUSIVE
    if any(i.high < 0 for i in ran):
        return DISAGREES
    return AGREES if all(i.low > 0 for i in ran) else INCONCLUSIVE
