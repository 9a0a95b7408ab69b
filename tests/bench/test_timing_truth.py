"""bench.timing / bench.cuda_timing checked against a clock the test owns (issue 23, the `timing` mutation group).

Every timed call advances a fake clock by a cost the test chooses, and both modules' ``time.perf_counter`` (and
torch's Timer, through its ``timer=`` argument) read that clock; the fake CUDA events read it too. So each figure
(first call, warm-up, budget, sample count, samples, totals, the threads the timed calls ran with, the method
string) has one exact expected value, computed here from the costs and the documented rules, not from the code.
Costs are chosen dyadic (62.5 ms = 1/16 s, ...) so that comparisons at a boundary ("warm-up until warmup_s has
passed", "a budget that exactly fits") are exact in floating point. The clock starts at 1024 s, so that a
difference of two readings cannot be mistaken for their sum.

:class:`bench.cuda_timing.CudaApi` itself is checked against a recording stand-in for ``torch.cuda``: the calls it
makes, in order, with the device it was given.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.benchmark
from fake_cuda import FakeApi, _Event

from bench import cuda_timing as ct
from bench import timing
from bench.timing import NOISE_IQR, OverConfigBudget, Timing, summarize, time_fn

START_MS = 1024_000.0  # the fake wall clock's first reading: 1024 s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A clock in ms that only the fake calls advance; ``perf_counter`` (s) of both modules and the Timer read it."""
    clk = SimpleNamespace(now=START_MS, idle_reads=0)
    fake_time = SimpleNamespace(perf_counter=lambda: clk.now / 1e3)
    monkeypatch.setattr(timing, "time", fake_time)
    monkeypatch.setattr(ct, "time", fake_time)

    def timer_clock() -> float:
        # The Timer reads its clock 10 times (its overhead estimate) plus once per block edge between calls. A Timer
        # whose statement never calls fn would read a clock that never moves and grow its blocks forever: fail.
        clk.idle_reads += 1
        if clk.idle_reads > 12:
            raise RuntimeError("the Timer reads a clock no call advances: it is not timing fn")
        return clk.now / 1e3

    monkeypatch.setattr(torch.utils.benchmark, "Timer",
                        functools.partial(torch.utils.benchmark.Timer, timer=timer_clock))
    return clk


@pytest.fixture
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Step:
    """The timed function: call ``i`` (from 1) costs ``cost(i)`` ms of the clock; records the threads it ran with."""

    LIMIT = 20_000  # a correct timing of these costs makes a few thousand calls at most; a runaway loop fails fast

    def __init__(self, clk: SimpleNamespace, cost: Callable[[int], float], log: list[str] | None = None) -> None:
        self.clk, self.cost, self.log = clk, cost, log
        self.n = 0
        self.threads: list[int] = []

    def __call__(self) -> None:
        self.n += 1
        if self.n > self.LIMIT:
            raise RuntimeError("runaway loop: more calls than any correct timing of these costs makes")
        self.clk.now += self.cost(self.n)
        self.clk.idle_reads = 0
        self.threads.append(torch.get_num_threads())
        if self.log is not None:
            self.log.append("call")


def _api(clk: SimpleNamespace, capture_ms: float = 0.0) -> FakeApi:
    """A fake CUDA API on the test's clock (its events read it); a capture costs ``capture_ms``."""
    class Api(FakeApi):
        def capture(self, fn: Callable[[], Any]) -> Callable[[], None]:
            self.clock.now += capture_ms
            return super().capture(fn)

    api = Api(call_ms=0.0, flush_ms=0.0, launch_ms=0.0)
    api.clock = clk  # type: ignore[assignment]
    return api


