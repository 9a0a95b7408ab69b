"""The CUDA timing regimes' loop logic on the CPU: a fake CUDA API whose clock advances by what the timed function
says it costs, so every figure the regimes produce is known exactly. (On a GPU: tests/bench/test_gpu_regimes.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from fake_cuda import FakeApi

from bench import cuda_timing as ct
from bench.kernelbench import microbench
from bench.timing import time_fn


def test_back_to_back_loops_fill_a_sample_and_throughput_comes_from_the_total() -> None:
    api = FakeApi(call_ms=0.25, launch_ms=0.0)
    cs = ct.back_to_back(api.step, api, budget_s=0.0, min_samples=7, est_ms=0.25)
    assert cs.loops == 8  # ceil(SAMPLE_MS 2.0 / 0.25)
    assert len(cs.samples_ms) == 7 and cs.samples_ms == pytest.approx([0.25] * 7)
    assert cs.calls == 56 and cs.total_ms == pytest.approx(14.0)
    assert api.log.count("call") == 56 and "flush" not in api.log
    assert "back-to-back" in cs.method and "8 consecutive calls" in cs.method


def test_flushed_tops_up_when_do_bench_returns_too_few_and_says_so() -> None:
    api = FakeApi(call_ms=3.0, launch_ms=0.0)
    seen: dict[str, Any] = {}

    def do_bench(fn: Callable[[], Any], warmup: int, rep: int, return_mode: str) -> list[float]:
        seen.update(rep=rep, mode=return_mode)
        return [3.0, 3.0]  # a call longer than rep: do_bench's own loop gave two samples

    cs = ct.flushed(api.step, api, budget_s=0.005, min_samples=5, do_bench=do_bench)
    assert seen == {"rep": 5, "mode": "all"}
    assert len(cs.samples_ms) == 5 and cs.samples_ms[2:] == pytest.approx([3.0] * 3)
    assert api.flushes == 3 and api.log[:3] == ["flush", "call", "flush"]  # each topped-up call flushed first
    assert "topped up with 3 flushed event pairs" in cs.method and "do_bench" in cs.method
    enough = ct.flushed(api.step, api, 0.005, 2, do_bench=do_bench)
    assert "topped up" not in enough.method and len(enough.samples_ms) == 2


def test_graph_flushed_per_call_subtracts_the_flush_only_graph() -> None:
    api = FakeApi(call_ms=0.04, flush_ms=0.3, launch_ms=0.5)
    per_call = ct.graph_flushed_per_call(api.step, api, n=10, reps=4)
    assert api.captures == 2
    # in the graph: no launch overhead; the flushes (3 ms per replay) are subtracted
    assert per_call == pytest.approx([0.04] * 4)


@pytest.mark.parametrize("regime", ["back-to-back", "flushed", "cudagraph"])
def test_time_fn_on_cuda_runs_the_named_regime(regime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(call_ms=0.5, launch_ms=0.1)
    monkeypatch.setattr("triton.testing.do_bench", lambda fn, warmup, rep, return_mode: [
        (api.flush(), fn(), 0.6)[-1] for _ in range(6)])
    t = time_fn(api.step, "cuda", warmup_s=0.0, min_time_s=0.0, min_samples=5, regime=regime, api=api)
    assert t.regime == regime and t.method.startswith(regime) and len(t.samples_ms) >= 5
    if regime == "cudagraph":  # replays: the launch overhead is gone
        assert api.captures == 1 and t.median_ms == pytest.approx(0.5) and "captured in" in t.method
    elif regime == "back-to-back":
        assert api.captures == 0 and t.median_ms == pytest.approx(0.6) and t.per_call_ms == pytest.approx(0.6)
        assert t.calls == t.inner_loops * len(t.samples_ms)
    else:
        assert api.flushes >= 6 and "release" in api.log  # the flush buffer is dropped before memory is measured


def test_cpu_has_back_to_back_only() -> None:
    with pytest.raises(ValueError, match="needs CUDA"):
        time_fn(lambda: None, "cpu", regime="cudagraph")
    with pytest.raises(ValueError, match="valid: back-to-back, flushed, cudagraph"):
        time_fn(lambda: None, "cpu", regime="warm")
    t = time_fn(lambda: torch.ones(8).sum(), "cpu", warmup_s=0.0, min_time_s=0.01)
    assert t.regime == "back-to-back" and t.calls >= len(t.samples_ms) and t.total_ms > 0


def test_kernel_rows_get_flushed_warm_and_graph_figures() -> None:
    api = FakeApi(call_ms=0.02, flush_ms=0.06, launch_ms=0.01)

    def do_bench(fn: Callable[[], Any], warmup: float, rep: float, return_mode: str) -> list[float]:
        return [(api.flush(), fn(), 0.05)[-1] for _ in range(10)]  # cold L2: slower than warm

    res = microbench._time(api.step, warmup_ms=1, rep_ms=2, api=api, do_bench=do_bench)
    assert res["p50_us"] == pytest.approx(50.0) and res["n_samples"] == 10
    assert res["warm_p50_us"] == pytest.approx(30.0)  # the call plus its launch gap
    assert res["graph_p50_us"] == pytest.approx(20.0) and "calls per graph" in res["graph_note"]

    def no_capture(fn: Callable[[], Any]) -> Callable[[], None]:
        raise RuntimeError("operation not permitted when stream is capturing")

    api.capture = no_capture  # type: ignore[method-assign]
    res = microbench._time(api.step, warmup_ms=1, rep_ms=2, api=api, do_bench=do_bench)
    assert res["graph_p50_us"] is None and res["graph_note"].startswith("not capturable: RuntimeError")
    assert res["warm_p50_us"] == pytest.approx(30.0)  # the other figures stand
