"""bench.stats against independent computations: the tie-corrected rank-test variance against the permutation
distribution, the bootstrap interval's coverage on seeded synthetic data, and the two-test rule for significance."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.compare_stats import Options
from bench.stats import (
    _boot_medians,
    _hier_boot,
    benjamini_hochberg,
    bootstrap_ratio_ci,
    compare_repeated,
    compare_samples,
    mann_whitney_p,
    rep_spread,
)


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
    with pytest.raises(ValueError, match=r"^p-values must lie in \[0, 1\]$"):
        benjamini_hochberg([0.5, 1.5])
    np.testing.assert_allclose(benjamini_hochberg([1.0, 0.01]), [1.0, 0.02])  # p = 1 is valid too


def test_mann_whitney_single_sample_side_and_empty_input() -> None:
    # One sample against two, no ties: the exact null distribution puts the single value at rank 1, 2 or 3 with
    # probability 1/3 each, so U = 2 (the most extreme) has two-sided p = 2 * 1/3.
    assert mann_whitney_p([1.0, 2.0], [3.0]) == pytest.approx(2 / 3, abs=1e-12)
    assert mann_whitney_p([3.0], [1.0, 2.0]) == pytest.approx(2 / 3, abs=1e-12)  # either side of one
    with pytest.raises(ValueError, match=r"^both sample sets must be non-empty$"):
        mann_whitney_p([1.0, 2.0], [])


def test_rep_spread_is_the_relative_range_of_run_medians() -> None:
    assert rep_spread([[1.0, 5.0, 2.0]]) == 0.0  # one run: no between-run spread
    assert rep_spread([[1.0, 2.0, 3.0], [2.6, 2.5, 2.7]]) == pytest.approx(0.3)  # medians 2 and 2.6
    assert rep_spread([[2.0], [2.2], [3.0]]) == pytest.approx(0.5)


def test_hierarchical_bootstrap_draws_every_run() -> None:
    # Two runs of constant samples 1 and 3: each replicate draws 2 runs with replacement, so its median of run
    # medians is 1, 2 or 3 with probabilities 1/4, 1/2, 1/4 (binomial SE at n = 4000: <= 0.008).
    reps = _hier_boot([np.full(5, 1.0), np.full(5, 3.0)], 4000, np.random.default_rng(0))
    freq = [np.mean(reps == v) for v in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(freq, [0.25, 0.5, 0.25], atol=0.03)


def test_library_defaults_are_bench_compares() -> None:
    # Calling bench.stats directly gives the numbers `bench compare` gives with its default options (seed 0).
    o = Options()
    # 200 samples per side: the bootstrap medians are near-continuous, so any other seed or resample count moves the
    # interval (with few samples the medians take a handful of values and the quantiles can coincide).
    rng = np.random.default_rng(2)
    base, new = list(rng.lognormal(0, 0.1, 200)), list(rng.lognormal(0.1, 0.1, 200))
    kw = {"n_boot": o.resamples, "confidence": o.confidence, "seed": 0}
    assert compare_samples(base, new) == compare_samples(base, new, **kw)
    assert bootstrap_ratio_ci(base, new) == bootstrap_ratio_ci(base, new, **kw)
    for other in ({"n_boot": o.resamples + 1}, {"seed": 1}):  # the data can tell the defaults apart
        assert bootstrap_ratio_ci(base, new, **{**kw, **other}) != bootstrap_ratio_ci(base, new, **kw)
    runs_b, runs_n = [base[:60], base[60:130], base[130:]], [new[:60], new[60:130], new[130:]]
    assert compare_repeated(runs_b, runs_n) == compare_repeated(runs_b, runs_n, **kw)
    for other in ({"n_boot": o.resamples + 1}, {"seed": 1}):
        assert compare_repeated(runs_b, runs_n, **{**kw, **other}) != compare_repeated(runs_b, runs_n, **kw)


def test_compare_repeated_input_rules() -> None:
    two = [[1.0, 1.1, 1.2], [1.05, 1.1, 1.15]]  # 2 runs of 3 samples: the smallest valid input
    est = compare_repeated(two, [[1.2, 1.3, 1.4], [1.25, 1.3, 1.35], [1.3, 1.3, 1.3]])
    assert (est.reps_base, est.reps_new, est.n_base, est.n_new) == (2, 3, 6, 9)
    assert compare_repeated(two, two[::-1]).reps_new == 2
    with pytest.raises(ValueError, match=r"^need at least 2 runs per side, got 1 and 2$"):
        compare_repeated(two[:1], two)
    with pytest.raises(ValueError, match=r"^need at least 2 runs per side, got 2 and 1$"):
        compare_repeated(two, two[:1])
    with pytest.raises(ValueError, match=r"^need at least 3 samples per run$"):
        compare_repeated(two, [[1.0, 1.1, 1.2], [1.0, 1.1]])
    for c in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^confidence must be in \(0, 1\), got {c}$"):
            compare_repeated(two, two, confidence=c)
    assert compare_repeated(two, two, seed=5) == compare_repeated(two, two, seed=5)  # seeded


def test_compare_repeated_interval_is_the_percentile_interval_of_the_replicates() -> None:
    # The hierarchical bootstrap's replicates (same seed, same draw order as compare_repeated): the 95% interval
    # leaves 2.5% of them below and 2.5% above, to within one replicate of 2000 (ties aside: continuous samples).
    rng = np.random.default_rng(4)
    base = [list(rng.lognormal(0, 0.05, 31)) for _ in range(4)]
    new = [list(1.1 * rng.lognormal(0, 0.05, 31)) for _ in range(4)]
    est = compare_repeated(base, new, seed=9)
    g = np.random.default_rng(9)
    reps = _hier_boot([np.asarray(r) for r in new], 2000, g) / _hier_boot([np.asarray(r) for r in base], 2000, g)
    assert np.mean(reps < est.ci_low) == pytest.approx(0.025, abs=0.001)
    assert np.mean(reps > est.ci_high) == pytest.approx(0.025, abs=0.001)


def test_compare_repeated_p_value_edges_and_the_two_test_rule() -> None:
    same = [[1.0, 2.0, 3.0], [1.5, 2.0, 2.5]]
    assert compare_repeated(same, same[::-1]).p_value == 1.0  # identical run medians: no evidence
    # Every run's median is 1 on one side, 2 on the other: zero variance, different means -> p = 0, significant.
    est = compare_repeated([[1.0] * 3] * 2, [[2.0] * 3] * 2)
    assert est.p_value == 0.0 and est.significant and est.ratio == 2.0
    # Run medians 5 against 1 (p = 0), but each new run is [1, 5, 5]: a bootstrap median of 1 has probability 7/27,
    # so > 2.5% of the replicates are exactly 1 and the interval ends at 1.0: not significant (the interval must
    # exclude 1, p alone is not enough).
    est = compare_repeated([[1.0] * 3] * 2, [[1.0, 5.0, 5.0]] * 2)
    assert est.p_value == 0.0 and est.ci_low == 1.0 and not est.significant
    est = compare_repeated([[1.0, 5.0, 5.0]] * 2, [[1.0] * 3] * 2)  # the mirror image: the interval's top is 1.0
    assert est.p_value == 0.0 and est.ci_high == 1.0 and not est.significant


def test_compare_samples_passes_its_options_to_the_bootstrap() -> None:
    rng = np.random.default_rng(6)
    base, new = list(rng.lognormal(0, 0.1, 15)), list(rng.lognormal(0.05, 0.1, 15))
    for kw in ({"n_boot": 500, "confidence": 0.8, "seed": 5}, {"n_boot": 700, "confidence": 0.9, "seed": 3}):
        est = compare_samples(base, new, **kw)
        assert (est.ratio, est.ci_low, est.ci_high) == bootstrap_ratio_ci(base, new, **kw)
        assert est == compare_samples(base, new, **kw)  # seeded
    with pytest.raises(ValueError, match=r"^need at least 3 samples per side, got 2 and 3$"):
        compare_samples([1.0, 2.0], [1.0, 2.0, 3.0])


def test_bootstrap_interval_is_the_percentile_interval_of_the_replicates() -> None:
    # As for compare_repeated: the replicates (same seed and draw order) leave 2.5% below and above the 95% interval.
    rng = np.random.default_rng(8)
    base, new = rng.lognormal(0, 0.1, 41), rng.lognormal(0.05, 0.1, 41)
    _, lo, hi = bootstrap_ratio_ci(base, new, seed=3)
    g = np.random.default_rng(3)
    reps = _boot_medians(new, 2000, g) / _boot_medians(base, 2000, g)
    assert np.mean(reps < lo) == pytest.approx(0.025, abs=0.001)
    assert np.mean(reps > hi) == pytest.approx(0.025, abs=0.001)


def test_bootstrap_input_rules() -> None:
    assert bootstrap_ratio_ci([1.0, 2.0, 3.0], [4.0])[0] == 2.0  # one sample on a side is enough for the bootstrap
    assert bootstrap_ratio_ci([2.0], [1.0, 3.0, 5.0])[0] == 1.5
    for base, new in (([1.0], []), ([], [1.0])):
        with pytest.raises(ValueError, match=r"^both sample sets must be non-empty$"):
            bootstrap_ratio_ci(base, new)
    for base, new in (([1.0, 2.0], [0.0, 1.0]), ([0.0, 1.0], [1.0, 2.0]), ([1.0, 2.0], [-1.0, 1.0]),
                      ([-1.0, 2.0], [1.0, 2.0]), ([1.0, np.inf], [1.0, 2.0]), ([1.0, 2.0], [np.nan, 2.0])):
        with pytest.raises(ValueError, match=r"^latency samples must be finite and positive$"):
            bootstrap_ratio_ci(base, new)
    for c in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^confidence must be in \(0, 1\), got {c}$"):
            bootstrap_ratio_ci([1.0, 2.0], [1.0, 2.0], confidence=c)


def test_mann_whitney_identical_values() -> None:
    assert mann_whitney_p([2.0, 2.0, 2.0], [2.0, 2.0]) == 1.0  # no spread at all: no evidence of a shift
    # Two tied blocks one apart: the normal approximation with tie and continuity corrections, z = (4.5 - 0.5) / sd,
    # Var[U] = n1 n2 / 12 * (n + 1 - sum(t^3 - t) / (n (n - 1))) = 9/12 * (7 - 48/30).
    z = 4.0 / math.sqrt(9 / 12 * (7 - 48 / 30))
    assert mann_whitney_p([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)


def test_an_interval_ending_at_one_is_not_significant() -> None:
    # 8 samples of 1 against [1, 5, 5, 5, 5]: the rank test rejects (p ~ 0.005), but a bootstrap median of the new
    # side is 1 with probability P(Binomial(5, 1/5) >= 3) = 5.8% > 2.5%, so the 95% interval starts at exactly 1.0.
    est = compare_samples([1.0] * 8, [1.0, 5.0, 5.0, 5.0, 5.0])
    assert est.p_value < 0.01 and est.ci_low == 1.0 and not est.significant
    est = compare_samples([1.0, 5.0, 5.0, 5.0, 5.0], [1.0] * 8)  # the mirror image: the interval ends at 1.0
    assert est.p_value < 0.01 and est.ci_high == 1.0 and not est.significant