def test_a_first_call_over_the_cap_raises_with_its_own_time(clock: SimpleNamespace) -> None:
    fn = Step(clock, lambda i: 500.0)
    with pytest.raises(OverConfigBudget) as e:
        time_fn(fn, "cpu", max_s=0.4996)
    assert e.value.first_call_ms == pytest.approx(500.0, rel=1e-12)
    assert str(e.value) == "first call took 0.5 s, over --max-config-s 0.4996"
    assert fn.n == 1  # nothing ran after the first call
    with pytest.raises(OverConfigBudget, match=r"^first call took 2\.0 s, over --max-config-s 1\.5$"):
        time_fn(Step(clock, lambda i: 1950.5), "cpu", max_s=1.5)  # 1.9505 s, to one decimal
    # A first call of exactly the cap is not over it: the config is measured (reduced: nothing is left).
    fn = Step(clock, lambda i: 500.0)
    t = time_fn(fn, "cpu", warmup_s=0.0, max_s=0.5)
    assert t.reduced and t.first_call_ms == pytest.approx(500.0, rel=1e-12) and len(t.samples_ms) == 3


def test_warm_up_runs_until_warmup_s_has_passed_and_at_least_two_calls(clock: SimpleNamespace) -> None:
    api = _api(clock)
    for warmup_s, warm_calls in [(0.25, 4), (0.0, 2)]:  # 62.5 ms calls: 4 reach 0.25 s exactly
        fn = Step(clock, lambda i: 62.5, api.log)
        t = time_fn(fn, "cuda", api=api, warmup_s=warmup_s, min_time_s=0.0, min_samples=1)
        assert fn.n - 1 - t.calls == warm_calls, (warmup_s, fn.n, t.calls)
        assert t.warmup_ms == pytest.approx(62.5 * warm_calls, rel=1e-12)
        assert t.first_call_ms == pytest.approx(62.5, rel=1e-12)


def test_the_estimate_is_the_last_warm_up_call(clock: SimpleNamespace) -> None:
    # First call 400 ms (compile), first warm-up call 300 ms, then 0.4999 ms: a sample must span SAMPLE_MS = 2 ms,
    # so loops = ceil(2 / 0.4999) = 5 (an estimate 0.1% higher would give 4).
    api = _api(clock)
    fn = Step(clock, lambda i: {1: 400.0, 2: 300.0}.get(i, 0.4999))
    t = time_fn(fn, "cuda", api=api, warmup_s=0.0, min_time_s=0.0, min_samples=3)
    assert t.inner_loops == 5 and len(t.samples_ms) == 3 and t.calls == 15
    assert t.samples_ms == pytest.approx([0.4999] * 3, rel=1e-9)
    assert t.first_call_ms == pytest.approx(400.0, rel=1e-12)
    assert t.warmup_ms == pytest.approx(300.4999, rel=1e-12)
    assert api.log.count("sync") == 3  # the first call and both warm-up calls waited for the GPU


def test_defaults_warm_up_0_2_s_measure_1_s_with_5_samples_and_no_cap(clock: SimpleNamespace) -> None:
    api = _api(clock)
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, "cuda", api=api)
    # warm-up: 4 calls (250 ms >= 0.2 s); budget max(1.0 s, 5 * 62.5 ms * 1.1): 16 one-call samples = 1 s exactly
    assert t.warmup_ms == pytest.approx(250.0, rel=1e-12)
    assert not t.reduced and t.inner_loops == 1 and len(t.samples_ms) == 16
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, "cuda", api=api, min_time_s=0.0)
    # budget 5 * 62.5 ms * 1.1 = 343.75 ms: 6 samples (375 ms) reach it
    assert len(t.samples_ms) == 6
    # the default device is the CPU (torch's Timer)
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, warmup_s=0.0, min_time_s=0.0, min_samples=1)
    assert t.method.startswith("back-to-back: torch.utils.benchmark.Timer.blocked_autorange(")
    assert t.samples_ms == pytest.approx([62.5, 62.5], rel=1e-9)


