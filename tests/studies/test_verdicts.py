"""Verdict logic of the paper study on constructed inputs whose intervals are known."""

import math

import pytest
from scipy import stats

from studies.paper.verdicts import (AGREES, DISAGREES, INCONCLUSIVE, NOT_REACHED, NOT_RUN, REACHED, Interval,
                                    accuracy_criterion, adversary_verdict, band_verdict, combine, difference_interval,
                                    mean_interval, minimal_detectable_difference, partial_kendall,
                                    partial_kendall_bootstrap, sign_verdict)


def test_mean_interval_is_the_t_interval():
    values = [0.5, 0.7, 0.6, 0.8, 0.4]
    got = mean_interval(values)
    half = stats.t.ppf(0.975, 4) * stats.tstd(values) / math.sqrt(5)
    assert got.mean == pytest.approx(0.6) and got.n == 5
    assert (got.low, got.high) == pytest.approx((0.6 - half, 0.6 + half))
    assert mean_interval([0.3]).defined is False and mean_interval([None, float("nan")]).n == 0


def test_a_verdict_needs_the_interval_of_the_difference_to_exclude_zero():
    clear = difference_interval([0.70, 0.72, 0.71], [0.50, 0.52, 0.51])  # difference .20, tiny spread
    assert clear.low > 0 and sign_verdict(clear, +1) == AGREES and sign_verdict(clear, -1) == DISAGREES
    noisy = difference_interval([0.7, 0.3, 0.5], [0.6, 0.2, 0.6])  # difference .03 against a spread of .2
    assert noisy.low < 0 < noisy.high and sign_verdict(noisy, +1) == INCONCLUSIVE
    one_seed = difference_interval([0.9], [0.1])
    assert one_seed.mean == pytest.approx(0.8) and sign_verdict(one_seed, +1) == INCONCLUSIVE
    assert sign_verdict(difference_interval([], [0.1]), +1) == NOT_RUN


def test_paired_difference_uses_the_per_seed_differences():
    # independent spreads are large, the per-seed differences are all .1: paired excludes 0, Welch does not
    a, b = [0.2, 0.9, 0.5], [0.1, 0.8, 0.4]
    assert sign_verdict(difference_interval(a, b, paired=True), +1) == AGREES
    assert sign_verdict(difference_interval(a, b), +1) == INCONCLUSIVE


def test_band_verdict():
    assert band_verdict(Interval(0.7, 0.6, 0.8, 5), 0.5, 0.9) == AGREES
    assert band_verdict(Interval(0.2, 0.15, 0.25, 5), 0.5, 0.9) == DISAGREES
    assert band_verdict(Interval(0.5, 0.4, 0.6, 5), 0.5, 0.9) == INCONCLUSIVE
    assert combine([AGREES, AGREES, NOT_RUN]) == AGREES and combine([AGREES, DISAGREES]) == INCONCLUSIVE


def test_partial_kendall_removes_a_trend_that_accuracy_explains():
    knob = [0, 1, 2, 3, 4, 5]
    accuracy = [0.9, 0.8, 0.85, 0.7, 0.75, 0.6]
    entropy = [a * 2 for a in accuracy]  # entropy ranks exactly like accuracy: nothing left once it is controlled
    assert kendall_of(knob, entropy) < -0.7
    assert partial_kendall(knob, entropy, accuracy) is None
    noisy = [1.8, 1.62, 1.7, 1.52, 1.38, 1.22]  # ranks like accuracy but for one swapped pair
    t_xy, t_xz, t_yz = kendall_of(knob, noisy), kendall_of(knob, accuracy), kendall_of(noisy, accuracy)
    expected = (t_xy - t_xz * t_yz) / math.sqrt((1 - t_xz ** 2) * (1 - t_yz ** 2))
    assert partial_kendall(knob, noisy, accuracy) == pytest.approx(expected)
    assert abs(partial_kendall(knob, noisy, accuracy)) < abs(t_xy)
    assert partial_kendall([1, 2], [1, 2], [1, 2]) is None


def kendall_of(x, y):
    return stats.kendalltau(x, y, variant="b").statistic


def test_adversary_criterion_comes_before_its_jsd():
    above, below = Interval(0.1, 0.05, 0.15, 400), Interval(-0.1, -0.15, -0.05, 400)
    assert adversary_verdict(REACHED, True, [above, above]) == AGREES
    assert adversary_verdict(NOT_REACHED, True, [above]) == NOT_REACHED  # accuracy lost
    assert adversary_verdict(REACHED, False, [above]) == NOT_REACHED  # loss at chance
    assert adversary_verdict(INCONCLUSIVE, True, [above]) == INCONCLUSIVE  # the accuracy interval straddles -.02
    assert adversary_verdict(REACHED, True, [above, below]) == DISAGREES  # one pair of baselines is further apart
    assert adversary_verdict(REACHED, True, [above, Interval(0.0, -0.05, 0.05, 400)]) == INCONCLUSIVE


def test_accuracy_criterion_tests_the_interval_against_the_allowed_drop():
    assert accuracy_criterion(Interval(-0.005, -0.015, 0.005, 400), 0.02) == REACHED
    assert accuracy_criterion(Interval(-0.015, -0.04, 0.01, 400), 0.02) == INCONCLUSIVE  # point within, interval not
    assert accuracy_criterion(Interval(-0.08, -0.1, -0.06, 400), 0.02) == NOT_REACHED
    assert accuracy_criterion(Interval(None, None, None, 0), 0.02) == NOT_RUN


def test_intervals_are_clipped_to_the_quantitys_range():
    got = mean_interval([1.0, 0.98, 0.9], bounds=(0.0, 1.0))
    assert got.high == 1.0 and got.low < 0.9 and got.mean == pytest.approx(0.96)
    assert mean_interval([1.0, 0.98, 0.9]).high > 1.0  # unclipped, the t interval runs past 1


def test_minimal_detectable_difference_is_the_power_formula():
    # 5 paired seeds, sd .03 of the per-seed differences: (t_.975,4 + t_.8,4) x .03 / sqrt(5)
    expected = (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * 0.03 / math.sqrt(5)
    assert minimal_detectable_difference(0.03, 5) == pytest.approx(expected)
    assert minimal_detectable_difference(0.03, 5, paired=False) > minimal_detectable_difference(0.03, 5)
    assert minimal_detectable_difference(0.03, 1) is None


def test_partial_tau_bootstrap_resamples_whole_seeds_and_matches_the_closed_form():
    import numpy as np

    from studies.paper.verdicts import _partial_kendall_rows

    rng = np.random.default_rng(0)
    x, y, z = rng.random((3, 7, 12))
    batched = _partial_kendall_rows(x, y, z, np.ones((7, 12), dtype=bool))
    assert batched == pytest.approx([partial_kendall(a, b, c) for a, b, c in zip(x, y, z)])
    # a trend that holds whatever accuracy does: the interval excludes 0; pure noise: it covers 0
    clusters = {s: [(k, -k + 0.1 * rng.random(), rng.random()) for k in range(4)] for s in range(5)}
    strong, undefined = partial_kendall_bootstrap(clusters)
    assert strong.n == 5 and strong.high < 0 and undefined == 0
    assert strong.mean == pytest.approx(partial_kendall(*zip(*[r for rows in clusters.values() for r in rows])))
    noise = {s: [(k, rng.random(), rng.random()) for k in range(4)] for s in range(5)}
    loose, _ = partial_kendall_bootstrap(noise)
    assert loose.low < 0 < loose.high
