"""Interleaved A/B timing (``bench.interleave``): ABBA call order, drift cancellation, the paired ratio and its CI.

A virtual clock stands in for the machine: each call advances it by its cost times a slowdown that grows by a fixed
step from one call to the next, so the true ratio is known exactly and no real timing enters the test.
"""

from __future__ import annotations

import statistics

import pytest

from bench.interleave import ABBA, Interleaved, paired_ratio, quantile, time_interleaved


class _Clock:
    """Virtual time; the ``k``-th call (from 0) of cost ``c`` takes ``c * (1 + drift * k)``."""

    def __init__(self, drift: float) -> None:
        self.t = 0.0
        self.drift = drift
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.t

    def fn(self, name: str, cost: float):
        def run() -> None:
            self.t += cost * (1 + self.drift * len(self.log))
            self.log.append(name)
        return run


def test_rounds_call_in_abba_order_and_warmup_is_left_out() -> None:
    clock = _Clock(drift=0.0)
    inter = time_interleaved(clock.fn("a", 2.0), clock.fn("b", 1.0), rounds=3, warmup_rounds=2, timer=clock)
    assert ABBA == ("a", "b", "b", "a")
    assert clock.log == list("abba") * 5 and len(inter.calls) == 5
    a_s, b_s = inter.result(last=3)
    assert a_s == [2.0] * 3 and b_s == [1.0] * 3


def test_abba_cancels_linear_drift_that_sequential_blocks_do_not() -> None:
    """A costs exactly 2x B; the machine slows down by 1% of a call per call. ABBA recovers 2 in every round; timing
    all of B's rounds and then all of A's (the old benchmark's order) puts the slowdown on A."""
    clock = _Clock(drift=0.01)
    a, b = clock.fn("a", 2.0), clock.fn("b", 1.0)
    a_s, b_s = time_interleaved(a, b, rounds=8, warmup_rounds=0, timer=clock).result()
    assert [x / y for x, y in zip(a_s, b_s)] == pytest.approx([2.0] * 8, rel=1e-12)
    assert paired_ratio(a_s, b_s).ratio == pytest.approx(2.0, rel=1e-12)

    blocks = _Clock(drift=0.01)
    b_times, a_times = [], []
    for fn, out in ((blocks.fn("b", 1.0), b_times), (blocks.fn("a", 2.0), a_times)):
        for _ in range(8):
            t0 = blocks()
            fn()
            out.append(blocks() - t0)
    assert statistics.median(a_times) / statistics.median(b_times) > 2.1  # biased by the drift


def test_paired_ratio_is_median_of_round_ratios_with_order_statistic_ci() -> None:
    ratios = [0.90, 0.95, 1.00, 1.02, 1.03, 1.05, 1.08, 1.10, 1.20, 1.50]
    b_s = [0.010 * (i + 1) for i in range(len(ratios))]  # rounds at different speeds: only the ratio matters
    est = paired_ratio([r * b for r, b in zip(ratios, b_s)], b_s)
    assert est.n == 10 and est.confidence == 0.95
    assert est.ratio == pytest.approx(statistics.median(ratios))
    # n = 10: the exact 95% interval of a median runs from the 2nd to the 9th order statistic (coverage 97.9%).
    assert (est.ci_low, est.ci_high) == (pytest.approx(0.95), pytest.approx(1.20))
    few = paired_ratio([1.0, 1.1, 1.2], [1.0, 1.0, 1.0])
    assert few.ratio == pytest.approx(1.1) and few.ci_low != few.ci_low  # NaN: 3 rounds cannot give 95%
    with pytest.raises(ValueError, match="same number"):
        paired_ratio([1.0], [1.0, 2.0])


def test_interleaved_records_each_call_and_quantile() -> None:
    clock = _Clock(drift=0.0)
    inter = Interleaved(clock.fn("a", 3.0), clock.fn("b", 1.0), timer=clock)
    inter.round()
    assert inter.calls == [(3.0, 1.0, 1.0, 3.0)]
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5 and quantile([5.0], 0.2) == 5.0