def test_the_budget_is_min_samples_estimated_calls_plus_10_percent(clock: SimpleNamespace) -> None:
    api = _api(clock)
    # 62.5 ms calls, 8 samples: budget 8 * 62.5 ms * 1.1 = 550 ms, so 9 samples (562.5 ms) reach it.
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, "cuda", api=api, warmup_s=0.0, min_time_s=0.0, min_samples=8)
    assert len(t.samples_ms) == 9 and not t.reduced
    # Under a cap: first call + 2 warm-up calls = 187.5 ms; the rest must hold the 550 ms (to 0.05%) or it is reduced.
    for scale, reduced in [(1.0005, False), (0.9995, True)]:
        fn = Step(clock, lambda i: 62.5)
        t = time_fn(fn, "cuda", api=api, warmup_s=0.0, min_time_s=0.0, min_samples=8,
                    max_s=0.1875 + 0.55 * scale)
        assert t.reduced is reduced, scale
    # A budget that exactly fits what is left (min_time_s 0.5 s = max_s 0.6875 s - 187.5 ms) is measured as asked.
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, "cuda", api=api, warmup_s=0.0, min_time_s=0.5, min_samples=1, max_s=0.6875)
    assert not t.reduced and len(t.samples_ms) == 8


@pytest.mark.usefixtures("one_thread")
def test_a_capped_config_is_timed_in_single_calls_that_fit(clock: SimpleNamespace) -> None:
    # 62.5 ms calls, cap 0.5 s: first call + 2 warm-up calls leave 312.5 ms = 5 calls (10 asked for).
    fn = Step(clock, lambda i: 62.5)
    after_first: list[int] = []  # the calls made when after_first runs: only the first
    t = time_fn(fn, "cpu", threads=2, warmup_s=0.0, min_time_s=1.0, min_samples=10, max_s=0.5,
                after_first=lambda: after_first.append(fn.n))
    assert after_first == [1]
    assert t.reduced and t.samples_ms == pytest.approx([62.5] * 5, rel=1e-9) and fn.n == 8
    assert t.calls == 5 and t.total_ms == pytest.approx(312.5, rel=1e-9) and t.per_call_ms == pytest.approx(62.5)
    assert t.inner_loops == 1 and t.regime == "back-to-back" and t.stats["n"] == 5
    assert t.median_ms == pytest.approx(62.5) and t.stats["p20"] == pytest.approx(62.5)
    assert t.first_call_ms == pytest.approx(62.5, rel=1e-12) and t.warmup_ms == pytest.approx(125.0, rel=1e-12)
    assert t.method == "back-to-back: 5 single calls, threads=2 (reduced to fit --max-config-s 0.5)"
    # the timed calls ran with the requested threads, the first call and warm-up with the caller's; restored after
    assert fn.threads == [1, 1, 1, 2, 2, 2, 2, 2] and torch.get_num_threads() == 1
    # without a thread count: the caller's, and the method says so
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, "cpu", warmup_s=0.0, min_time_s=1.0, min_samples=10, max_s=0.5)
    assert "threads=1 (reduced" in t.method and set(fn.threads) == {1}


def test_a_capped_cuda_graph_config_says_its_regime_and_syncs_every_call(clock: SimpleNamespace) -> None:
    # first call + 2 warm-up calls (187.5 ms) + a 125 ms capture leave 187.5 ms: 3 replays of 62.5 ms
    api = _api(clock, capture_ms=125.0)
    fn = Step(clock, lambda i: 62.5, api.log)
    t = time_fn(fn, "cuda", api=api, regime="cudagraph", warmup_s=0.0, min_time_s=1.0, min_samples=10,
                max_s=0.5)
    assert t.reduced and t.regime == "cudagraph" and api.captures == 1
    assert t.method == (f"cudagraph (graph replays; captured in 125 ms): 3 single calls, "
                        f"threads={torch.get_num_threads()} (reduced to fit --max-config-s 0.5)")
    assert t.samples_ms == pytest.approx([62.5] * 3, rel=1e-9)
    assert api.log == ["call", "sync"] * 6  # first, 2 warm-up, 3 replays: each waited for


@pytest.mark.parametrize(("max_s", "warm_calls"), [(0.5, 4), (0.4999, 3)])
def test_under_a_cap_warm_up_stops_before_it_eats_the_samples_share(clock: SimpleNamespace, max_s: float,
                                                                       warm_calls: int) -> None:
    # 62.5 ms calls, warmup_s 10 s: warm-up stops once (elapsed + 4 more calls) > max_s. With max_s 0.5 s: after
    # the 3rd warm-up call 250 + 250 ms is not over; after the 4th it is. With 0.4999 s the 3rd already is.
    fn = Step(clock, lambda i: 62.5)
    t = time_fn(fn, "cpu", warmup_s=10.0, min_time_s=1.0, min_samples=10, max_s=max_s)
    assert t.warmup_ms == pytest.approx(62.5 * warm_calls, rel=1e-12)
    assert t.reduced and len(t.samples_ms) == 3 and fn.n == 1 + warm_calls + 3


