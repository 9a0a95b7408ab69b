"""A fake CUDA API for the timing regimes (:class:`bench.cuda_timing.CudaApi`): its clock advances by what the timed
function says it costs, so every figure a regime produces is known exactly on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import cuda_timing as ct


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0  # ms of fake GPU time


class _Event:
    def __init__(self, clock: _Clock) -> None:
        self.clock, self.t = clock, None

    def record(self) -> None:
        self.t = self.clock.now

    def synchronize(self) -> None:
        """Nothing to wait for: the fake clock only advances when a fake call runs."""

    def elapsed_time(self, other: _Event) -> float:
        return other.t - self.t


class FakeApi(ct.CudaApi):
    """GPU time = ``call_ms`` per timed call + ``flush_ms`` per flush; a captured graph replays its calls with no
    launch overhead, eager calls cost ``launch_ms`` more (what a graph saves)."""

    def __init__(self, call_ms: float = 0.5, flush_ms: float = 0.2, launch_ms: float = 0.1) -> None:
        super().__init__("cpu")
        self.clock = _Clock()
        self.call_ms, self.flush_ms, self.launch_ms = call_ms, flush_ms, launch_ms
        self.flushes = 0
        self.captures = 0
        self.calls = 0
        self.log: list[str] = []
        self._in_graph = False  # True while a captured graph replays (no launch overhead)

    def event(self) -> _Event:
        return _Event(self.clock)

    def sync(self) -> None:
        self.log.append("sync")

    def flush(self) -> None:
        self.flushes += 1
        self.clock.now += self.flush_ms
        self.log.append("flush")

    def release(self) -> None:
        self.log.append("release")

    # More calls than any test's timing makes: a loop that never ends (a broken loop condition) fails the test
    # instead of hanging it.
    MAX_CALLS = 100_000

    def step(self) -> None:
        """The function being timed (eager: with its launch overhead)."""
        self.calls += 1
        if self.calls > self.MAX_CALLS:
            raise RuntimeError(f"runaway loop: over {self.MAX_CALLS} timed calls")
        self.clock.now += self.call_ms + (0.0 if self._in_graph else self.launch_ms)
        self.log.append("call")

    def capture(self, fn: Callable[[], Any]) -> Callable[[], None]:
        self.captures += 1

        def replay() -> None:
            self._in_graph = True
            try:
                fn()
            finally:
                self._in_graph = False
        return replay
