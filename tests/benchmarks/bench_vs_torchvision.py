"""Benchmark (not a test): our eager classification models against their torchvision twins on the CPU.

Same process, same input (default input shape of the registry entry, batch ``VB_BENCH_BATCH``, default 1), eval
mode, ``torch.no_grad``, ``torch.set_num_threads(VB_BENCH_THREADS)`` (default 1). Each pair is one benchmark group;
the torchvision case runs first and the ``ours`` case stores ``ours / torchvision`` (median time) in its
``extra_info`` and prints it (target <= 1.05), with the ratio of the minima (less sensitive to other load on a
shared machine). The pytest config ignores ``tests/benchmarks``, so run it with::

    pytest tests/benchmarks/bench_vs_torchvision.py -o addopts="" -s -k "resnet18 or efficientnet_b0 or swin_t"

Weights are torchvision's random init copied into ours (same numbers in both models, so data-dependent speed such
as denormals cannot differ).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torchvision

import models

THREADS = int(os.environ.get("VB_BENCH_THREADS", "1"))
BATCH = int(os.environ.get("VB_BENCH_BATCH", "1"))
ROUNDS = int(os.environ.get("VB_BENCH_ROUNDS", "10"))

PAIRS = ["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
         "efficientnet_b3", "vit_b_16", "vit_l_16", "swin_t", "swin_s", "swin_b"]
_TV_TIMES: dict[str, tuple[float, float]] = {}  # name -> (median, min) seconds


@pytest.fixture(scope="module", autouse=True)
def _fixed_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def _pair_cache() -> dict[str, tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]]:
    return {}


def _pair(name: str, cache: dict) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    if name not in cache:
        cache.clear()  # keep one pair alive at a time
        spec = models.get_spec(name)
        tv = torchvision.models.get_model(spec.torchvision, weights=None).eval()
        ours = models.create(name).eval()
        ours.load_state_dict(spec.extra.get("from_torchvision", dict)(tv.state_dict()))
        x = torch.randn(BATCH, *spec.input_shape)
        cache[name] = (ours, tv, x)
    return cache[name]


@pytest.mark.parametrize("impl", ["torchvision", "ours"])
@pytest.mark.parametrize("name", PAIRS)
def test_eager_cpu_vs_torchvision(benchmark: Any, _pair_cache: dict, name: str, impl: str) -> None:
    ours, tv, x = _pair(name, _pair_cache)
    model = ours if impl == "ours" else tv

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    benchmark.group = f"{name} b{BATCH} {THREADS}thr"
    benchmark.extra_info.update(model=name, impl=impl, batch=BATCH, threads=THREADS)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    stats = benchmark.stats.stats
    if impl == "torchvision":
        _TV_TIMES[name] = (stats.median, stats.min)
    elif name in _TV_TIMES:
        (tv_median, tv_min), ratio = _TV_TIMES[name], stats.median / _TV_TIMES[name][0]
        benchmark.extra_info.update(ratio_vs_torchvision=ratio, ratio_min_vs_torchvision=stats.min / tv_min)
        print(f"\n{name}: median ours {stats.median * 1e3:.2f} ms / torchvision {tv_median * 1e3:.2f} ms = {ratio:.3f}"
              f" (min: {stats.min / tv_min:.3f})")