@pytest.mark.usefixtures("one_thread")
def test_the_cpu_timer_samples_blocks_and_counts_every_call(clock: SimpleNamespace) -> None:
    # 2^-17 s calls (7.6 us) and a 2^-6 s budget: the Timer's block is 10 calls (one call is under
    # budget/1000); each sample is one block's mean, and the total is every timed call.
    c_ms = 1e3 * 2.0**-17
    fn = Step(clock, lambda i: c_ms)
    t = time_fn(fn, "cpu", threads=2, warmup_s=0.0, min_time_s=2.0**-6, min_samples=5)
    assert t.inner_loops == 10 and len(t.samples_ms) >= 5
    assert t.samples_ms == pytest.approx([c_ms] * len(t.samples_ms), rel=1e-9)
    assert t.calls == 10 * len(t.samples_ms) and t.total_ms == pytest.approx(t.calls * c_ms, rel=1e-9)
    assert t.per_call_ms == pytest.approx(c_ms, rel=1e-9)
    assert fn.threads[-t.calls:] == [2] * t.calls and torch.get_num_threads() == 1
    assert t.method == "back-to-back: torch.utils.benchmark.Timer.blocked_autorange(threads=2)"


def test_the_cpu_timer_tops_up_with_single_calls_when_calls_slow_down(clock: SimpleNamespace) -> None:
    # Warm-up calls 100 ms, then calls of 1000 + i ms: the 550 ms budget holds one block of one call (call 5; call
    # 4 sized the block), so 4 top-ups reach 5 samples. Each top-up is Timer.timeit(1): 2 untimed warm-up calls,
    # then one timed call (8, 11, 14, 17). Each sample is one call, and the total is exactly those 5 calls.
    fn = Step(clock, lambda i: 100.0 if i <= 3 else 1000.0 + i)
    t = time_fn(fn, "cpu", warmup_s=0.0, min_time_s=0.0, min_samples=5)
    assert t.samples_ms == pytest.approx([1005.0, 1008.0, 1011.0, 1014.0, 1017.0], rel=1e-9) and fn.n == 17
    assert t.calls == 5 and t.total_ms == pytest.approx(5055.0, rel=1e-9) and t.inner_loops == 1
    assert t.first_call_ms == pytest.approx(100.0, rel=1e-12) and t.warmup_ms == pytest.approx(200.0, rel=1e-12)


