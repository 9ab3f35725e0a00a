"""What every aggregate is: a *stat* of per-example values with its n, its bootstrap interval and whether it is defined.

``Stats`` and ``pooled_stat`` are shared by the measures that summarise their own rows and by
:mod:`eval_suite.aggregate`, which builds the results dict from them (module docstring there: the definitions).
"""

from __future__ import annotations

import math

import numpy as np

from .settings import AggregateConfig  # noqa: F401  (the statistics' settings; importable from here too)


class Bootstrap:
    """Seeded resamples of N examples, as a count matrix [R, N]: resampled sums are one matrix product."""

    def __init__(self, n_examples: int, config: AggregateConfig):
        rng = np.random.default_rng(config.bootstrap_seed)
        self.counts = rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples),
                                      size=config.bootstrap_resamples).astype(np.float64)
        self.tail = (1 - config.confidence) / 2 * 100

    def interval(self, sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of sum/count over resamples; ``sums`` and ``counts`` are per example [N, K]."""
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (self.counts @ sums) / (self.counts @ counts)  # [R, K]
        low, high = nanpercentile_columns(means, (self.tail, 100 - self.tail))
        return low, high


def nanpercentile_columns(values: np.ndarray, q) -> np.ndarray:
    """``np.nanpercentile(values, q, axis=0)`` for [R, K] ``values``, equal to it bit for bit: columns are grouped by
    their number of finite entries and each group is one vectorised ``np.percentile``. numpy's own treats every
    column holding a NaN as a separate 1-d problem (a Python loop over K: most of an aggregation's time)."""
    values = np.asarray(values, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    out = np.full((q.size, values.shape[1]), np.nan)
    valid = (~np.isnan(values)).sum(axis=0)
    for n_valid in np.unique(valid):
        if n_valid == 0:
            continue  # all NaN: undefined
        columns = np.flatnonzero(valid == n_valid)
        block = values[:, columns]
        if n_valid < values.shape[0]:
            block = np.sort(block, axis=0)[:n_valid]  # NaN sorts last
        out[:, columns] = np.percentile(block, q, axis=0)
    return out.reshape(q.shape + values.shape[1:])


class Stats:
    """mean, std, n and interval of a per-example array [N, *S], for every cell of S at once (vectorised).

    With ``sampling`` [N, *S] (each example's standard error from position sampling, :mod:`eval_suite.position_sample`)
    each stat also carries ``sampling_standard_error``, what the sampling alone adds to the error of the mean:
    sqrt(sum_e se_e^2) / n over the examples the mean rests on (the examples' samples are independent)."""

    def __init__(self, values: np.ndarray, bootstrap: Bootstrap, min_n: int, sampling: np.ndarray | None = None):
        values = np.asarray(values, dtype=np.float64)
        self.shape = values.shape[1:]
        flat = values.reshape(values.shape[0], -1)
        finite = np.isfinite(flat)
        filled = np.where(finite, flat, 0.0)
        self.n = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = filled.sum(axis=0) / self.n
            squares = np.where(finite, (flat - self.mean) ** 2, 0.0).sum(axis=0)
            self.std = np.sqrt(squares / (self.n - 1))
        self.low, self.high = bootstrap.interval(filled, finite.astype(np.float64))
        self.min_n = min_n
        self.n_total = values.shape[0]
        self.sampling = None
        if sampling is not None:
            se = np.asarray(sampling, dtype=np.float64).reshape(flat.shape)
            with np.errstate(invalid="ignore", divide="ignore"):
                # an example whose own standard error is undefined adds nothing it could be estimated from
                self.sampling = np.sqrt(np.where(finite & np.isfinite(se), se ** 2, 0.0).sum(axis=0)) / self.n

    def at(self, *index, reason: str | None = None) -> dict:
        """The stat dict of one cell (``index`` into S); ``reason`` explains an undefined cell's missing values."""
        k = int(np.ravel_multi_index(index, self.shape)) if self.shape else 0
        stat = make_stat(self.mean[k], self.std[k], int(self.n[k]), self.low[k], self.high[k], self.min_n,
                         self.n_total, reason)
        if self.sampling is not None:
            stat["sampling_standard_error"] = finite_or_none(self.sampling[k]) if stat["defined"] else None
        return stat


def make_stat(mean, std, n: int, low, high, min_n: int, n_total: int, reason: str | None = None) -> dict:
    defined = n >= min_n and n > 0
    why = None
    if not defined:
        why = f"defined on {n} of {n_total} examples (at least {min_n} needed)" + (f": {reason}" if reason else "")
    return {"mean": finite_or_none(mean) if defined else None, "std": finite_or_none(std) if defined else None, "n": n,
            "ci95": [finite_or_none(low), finite_or_none(high)] if defined and finite_or_none(low) is not None else None,
            "defined": bool(defined), "reason": why}


def finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def pooled_stat(values: np.ndarray, include: np.ndarray, bootstrap: Bootstrap, min_n: int,
                sampling: np.ndarray | None = None) -> dict:
    """One stat over the cells of ``values`` [N, *S] selected by ``include`` [*S] (defined cells): pooled values.
    With ``sampling`` (as for :class:`Stats`) its ``sampling_standard_error`` is sqrt(sum_e (sum_cells se)^2) / n:
    the cells of one example share its sample, so their errors are added, not their variances (an upper bound)."""
    values = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
    include = np.asarray(include, dtype=bool).reshape(-1)
    finite = np.isfinite(values) & include[None, :]
    filled = np.where(finite, values, 0.0)
    sums, counts = filled.sum(axis=1, keepdims=True), finite.sum(axis=1, keepdims=True).astype(np.float64)
    n = int(counts.sum())
    if n == 0:
        return make_stat(np.nan, np.nan, 0, np.nan, np.nan, min_n, values.shape[0], "no defined value to pool")
    mean = sums.sum() / n
    pooled_values = values[finite]
    std = pooled_values.std(ddof=1) if pooled_values.size > 1 else np.nan
    low, high = bootstrap.interval(sums, counts)
    stat = make_stat(mean, std, n, low[0], high[0], min(min_n, n), values.shape[0])
    stat["n_cells"] = int(include.sum())
    if sampling is not None:
        se = np.asarray(sampling, dtype=np.float64).reshape(values.shape)
        per_example = np.where(finite & np.isfinite(se), se, 0.0).sum(axis=1)
        stat["sampling_standard_error"] = finite_or_none(np.sqrt((per_example ** 2).sum()) / n) \
            if stat["defined"] else None
    return stat


def format_stat(stat) -> str:
    """"0.123 [0.100, 0.150]" for a defined stat (a bare {"mean": x} prints the mean alone), else "undefined"."""
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "undefined"
    ci = stat.get("ci95")
    se = stat.get("sampling_standard_error")
    return (f"{stat['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + (f" (sampling standard error {se:.3f})" if se else ""))


def percentiles(values) -> dict:
    """median, p90, max and n of the finite values (None where there is none): a diagnostic's summary."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return {"median": finite_or_none(np.median(finite)) if finite.size else None,
            "p90": finite_or_none(np.percentile(finite, 90)) if finite.size else None,
            "max": finite_or_none(finite.max()) if finite.size else None, "n": int(finite.size)}
