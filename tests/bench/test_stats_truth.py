"""bench.stats against independent computations: the tie-corrected rank-test variance against the permutation
distribution, the bootstrap interval's coverage on seeded synthetic data, and the two-test rule for significance."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.stats import benjamini_hochberg, bootstrap_ratio_ci, compare_samples, mann_whitney_p


def test_mann_whitney_tie_correction_equals_the_permutation_variance() -> None:
    # Under H0 every split of the pooled values is equally likely; the variance of U over all C(10, 5) splits is the
    # exact Var[U], which the tie-corrected formula must equal (the uncorrected n1·n2·(n+1)/12 overstates it).
    base, new = [1, 1, 2, 2, 3], [2, 3, 3, 4, 4]
    pooled = np.array(base + new, dtype=float)

    def u_stat(a: np.ndarray, b: np.ndarray) -> float:
        return float((a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum())

    us = []
    for idx in itertools.combinations(range(10), 5):
        mask = np.zeros(10, bool)
        mask[list(idx)] = True
        us.append(u_stat(pooled[mask], pooled[~mask]))
    var = float(np.var(us))
    assert var < 25 * 11 / 12  # ties shrink the variance, so the correction matters here
    u = u_stat(np.array(new, float), np.array(base, float))
    z = (abs(u - 12.5) - 0.5) / math.sqrt(var)
    assert abs(mann_whitney_p(base, new) - math.erfc(z / math.sqrt(2))) < 1e-12


def test_bootstrap_interval_covers_the_true_ratio_95pct() -> None:
    # 600 seeded pairs of 101 lognormal samples, true ratio of medians 1.2: a 95% interval must cover it about 95% of
    # the time. Measured with these seeds: 0.942 at 95%, 0.895 at 90% (n = 31 is too discrete to tell them apart:
    # 0.967 vs 0.925). The bounds sit about 2 binomial SEs (0.009) from 0.95.
    rng = np.random.default_rng(7)
    reps, n, true = 600, 101, 1.2
    hits = 0
    for i in range(reps):
        b = np.exp(rng.normal(0.0, 0.2, n))
        a = true * np.exp(rng.normal(0.0, 0.2, n))
        _, lo, hi = bootstrap_ratio_ci(b, a, n_boot=1000, seed=i)
        hits += lo <= true <= hi
    assert 0.925 <= hits / reps <= 0.975, hits / reps


def test_significant_needs_the_rank_test_too() -> None:
    # 3 vs 3, fully separated: the bootstrap interval excludes 1, but the rank test cannot reach p < 0.05 with so few
    # samples (normal approximation p = 0.081), so the change is not called significant.
    est = compare_samples([1.0, 1.01, 1.02], [2.0, 2.01, 2.02])
    assert est.ci_low > 1.0
    assert est.p_value > 0.05
    assert not est.significant
    assert est.ratio == 2.01 / 1.01 and est.ci_low <= est.ratio <= est.ci_high
    assert (est.n_base, est.n_new) == (3, 3)
    # With 6 vs 6 both agree.
    assert compare_samples([1.0, 1.01, 1.02, 1.03, 1.04, 1.05], [2.0, 2.01, 2.02, 2.03, 2.04, 2.05]).significant


def test_benjamini_hochberg_edges() -> None:
    # p = 0 is a valid p-value (an exact test can give it); outside [0, 1] is named in the error.
    np.testing.assert_allclose(benjamini_hochberg([0.0, 0.5]), [0.0, 0.5])
    with pytest.raises(ValueError, match=r"^p-values must lie in \[0, 1\]$"):
        benjamini_hochberg([-0.1])
    np.testing.assert_allclose(benjamini_hochberg([1.0, 0.01]), [1.0, 0.02])  # p = 1 is valid too


def test_mann_whitney_single_sample_side_and_empty_input() -> None:
    # One sample against two, no ties: the exact null distribution puts the single value at rank 1, 2 or 3 with
    # probability 1/3 each, so U = 2 (the most extreme) has two-sided p = 2 * 1/3.
    assert mann_whitney_p([1.0, 2.0], [3.0]) == pytest.approx(2 / 3, abs=1e-12)
    assert mann_whitney_p([3.0], [1.0, 2.0]) == pytest.approx(2 / 3, abs=1e-12)  # either side of one
    with pytest.raises(ValueError, match=r"^both sample sets must be non-empty$"):
        mann_whitney_p([1.0, 2.0], [])
