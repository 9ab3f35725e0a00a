"""Verdict logic of the paper study on constructed inputs whose intervals are known."""

import math

import pytest
from scipy import stats

from studies.paper.verdicts import (AGREES, DISAGREES, INCONCLUSIVE, NOT_REACHED, NOT_RUN, Interval, adversary_verdict,
                                    band_verdict, combine, difference_interval, mean_interval, partial_kendall,
                                    sign_verdict)


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
    seed_jsd = Interval(0.30, 0.28, 0.32, 200)
    far = Interval(0.55, 0.52, 0.58, 200)
    ln2 = math.log(2)
    assert adversary_verdict(0.70, 0.72, 0.55, ln2, far, seed_jsd) == AGREES
    assert adversary_verdict(0.64, 0.72, 0.55, ln2, far, seed_jsd) == NOT_REACHED  # accuracy -0.08
    assert adversary_verdict(0.72, 0.72, 0.68, ln2, far, seed_jsd) == NOT_REACHED  # loss at chance
    assert adversary_verdict(0.72, 0.72, 0.50, ln2, Interval(0.31, 0.29, 0.33, 200), seed_jsd) == INCONCLUSIVE
    assert adversary_verdict(0.72, 0.72, 0.50, ln2, Interval(0.1, 0.09, 0.11, 200), seed_jsd) == DISAGREES
