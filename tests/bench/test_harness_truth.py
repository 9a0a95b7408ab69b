"""The runner's columns checked against what happened inside the step, not just for presence.

A probe model records, from inside its forward, the thread count torch ran with, the dtype its linear layer computed
in and how long its first call slept; the tests compare the row's ``threads``, ``dtype``, ``compile_ms``, ``gflops``
and the train step (weights changed, forward + backward FLOPs) with those independent observations.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

from bench.config import Config
from bench.flops import count_model_flops
from bench.runner import RunOptions, measure
from models.registry import register_model, unregister_model

# check_accuracy off: the float64 reference run would show up in what the probes record, and a train row's check
# restores the starting weights; allow_slow_fallback: the bf16 probe row must run even where bf16 is a fallback (AVX2).
FAST = dict(warmup_s=0.0, min_time_s=0.02, min_samples=3, check_accuracy=False, allow_slow_fallback=True)
FIRST_SLEEP_S = 0.25


class _Probe(nn.Module):
    """``[B, 2, 2, 2] -> [B, 4]`` through Linear(8, 4): 2·8·4 = 64 FLOPs per sample. Records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)
        self.threads: list[int] = []
        self.dtypes: list[torch.dtype] = []
        self.first_call_s: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        if self.first_call_s is None:  # a slow first call, as lazy init / JIT would make
            t0 = time.perf_counter()
            time.sleep(FIRST_SLEEP_S)
            self.first_call_s = time.perf_counter() - t0
        y = self.lin(x.flatten(1))
        self.dtypes.append(y.dtype)
        return y


class _ConvNet(nn.Module):
    """conv(3->4) -> relu -> conv(4->4) -> mean -> Linear(4, 5): a small conv net for the train step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


BUILT: dict[str, list[nn.Module]] = {"probe": [], "convnet": []}


@pytest.fixture
def probe_models() -> Iterator[None]:
    def truth_probe(**_: object) -> nn.Module:
        BUILT["probe"].append(_Probe())
        return BUILT["probe"][-1]

    def truth_convnet(**_: object) -> nn.Module:
        torch.manual_seed(0)
        BUILT["convnet"].append(_ConvNet())
        return BUILT["convnet"][-1]

    register_model(family="fake", input_shape=(2, 2, 2), num_classes=4)(truth_probe)
    register_model(family="fake", input_shape=(3, 8, 8), num_classes=5)(truth_convnet)
    yield
    unregister_model("truth_probe")
    unregister_model("truth_convnet")
    BUILT["probe"].clear()
    BUILT["convnet"].clear()


def _cfg(model: str, dtype: str = "fp32", mode: str = "infer", batch: int = 3) -> Config:
    return Config(model=model, backend="eager", mode=mode, device="cpu", dtype=dtype, batch_size=batch)


def test_threads_are_applied_inside_the_step(probe_models: None) -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row, _ = measure(_cfg("truth_probe"), RunOptions(threads=2, count_flops=False, **FAST))
    finally:
        torch.set_num_threads(old)
    assert row["status"] == "ok", row.get("error")
    seen = BUILT["probe"][-1].threads
    assert set(seen) == {2}, f"the step ran with {sorted(set(seen))} threads, --threads asked for 2"
    assert row["threads"] == 2


def test_compile_ms_is_the_first_call_and_flops_are_per_sample(probe_models: None) -> None:
    row, _ = measure(_cfg("truth_probe", batch=3), RunOptions(threads=1, count_flops=False, **FAST))
    assert row["status"] == "ok", row.get("error")
    first_ms = BUILT["probe"][-1].first_call_s * 1e3
    assert first_ms >= FIRST_SLEEP_S * 1e3
    assert first_ms <= row["compile_ms"] < first_ms + 200, (row["compile_ms"], first_ms)
    assert row["warmup_ms"] < first_ms  # the warm-up calls are fast; the slow first call is not among them

    row, _ = measure(_cfg("truth_probe", batch=3), RunOptions(threads=1, **FAST))
    assert row["gflops"] == pytest.approx(2 * 8 * 4 / 1e9, rel=1e-12)  # Linear(8, 4), per sample, batch 3


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_autocast_dtype_seen_inside_the_model(probe_models: None, dtype: str) -> None:
    row, _ = measure(_cfg("truth_probe", dtype=dtype), RunOptions(threads=1, count_flops=False, **FAST))
    assert row["status"] == "ok", row.get("error")
    want = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    assert set(BUILT["probe"][-1].dtypes) == {want}


def test_train_step_updates_weights_and_counts_backward_flops(probe_models: None) -> None:
    batch = 2
    row, _ = measure(_cfg("truth_convnet", mode="train", batch=batch), RunOptions(threads=1, **FAST))
    assert row["status"] == "ok", row.get("error")
    trained = BUILT["convnet"][-1]
    torch.manual_seed(0)
    fresh = _ConvNet()  # same seed as the builder: the weights before any step
    for (name, p), p0 in zip(trained.named_parameters(), fresh.parameters()):
        assert not torch.equal(p, p0), f"{name} unchanged after the train steps"

    x = torch.randn(batch, 3, 8, 8)
    fwd = count_model_flops(fresh, (x,), fvcore=False).flops
    first = count_model_flops(fresh.conv1, (x,), fvcore=False).flops
    # Backward: a weight gradient per layer (= its forward FLOPs) and an input gradient for every layer but the first
    # (the image needs none): 3x forward minus conv1's input gradient.
    assert row["gflops"] * batch * 1e9 == pytest.approx(3 * fwd - first, rel=1e-12)
    assert 2.5 < row["gflops"] * batch * 1e9 / fwd <= 3.0