def test_flushed_without_triton_flushes_before_each_call_and_releases_the_buffer(
        clock: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton.testing", None)  # `from triton.testing import do_bench` fails
    api = _api(clock)
    api.flush_ms = 0.25  # outside the event pairs: not in the samples
    fn = Step(clock, lambda i: 0.5, api.log)
    t = time_fn(fn, "cuda", api=api, regime="flushed", warmup_s=0.0, min_time_s=0.0, min_samples=4)
    assert t.samples_ms == pytest.approx([0.5] * 4, rel=1e-9) and t.inner_loops == 1
    assert t.calls == 4 and t.total_ms == pytest.approx(2.0, rel=1e-9) and api.flushes == 4
    assert api.log[-10:] == ["flush", "call"] * 4 + ["sync", "release"]
    assert t.method == "flushed: cuda events per call, 256 MB L2 flush before each (no Triton)"
    assert len(ct.flushed(fn, api, 0.0, 0).samples_ms) == 1  # at least one sample


def test_flushed_asks_do_bench_for_one_warm_up_call_and_the_budget_in_ms() -> None:
    seen: list[dict[str, Any]] = []

    def do_bench(fn: Callable[[], Any], **kw: Any) -> list[float]:
        seen.append(kw)
        return [0.5] * 4

    api = FakeApi()
    for budget_s in (0.0, 1.0):
        cs = ct.flushed(api.step, api, budget_s, 4, do_bench=do_bench)
        assert cs.method == "flushed: triton.testing.do_bench (cuda events per call, L2 flushed before each)"
        assert cs.loops == 1 and cs.calls == 4 and cs.total_ms == pytest.approx(2.0)
    assert seen == [{"warmup": 1, "rep": 1, "return_mode": "all"}, {"warmup": 1, "rep": 1000, "return_mode": "all"}]


def test_back_to_back_samples_until_the_budget_has_passed(clock: SimpleNamespace) -> None:
    # 15.625 ms calls (over SAMPLE_MS: one call per sample), budget 62.5 ms: 4 samples reach it exactly.
    api = _api(clock)
    fn = Step(clock, lambda i: 15.625)
    cs = ct.back_to_back(fn, api, budget_s=0.0625, min_samples=1, est_ms=15.625)
    assert cs.loops == 1 and len(cs.samples_ms) == 4
    assert cs.method == "back-to-back: cuda events around 1 consecutive calls per sample"


def test_capture_reports_its_wall_time_and_graph_flushed_defaults_to_10_reps(clock: SimpleNamespace) -> None:
    api = _api(clock, capture_ms=125.0)
    fn = Step(clock, lambda i: 0.5)
    replay, capture_ms = ct.capture(fn, api)
    assert capture_ms == pytest.approx(125.0, rel=1e-12)
    replay()
    assert fn.n == 1
    assert len(ct.graph_flushed_per_call(api.step, api, n=2)) == 10


class _Stream:
    def __init__(self, name: str, log: list[tuple[Any, ...]]) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: _Stream) -> None:
        self.log.append(("wait_stream", self.name, other.name))


class _Graph:
    name = "graph"

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def replay(self) -> None:
        self.log.append(("replay",))


class _RecordingCuda:
    """``torch.cuda`` as :class:`CudaApi` uses it: every call appended to ``log`` with its arguments."""

    def __init__(self, clk: SimpleNamespace) -> None:
        self.clk = clk
        self.log: list[tuple[Any, ...]] = []

    def Event(self, **kw: Any) -> _Event:  # noqa: N802 (torch's name)
        self.log.append(("Event", kw))
        return _Event(self.clk)  # type: ignore[arg-type]

    def synchronize(self, device: Any = "unset") -> None:
        self.log.append(("synchronize", device))

    def Stream(self, device: Any = "unset") -> _Stream:  # noqa: N802
        self.log.append(("Stream", device))
        return _Stream("side", self.log)

    def current_stream(self, device: Any = "unset") -> _Stream:
        self.log.append(("current_stream", device))
        return _Stream("current", self.log)

    @contextlib.contextmanager
    def stream(self, s: _Stream) -> Iterator[None]:
        self.log.append(("stream", s.name))
        yield
        self.log.append(("stream exit", s.name))

    def CUDAGraph(self) -> _Graph:  # noqa: N802
        self.log.append(("CUDAGraph",))
        return _Graph(self.log)

    @contextlib.contextmanager
    def graph(self, g: _Graph) -> Iterator[None]:
        self.log.append(("graph", g.name))
        yield
        self.log.append(("graph exit", g.name))


class _Buffer:
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def zero_(self) -> None:
        self.log.append(("zero_",))


class _RecordingTorch:
    """``torch`` with a recording ``cuda`` and ``empty``; everything else is torch's."""

    def __init__(self, cuda: _RecordingCuda) -> None:
        self.cuda = cuda

    def empty(self, *size: Any, **kw: Any) -> _Buffer:
        self.cuda.log.append(("empty", size, kw))
        return _Buffer(self.cuda.log)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@pytest.fixture
def cuda_log(monkeypatch: pytest.MonkeyPatch, clock: SimpleNamespace) -> list[tuple[Any, ...]]:
    fake = _RecordingCuda(clock)
    monkeypatch.setattr(ct, "torch", _RecordingTorch(fake))
    return fake.log


