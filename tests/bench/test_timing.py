"""Timing statistics: median of a known sleep, first call excluded, sample floor, noise flag, quantiles."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from bench.timing import summarize, time_fn


def _sleeper(first_s: float, then_s: float):
    calls = {"n": 0}

    def fn() -> None:
        calls["n"] += 1
        time.sleep(first_s if calls["n"] == 1 else then_s)

    return fn, calls


def test_median_of_known_sleep_and_first_call_excluded() -> None:
    fn, calls = _sleeper(0.3, 0.02)
    t = time_fn(fn, "cpu", threads=1, warmup_s=0.05, min_time_s=0.3)
    # time.sleep overshoots by a scheduler tick at most; a few percent on 20 ms.
    assert t.median_ms == pytest.approx(20.0, rel=0.06)
    assert t.first_call_ms >= 300.0
    assert max(t.samples_ms) < 100.0, "the slow first call leaked into the samples"
    assert calls["n"] > len(t.samples_ms)  # warm-up calls happened outside the samples


def test_minimum_sample_count_even_for_slow_calls() -> None:
    fn, _ = _sleeper(0.06, 0.06)
    t = time_fn(fn, "cpu", threads=1, warmup_s=0.0, min_time_s=0.01, min_samples=5)
    assert len(t.samples_ms) >= 5
    assert t.stats["n"] == len(t.samples_ms)


def test_noise_flag() -> None:
    # 40% of calls 3x slower, at random (a strict alternation would average out inside one timing block).
    rng = random.Random(1)

    def bimodal() -> None:
        time.sleep(0.015 if rng.random() < 0.4 else 0.005)

    noisy = time_fn(bimodal, "cpu", threads=1, warmup_s=0.0, min_time_s=0.5)
    assert noisy.noisy, noisy.stats
    # 40 ms sleeps: scheduler jitter (~1 ms on a loaded 2-core machine) stays well under the 10% IQR threshold.
    steady_fn, _ = _sleeper(0.04, 0.04)
    steady = time_fn(steady_fn, "cpu", threads=1, warmup_s=0.0, min_time_s=0.4)
    assert not steady.noisy, steady.stats


def test_summary_quantiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = list(rng.lognormal(size=37))
    s = summarize(x)
    assert s["p50"] == pytest.approx(float(np.quantile(x, 0.5)))
    assert s["p20"] == pytest.approx(float(np.quantile(x, 0.2)))
    assert s["p80"] == pytest.approx(float(np.quantile(x, 0.8)))
    assert s["mean"] == pytest.approx(float(np.mean(x)))
    assert s["std"] == pytest.approx(float(np.std(x, ddof=1)))
    assert s["n"] == 37


def test_timer_runs_with_the_requested_threads() -> None:
    seen: list[int] = []
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time_fn(lambda: seen.append(torch.get_num_threads()), "cpu", threads=2, warmup_s=0.0, min_time_s=0.02)
    finally:
        torch.set_num_threads(old)
    # First call and warm-up run with the caller's threads; the timed calls (the last ones) with the requested 2
    # (torch's Timer defaults to 1 if not told).
    assert seen[-1] == 2 and seen.count(2) >= len(t.samples_ms), (seen.count(1), seen.count(2))
    assert "threads=2" in t.method


def test_warmup_absorbs_a_slow_start() -> None:
    # Calls 1-4 take 50 ms (caches, autotuning), then 2 ms. The first call is timed apart; the warm-up must run
    # for warmup_s and swallow calls 2-4, so no sample sees a slow call.
    calls = {"n": 0}

    def fn() -> None:
        calls["n"] += 1
        time.sleep(0.05 if calls["n"] <= 4 else 0.002)

    t = time_fn(fn, "cpu", threads=1, warmup_s=0.2, min_time_s=0.05)
    assert t.warmup_ms >= 200.0
    assert max(t.samples_ms) < 25.0, t.samples_ms
