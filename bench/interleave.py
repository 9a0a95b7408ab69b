"""Interleaved A/B timing of two callables and their paired ratio A/B with a confidence interval.

Timing two implementations in sequential blocks (all of A's rounds, then all of B's) lets any change in the
machine between the blocks (another job starting, a frequency step, the page cache) land on one side only. Here
every round runs the two back to back in ABBA order::

    round i:  A  B  B  A      (call times a1, b1, b2, a2)

so each side runs once first and once second, and a slowdown that grows by the same step from call to call over the
round's four calls (``1 + d*k`` for call ``k``) scales ``a1 + a2`` and ``b1 + b2`` by the same factor
``2 + d*(2k0 + 3)``. A round's time per side is the mean of its two calls and its ratio is
``r_i = (a1 + a2) / (b1 + b2)``; drift *between* rounds scales both sides of a round alike and cancels in ``r_i``.

The reported ratio is the median of the per-round ratios, with the distribution-free confidence interval of a
median from order statistics (``scipy.stats.quantile_test``: exact binomial coverage, no resampling, no seed;
with fewer than 6 rounds a 95% interval does not exist and its bounds are NaN).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats as _sps

__all__ = ["ABBA", "Interleaved", "PairedRatio", "paired_ratio", "quantile", "time_interleaved"]

ABBA = ("a", "b", "b", "a")  # call order within one round


@dataclass
class Interleaved:
    """Runs ABBA rounds of ``a`` and ``b`` and keeps every call's time (seconds).

    ``calls[i]`` is round ``i``'s ``(a1, b1, b2, a2)`` in call order. Call :meth:`round` once per round (directly
    or as pytest-benchmark's target); warm-up rounds are recorded too and left out by :meth:`result`'s ``last``.
    """

    a: Callable[[], Any]
    b: Callable[[], Any]
    timer: Callable[[], float] = time.perf_counter
    calls: list[tuple[float, float, float, float]] = field(default_factory=list)

    def round(self) -> None:
        """One ABBA round: ``a, b, b, a``, each call timed on its own."""
        fns = {"a": self.a, "b": self.b}
        times = []
        for side in ABBA:
            t0 = self.timer()
            fns[side]()
            times.append(self.timer() - t0)
        self.calls.append((times[0], times[1], times[2], times[3]))

    def result(self, last: int | None = None) -> tuple[list[float], list[float]]:
        """Per-round mean time of each side ``(a_s, b_s)`` over the ``last`` rounds (default: all)."""
        calls = self.calls if last is None else self.calls[-last:]
        return [(c[0] + c[3]) / 2 for c in calls], [(c[1] + c[2]) / 2 for c in calls]


def time_interleaved(a: Callable[[], Any], b: Callable[[], Any], rounds: int, warmup_rounds: int = 1,
                     timer: Callable[[], float] = time.perf_counter) -> Interleaved:
    """``warmup_rounds + rounds`` ABBA rounds of ``a`` and ``b``; ``.result(last=rounds)`` gives the timed ones."""
    inter = Interleaved(a, b, timer)
    for _ in range(warmup_rounds + rounds):
        inter.round()
    return inter


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class PairedRatio:
    """Median of the per-round ratios ``a_i / b_i`` with its ``confidence`` interval; ``n`` rounds."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int


def paired_ratio(a_s: Sequence[float], b_s: Sequence[float], confidence: float = 0.95) -> PairedRatio:
    """Median of ``a_s[i] / b_s[i]`` over the rounds, with the order-statistic CI of a median (see module doc)."""
    if len(a_s) != len(b_s) or not a_s:
        raise ValueError(f"need the same number (>= 1) of rounds on both sides, got {len(a_s)} and {len(b_s)}")
    ratios = [a / b for a, b in zip(a_s, b_s)]
    ci = _sps.quantile_test(ratios, q=statistics.median(ratios), p=0.5).confidence_interval(confidence)
    return PairedRatio(statistics.median(ratios), float(ci.low), float(ci.high), confidence, len(ratios))