def test_cuda_api_makes_the_cuda_calls_on_its_device(cuda_log: list[tuple[Any, ...]]) -> None:
    assert ct.CudaApi().device == torch.device("cuda")
    dev = torch.device("cuda", 1)
    api = ct.CudaApi("cuda:1")
    assert api.device == dev
    api.event()
    api.sync()
    assert cuda_log == [("Event", {"enable_timing": True}), ("synchronize", dev)]
    cuda_log.clear()
    api.flush()
    api.flush()  # the buffer is allocated once
    api.release()
    api.flush()  # and again after a release
    alloc = ("empty", (ct.FLUSH_BYTES,), {"dtype": torch.int8, "device": dev})
    assert cuda_log == [alloc, ("zero_",), ("zero_",), alloc, ("zero_",)]
    cuda_log.clear()
    replay = api.capture(lambda: cuda_log.append(("fn",)))
    replay()
    assert cuda_log == [
        ("Stream", dev), ("current_stream", dev), ("wait_stream", "side", "current"),  # side stream after the work
        ("stream", "side"), ("fn",), ("fn",), ("fn",), ("stream exit", "side"),  # three warm-up calls on it
        ("current_stream", dev), ("wait_stream", "current", "side"),
        ("CUDAGraph",), ("graph", "graph"), ("fn",), ("graph exit", "graph"),  # one call captured
        ("synchronize", dev), ("replay",)]  # what comes back is the graph's replay


def test_time_fn_on_cuda_without_an_api_uses_the_device_it_was_given(clock: SimpleNamespace,
                                                                     cuda_log: list[tuple[Any, ...]]) -> None:
    fn = Step(clock, lambda i: 1.953125)  # 2^-9 s: two calls per 2 ms sample
    t = time_fn(fn, "cuda:1", warmup_s=0.0, min_time_s=0.0, min_samples=2)
    assert t.samples_ms == pytest.approx([1.953125] * 2, rel=1e-9) and t.inner_loops == 2
    syncs = [e for e in cuda_log if e[0] == "synchronize"]
    assert syncs == [("synchronize", torch.device("cuda", 1))] * 3  # first call and 2 warm-up calls


def test_summary_statistics_at_their_edges() -> None:
    one = summarize([5.0])
    assert one == {"p50": 5.0, "p20": 5.0, "p80": 5.0, "mean": 5.0, "std": 0.0, "min": 5.0, "max": 5.0, "n": 1.0,
                   "iqr_over_median": 0.0}
    two = summarize([3.0, 1.0])  # numpy's linear interpolation between the two
    assert (two["p20"], two["p50"], two["p80"]) == pytest.approx((1.4, 2.0, 2.6))
    assert (two["min"], two["max"], two["std"]) == pytest.approx((1.0, 3.0, 2**0.5))
    assert two["iqr_over_median"] == pytest.approx((2.5 - 1.5) / 2.0)
    assert summarize([0.0, 0.0, 0.0])["iqr_over_median"] == 0.0  # a zero median: no ratio, not a division error
    assert summarize([0.1, 0.4, 0.2])["iqr_over_median"] == pytest.approx((0.3 - 0.15) / 0.2)  # sub-ms medians too
    x = [4.0, 1.0, 9.0, 2.0, 7.0, 3.0]
    s = summarize(x)
    assert s["min"] == 1.0 and s["max"] == 9.0
    q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    assert s["iqr_over_median"] == pytest.approx((q75 - q25) / q50)


def test_timing_figures_and_the_noise_rule() -> None:
    def timing_with(**kw: Any) -> Timing:
        return Timing([1.0], 1.0, 0.0, "m", **kw)

    assert timing_with(stats={"mean": 3.0}).per_call_ms == 3.0  # no totals: the mean
    assert timing_with(stats={"mean": 3.0}, total_ms=10.0, calls=4).per_call_ms == 2.5
    assert not timing_with(stats={"iqr_over_median": NOISE_IQR}).noisy  # noisy means over 10%
    assert timing_with(stats={"iqr_over_median": 0.1001}).noisy


def test_regime_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"^unknown timing regime 'warm'; valid: back-to-back, flushed, cudagraph$"):
        time_fn(lambda: None, "cpu", regime="warm")
    with pytest.raises(ValueError, match=r"^the flushed regime needs CUDA; the CPU has back-to-back only$"):
        time_fn(lambda: None, "cpu", regime="flushed")
