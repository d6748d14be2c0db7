"""Seed statistics: every number against scipy computed another way, and the verdict lines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bertforge.analysis.stats import compare, seeds_needed, summarize, t_test_power

NSP = {1: 0.93, 2: 0.88, 3: 0.89}  # README: per seed, MLM+NSP vs MLM only
MLM = {1: 0.81, 2: 0.81, 3: 0.79}


def test_summary_matches_scipy():
    x = [0.93, 0.88, 0.89, 0.95]
    s = summarize(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert s.n == 4
    assert s.mean == pytest.approx(stats.tmean(x), rel=1e-12)
    assert s.std == pytest.approx(stats.tstd(x), rel=1e-12)
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert s.ci_low < s.mean < s.ci_high


def test_equal_values_have_a_zero_width_interval_not_nan():
    s = summarize([0.22, 0.22])
    assert (s.std, s.ci_low, s.ci_high) == (0.0, 0.22, 0.22)


def test_one_seed_has_no_spread():
    s = summarize([0.9])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (1, 0.9, None, None, None)
    c = compare({1: 0.9}, {1: 0.8}, "a", "b")
    assert c.p_value is None and c.ci_low is None and c.std is None
    assert "too few runs for a test" in c.verdict


def test_paired_difference_matches_scipy():
    c = compare(NSP, MLM, "MLM+NSP", "MLM only")
    diffs = np.array([NSP[s] - MLM[s] for s in (1, 2, 3)])
    one_sample = stats.ttest_1samp(diffs, 0)
    ci = one_sample.confidence_interval(0.95)
    assert c.paired and c.n == 3
    assert c.mean == pytest.approx(diffs.mean(), rel=1e-12)
    assert c.std == pytest.approx(stats.tstd(diffs), rel=1e-12)
    assert c.p_value == pytest.approx(one_sample.pvalue, rel=1e-9)
    assert c.p_value == pytest.approx(
        stats.ttest_rel(list(NSP.values()), list(MLM.values())).pvalue
    )
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert c.significant
    expected = (
        f"MLM+NSP − MLM only: +{c.mean:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}], "
        f"p={c.p_value:.2g}, n=3 pairs"
    )
    assert c.verdict == expected


def test_pairing_is_by_seed_not_by_order():
    shuffled = {3: MLM[3], 1: MLM[1], 2: MLM[2]}
    assert compare(NSP, shuffled).mean == pytest.approx(compare(NSP, MLM).mean)
    assert compare(NSP, shuffled).p_value == pytest.approx(compare(NSP, MLM).p_value)


def test_identical_arms_give_the_noise_verdict():
    same = compare(NSP, dict(NSP), "a", "b")
    assert same.mean == 0 and same.p_value is None and same.seeds_needed is None
    assert "not distinguishable from seed noise" in same.verdict
    # the same values at other seeds: a real test, and a large p
    rotated = compare(NSP, {1: NSP[2], 2: NSP[3], 3: NSP[1]}, "a", "b")
    assert rotated.p_value > 0.05
    assert rotated.p_value == pytest.approx(
        stats.ttest_rel([0.93, 0.88, 0.89], [0.88, 0.89, 0.93]).pvalue
    )
    assert f"not distinguishable from seed noise at n=3 (p={rotated.p_value:.2g})" in (
        rotated.verdict
    )


def test_unmatched_seeds_fall_back_to_welch_and_say_so():
    a, b = {1: 0.93, 2: 0.88, 3: 0.89}, {4: 0.81, 5: 0.81, 6: 0.79, 7: 0.83}
    c = compare(a, b, "a", "b")
    welch = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert not c.paired and c.n == 3
    assert c.p_value == pytest.approx(welch.pvalue, rel=1e-9)
    # the Welch interval from the Welch–Satterthwaite degrees of freedom
    va, vb = stats.tvar(list(a.values())) / 3, stats.tvar(list(b.values())) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (c.ci_low, c.ci_high) == pytest.approx((c.mean - half, c.mean + half), rel=1e-9)
    assert "unpaired Welch" in c.verdict and "n=3 vs 4 runs" in c.verdict


def test_seeds_needed_matches_published_sample_sizes():
    # Cohen / G*Power: paired d=0.5 -> 34 pairs, d=0.8 -> 15; two groups d=0.5 -> 64 per group
    assert seeds_needed(0.5, 1.0, paired=True) == 34
    assert seeds_needed(0.8, 1.0, paired=True) == 15
    assert seeds_needed(0.5, 1.0, paired=False) == 64
    n = seeds_needed(0.012, 0.02)
    assert t_test_power(0.6, n) >= 0.8 > t_test_power(0.6, n - 1)
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(1.0, 0.0) is None


def test_a_noisy_difference_reports_how_many_seeds_would_settle_it():
    c = compare({1: 0.90, 2: 0.85, 3: 0.91}, {1: 0.88, 2: 0.86, 3: 0.87}, "a", "b")
    assert not c.significant and c.seeds_needed is not None and c.seeds_needed > 3
    assert f"~{c.seeds_needed} pairs would detect it with 80% power" in c.verdict
