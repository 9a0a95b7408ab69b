"""The timing regimes and the memory pass on a real GPU (marked ``gpu``: skipped without CUDA; the loop logic is
tested on the CPU with a fake clock in test_cuda_timing.py)."""

from __future__ import annotations

import pytest

from bench.config import TIMERS, Config
from bench.runner import RunOptions, measure

pytestmark = pytest.mark.gpu

OPTS = RunOptions(warmup_s=0.2, min_time_s=0.3, check_accuracy=False, count_flops=False)


@pytest.mark.parametrize("batch", [1, 64])
def test_resnet50_in_every_regime(batch: int) -> None:
    rows = {t: measure(Config("resnet50", "eager", "infer", "cuda", "bf16", batch, timer=t), OPTS)[0] for t in TIMERS}
    assert {t: r["status"] for t, r in rows.items()} == dict.fromkeys(TIMERS, "ok"), rows
    for t, r in rows.items():
        assert r["timer"] == t and r["timer_method"].startswith(t) and r["cudnn_benchmark"] is True
    b2b, graph, flushed = (rows[t]["latency_ms_p50"] for t in ("back-to-back", "cudagraph", "flushed"))
    assert graph <= b2b * 1.05  # replays remove launch overhead, add nothing
    if batch == 1:  # a launch-bound step: the graph is the clearly faster figure
        assert graph < b2b
    # The flush buffer (256 MB) must not be in the flushed row's reserved memory.
    assert abs(rows["flushed"]["reserved_mem_mb"] - rows["back-to-back"]["reserved_mem_mb"]) < 128
    assert flushed > 0


def test_compiled_reduce_overhead_and_cudagraph_timer_rules() -> None:
    cfg = Config("resnet18", "compile", "infer", "cuda", "bf16", 1, compile_mode="reduce-overhead")
    row, _ = measure(cfg, OPTS)
    assert row["status"] == "ok" and row["compile_cache"].startswith("cold") and row["recompiles"] == 0
    row, _ = measure(Config("resnet18", "compile", "infer", "cuda", "bf16", 1, compile_mode="reduce-overhead",
                            timer="cudagraph"), OPTS)
    assert row["status"] == "unsupported" and "already runs the model in CUDA graphs" in row["error"]
