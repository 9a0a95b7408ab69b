"""Latency measurement on the well-kept timers, with warm-up and JIT/compile time kept out of the samples.

* CPU: :class:`torch.utils.benchmark.Timer` with ``blocked_autorange`` and the thread count set explicitly (its
  default is 1 thread, which would silently measure something else).
* CUDA: one of three named regimes (:mod:`bench.cuda_timing`): ``back-to-back`` (default: short loops of
  consecutive steps between CUDA events, as timm and TorchBench time), ``flushed`` (``triton.testing.do_bench``: L2
  flushed before every call, cold caches, launch overhead hidden) or ``cudagraph`` (the warm step captured once and
  its replays timed back to back: no launch overhead).
* CPU: only ``back-to-back`` exists (the Timer's blocks are consecutive calls); the other regimes raise.

Throughput comes from the total: all timed calls over all timed time (``Timing.per_call_ms``), not from the median.

The first call is timed on its own (``first_call_ms``: lazy init, cuDNN autotuning, torch.compile, Triton JIT);
further warm-up calls run until ``warmup_s`` has passed. Neither enters the samples. The headline statistic is the
median, with p20/p80, mean, std and the sample count; a run whose IQR/median exceeds ``NOISE_IQR`` is flagged noisy
(torch.utils.benchmark warns at 10%).

A per-config cap (``max_s``, ``run --max-config-s``) bounds a config whose calls are slow: a first call already over
the cap raises :class:`OverConfigBudget` (the row becomes ``timeout`` with the time it took); otherwise warm-up and
samples shrink to what fits, never below ``MIN_REDUCED_SAMPLES`` single-call samples, and the timing is flagged
``reduced``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .cuda_timing import CudaApi, back_to_back, capture, flushed

__all__ = ["Timing", "summarize", "time_fn", "NOISE_IQR", "OverConfigBudget", "MIN_REDUCED_SAMPLES", "REGIMES"]

# The timing regimes (see bench.cuda_timing); a row's ``timer`` column names one.
REGIMES = ("back-to-back", "flushed", "cudagraph")

NOISE_IQR = 0.10
# The fewest samples a capped config is measured with: three distinct order statistics for p20 / p50 / p80.
MIN_REDUCED_SAMPLES = 3


class OverConfigBudget(Exception):
    """The first call alone took longer than the per-config cap; the config is not measured further."""

    def __init__(self, first_call_ms: float, max_s: float) -> None:
        super().__init__(f"first call took {first_call_ms / 1e3:.1f} s, over --max-config-s {max_s:g}")
        self.first_call_ms = first_call_ms


@dataclass
class Timing:
    samples_ms: list[float]
    first_call_ms: float
    warmup_ms: float
    method: str
    inner_loops: int = 1
    stats: dict[str, float] = field(default_factory=dict)
    reduced: bool = False  # fewer samples than asked for, to fit ``max_s``
    regime: str = "back-to-back"
    total_ms: float = 0.0  # every timed call together (0: unknown, then per_call_ms falls back to the mean)
    calls: int = 0

    @property
    def per_call_ms(self) -> float:
        """All timed time over all timed calls: the throughput figure (batch / per_call_ms)."""
        return self.total_ms / self.calls if self.calls else self.stats["mean"]

    @property
    def median_ms(self) -> float:
        return self.stats["p50"]

    @property
    def noisy(self) -> bool:
        return self.stats["iqr_over_median"] > NOISE_IQR


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of pre-sorted values."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    s = sorted(samples_ms)
    p25, p50, p75 = _quantile(s, 0.25), _quantile(s, 0.5), _quantile(s, 0.75)
    return {
        "p50": p50, "p20": _quantile(s, 0.2), "p80": _quantile(s, 0.8), "mean": statistics.fmean(s),
        "std": statistics.stdev(s) if len(s) > 1 else 0.0, "min": s[0], "max": s[-1], "n": float(len(s)),
        "iqr_over_median": (p75 - p25) / p50 if p50 > 0 else 0.0,
    }


def time_fn(fn: Callable[[], Any], device: torch.device | str = "cpu", *, threads: int | None = None,
            warmup_s: float = 0.2, min_time_s: float = 1.0, min_samples: int = 5, max_s: float = 0.0,
            regime: str = "back-to-back", api: CudaApi | None = None,
            after_first: Callable[[], None] | None = None) -> Timing:
    """Time ``fn()`` (a zero-argument closure: all setup stays outside).

    Args:
        device: where ``fn`` runs (selects the timer).
        threads: CPU threads for the measurement (default: the current ``torch.get_num_threads()``).
        warmup_s: minimum warm-up time after the first call.
        min_time_s: minimum total measured time.
        min_samples: minimum number of samples, even if one call takes longer than ``min_time_s``.
        max_s: cap on the whole measurement (first call included); 0 = none. See the module docstring.
        regime: one of :data:`REGIMES` (CUDA); the CPU has ``back-to-back`` only.
        api: the CUDA calls (:class:`bench.cuda_timing.CudaApi`; tests pass a fake).
        after_first: called once right after the first call (e.g. to read compile counters before timing).
    """
    device = torch.device(device)
    if regime not in REGIMES:
        raise ValueError(f"unknown timing regime {regime!r}; valid: {', '.join(REGIMES)}")
    cuda = device.type == "cuda"
    if not cuda and regime != "back-to-back":
        raise ValueError(f"the {regime} regime needs CUDA; the CPU has back-to-back only")
    if cuda and api is None:
        api = CudaApi(device)
    sync = api.sync if api is not None else (lambda: None)  # an api exists exactly when the device is CUDA
    start = time.perf_counter()
    fn()
    sync()
    first_ms = (time.perf_counter() - start) * 1e3
    if after_first is not None:
        after_first()
    if max_s > 0 and first_ms / 1e3 > max_s:
        raise OverConfigBudget(first_ms, max_s)

    t0 = time.perf_counter()
    est_ms = first_ms
    n_warm = 0
    while n_warm < 2 or time.perf_counter() - t0 < warmup_s:
        t1 = time.perf_counter()
        fn()
        sync()
        est_ms = (time.perf_counter() - t1) * 1e3
        n_warm += 1
        # Under a cap, one warm-up call is enough once the next one would eat into the samples' share.
        if max_s > 0 and time.perf_counter() - start + (MIN_REDUCED_SAMPLES + 1) * est_ms / 1e3 > max_s:
            break
    warmup_ms = (time.perf_counter() - t0) * 1e3
    note = ""
    if regime == "cudagraph":  # the warm step, captured once; its replays are what is timed
        assert api is not None
        fn, capture_ms = capture(fn, api)
        note = f" (graph replays; captured in {capture_ms:.0f} ms)"
    budget_s = max(min_time_s, min_samples * est_ms / 1e3 * 1.1)
    nthreads = threads if threads is not None else torch.get_num_threads()  # what the timed calls run with
    if max_s > 0:
        left_s = max_s - (time.perf_counter() - start)
        if budget_s > left_s:  # what is asked for does not fit: single calls, as many as fit, at least 3
            n = max(MIN_REDUCED_SAMPLES, min(min_samples, int(left_s / (est_ms / 1e3))))
            samples = _single_calls(fn, sync, n, threads)
            method = (f"{regime}{note}: {n} single calls, threads={nthreads} "
                      f"(reduced to fit --max-config-s {max_s:g})")
            return Timing(samples, first_ms, warmup_ms, method, 1, summarize(samples), reduced=True, regime=regime,
                          total_ms=sum(samples), calls=n)

    if cuda:
        assert api is not None
        if regime == "flushed":
            cs = flushed(fn, api, budget_s, min_samples)
            api.release()
        else:
            cs = back_to_back(fn, api, budget_s, min_samples, est_ms, what=regime + note)
        return Timing(cs.samples_ms, first_ms, warmup_ms, cs.method, cs.loops, summarize(cs.samples_ms),
                      regime=regime, total_ms=cs.total_ms, calls=cs.calls)
    else:
        from torch.utils.benchmark import Timer

        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=nthreads)
        m = timer.blocked_autorange(min_run_time=budget_s)
        samples = [t * 1e3 for t in m.times]  # each is the mean of one block of number_per_run calls
        loops = m.number_per_run
        total_ms, calls = sum(samples) * loops, len(samples) * loops
        while len(samples) < min_samples:  # a very long call: top up with single-call blocks
            samples += [t * 1e3 for t in timer.timeit(1).times]
            total_ms, calls = total_ms + samples[-1], calls + 1
        method = f"back-to-back: torch.utils.benchmark.Timer.blocked_autorange(threads={nthreads})"
    return Timing(samples, first_ms, warmup_ms, method, loops, summarize(samples), total_ms=total_ms, calls=calls)


def _single_calls(fn: Callable[[], Any], sync: Callable[[], None], n: int, threads: int | None) -> list[float]:
    """``n`` calls timed one by one (with the thread count set, as the Timer would)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
    return out

