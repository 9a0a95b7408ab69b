"""The CUDA timing regimes, one function each, so a row can say which one produced its numbers.

* ``back-to-back`` (:func:`back_to_back`): the steps run one after another as in a training or serving loop; each
  sample is a short loop of ``loops`` calls between two CUDA events (one sync per sample), divided by ``loops``. The
  CPU launches the next step while the GPU runs the current one, so a launch-bound step shows its launch gaps and a
  GPU-bound step its kernel time; caches stay warm (weights of a small model sit in L2). This is what timm's
  benchmark and TorchBench report. Throughput is taken from the loops' total time (all calls / all time).
* ``flushed`` (:func:`flushed`): ``triton.testing.do_bench`` -- the 256 MB buffer zeroed before every call (outside
  the events), one call per event pair: a cold-L2 figure. The CPU launches the call while the GPU is still zeroing,
  which hides launch overhead. When ``do_bench`` returns fewer samples than asked for (a call longer than its
  ``rep``), the samples are *topped up* with the same flushed event pairs and the method string says so -- the timer
  never switches method silently.
* ``cudagraph`` (:func:`capture`, then :func:`back_to_back` on the replay): the warm step captured once in a CUDA graph
  and replayed back to back: no Python or launch overhead, what ``mode="reduce-overhead"`` aims at.
* kernels: :func:`graph_flushed_per_call` captures ``n`` calls each preceded by an L2 flush *inside* the graph, and a
  graph of the ``n`` flushes alone; the per-call figure is the difference over ``n`` (cold L2, no launch gaps).

Every function takes an ``api`` with the few CUDA calls it needs (:class:`CudaApi`, torch.cuda by default), so the
loop logic is tested on the CPU with a fake clock (``tests/bench/test_cuda_timing.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CudaApi", "back_to_back", "flushed", "capture", "graph_flushed_per_call", "FLUSH_BYTES", "SAMPLE_MS"]

FLUSH_BYTES = 256 * 2**20  # do_bench's buffer: larger than any GPU's L2 (H100/H200 50 MB, B200 126 MB)
SAMPLE_MS = 2.0  # a back-to-back sample spans at least this long: event resolution (~0.5 us) is then negligible


class CudaApi:
    """The CUDA calls the regimes use (events, sync, a flush buffer, graph capture); tests substitute a fake."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        self._flush_buf: torch.Tensor | None = None

    def event(self) -> Any:
        return torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def flush(self) -> None:
        """Evict the L2: zero a buffer larger than it (as do_bench does)."""
        if self._flush_buf is None:
            self._flush_buf = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=self.device)
        self._flush_buf.zero_()

    def release(self) -> None:
        """Drop the flush buffer (it must not count in the row's reserved memory)."""
        self._flush_buf = None

    def capture(self, fn: Callable[[], Any]) -> Callable[[], None]:
        """Capture ``fn`` in a CUDA graph after three calls on a side stream (the capture rules: warm-up on a
        non-default stream, no host sync inside); returns the graph's ``replay``."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        self.sync()
        return graph.replay


@dataclass
class CudaSamples:
    samples_ms: list[float]  # per call
    loops: int  # calls per sample
    method: str
    total_ms: float = 0.0  # all timed calls together (throughput = calls / total)
    calls: int = 0


def _loops_for(est_ms: float) -> int:
    return max(1, math.ceil(SAMPLE_MS / max(est_ms, 1e-4)))


def back_to_back(fn: Callable[[], Any], api: CudaApi, budget_s: float, min_samples: int, est_ms: float,
                 what: str = "back-to-back") -> CudaSamples:
    """Samples of ``loops`` consecutive calls between two events (``loops`` so that a sample spans ``SAMPLE_MS``),
    until ``budget_s`` has passed and at least ``min_samples`` samples exist."""
    loops = _loops_for(est_ms)
    samples: list[float] = []
    total = 0.0
    t0 = time.perf_counter()
    while len(samples) < min_samples or time.perf_counter() - t0 < budget_s:
        start, end = api.event(), api.event()
        start.record()
        for _ in range(loops):
            fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        total += ms
        samples.append(ms / loops)
    return CudaSamples(samples, loops, f"{what}: cuda events around {loops} consecutive calls per sample",
                       total, loops * len(samples))


def _flushed_pairs(fn: Callable[[], Any], api: CudaApi, n: int) -> list[float]:
    """``n`` calls, each after an L2 flush, each between its own event pair (do_bench's loop)."""
    starts = [api.event() for _ in range(n)]
    ends = [api.event() for _ in range(n)]
    for i in range(n):
        api.flush()
        starts[i].record()
        fn()
        ends[i].record()
    api.sync()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def flushed(fn: Callable[[], Any], api: CudaApi, budget_s: float, min_samples: int,
            do_bench: Callable[..., Any] | None = None) -> CudaSamples:
    """Cold-L2 samples from ``triton.testing.do_bench(return_mode="all")``, topped up with the same flushed event
    pairs when it returns fewer than ``min_samples`` (said in the method). Without Triton, the flushed pairs alone."""
    if do_bench is None:
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
    if do_bench is None:
        n = max(min_samples, 1)
        samples = _flushed_pairs(fn, api, n)
        method = f"flushed: cuda events per call, {FLUSH_BYTES >> 20} MB L2 flush before each (no Triton)"
    else:
        samples = [float(s) for s in do_bench(fn, warmup=1, rep=max(1, int(budget_s * 1e3)), return_mode="all")]
        method = "flushed: triton.testing.do_bench (cuda events per call, L2 flushed before each)"
        if len(samples) < min_samples:
            extra = min_samples - len(samples)
            samples += _flushed_pairs(fn, api, extra)
            method += f"; topped up with {extra} flushed event pairs to reach {min_samples} samples"
    return CudaSamples(samples, 1, method, sum(samples), len(samples))


def capture(fn: Callable[[], Any], api: CudaApi) -> tuple[Callable[[], None], float]:
    """The graph replay of ``fn`` and the capture's wall time (ms)."""
    t0 = time.perf_counter()
    replay = api.capture(fn)
    return replay, (time.perf_counter() - t0) * 1e3


def graph_flushed_per_call(fn: Callable[[], Any], api: CudaApi, n: int, reps: int = 10) -> list[float]:
    """Per-call times with the L2 flushed inside a CUDA graph: a graph of ``n`` (flush, call) pairs and a graph of
    ``n`` flushes are each replayed ``reps`` times; sample ``i`` = (pair graph - flush graph) / ``n``."""
    def pairs() -> None:
        for _ in range(n):
            api.flush()
            fn()

    def flushes() -> None:
        for _ in range(n):
            api.flush()

    out = []
    g_pairs, g_flush = api.capture(pairs), api.capture(flushes)
    for _ in range(reps):
        times = []
        for g in (g_pairs, g_flush):
            start, end = api.event(), api.event()
            start.record()
            g()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        out.append(max(times[0] - times[1], 0.0) / n)
    return out
