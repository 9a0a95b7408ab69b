"""Benchmark (not a test): our eager classification models against their torchvision twins on the CPU, interleaved.

Same process, same input (default input shape of the registry entry, batch ``VB_BENCH_BATCH``, default 1), eval
mode, ``torch.no_grad``, ``torch.set_num_threads(VB_BENCH_THREADS)`` (default 1). The two sides are *interleaved*:
every round calls ours, torchvision, torchvision, ours (ABBA, :mod:`bench.interleave`), so drift of a shared
machine lands on both sides instead of on whichever block ran second. pytest-benchmark drives the rounds
(``VB_BENCH_ROUNDS`` timed, default 15, after ``VB_BENCH_WARMUP`` warm-up rounds, default 2) and its table shows
the time of one whole ABBA round; the per-call times are taken inside the round. Printed per model: each side's
median with p20/p80 over the rounds, and the ratio ours / torchvision as the median of the per-round ratios with
its 95% confidence interval (target <= 1.05); the same in each case's ``extra_info``. The pytest config ignores
``tests/benchmarks``, so run it with::

    VB_BENCH_THREADS=2 pytest tests/benchmarks/bench_vs_torchvision.py -o addopts="" -s -k "resnet18 or swin_t"

On a CPU shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE``: with OpenMP's default spin-waiting, threads
that lose their core stall each other at every barrier (resnet18 at 2 threads on a 2-core machine at load 12:
median 1.8 s per call, 0.43 s passive, 0.40 s at 1 thread; ``results/cpu-vs-torchvision/omp_wait_policy_check.txt``).
With ``VB_BENCH_OUT=DIR`` it also writes ``DIR/env.json`` (machine, ISA, threads, OpenMP settings, versions, git
sha), ``DIR/summary.csv`` (one row per model) and ``DIR/rounds.csv`` (every call's time, in call order).

Weights are torchvision's random init copied into ours (same numbers in both models, so data-dependent speed such
as denormals cannot differ).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

import models
from bench.env import collect_env
from bench.interleave import ABBA, Interleaved, paired_ratio, quantile

THREADS = int(os.environ.get("VB_BENCH_THREADS", "1"))
BATCH = int(os.environ.get("VB_BENCH_BATCH", "1"))
ROUNDS = int(os.environ.get("VB_BENCH_ROUNDS", "15"))
WARMUP = int(os.environ.get("VB_BENCH_WARMUP", "2"))
OUT = os.environ.get("VB_BENCH_OUT")

PAIRS = ["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
         "efficientnet_b3", "vit_b_16", "vit_l_16", "swin_t", "swin_s", "swin_b"]
SIDES = {"a": "ours", "b": "torchvision"}
_SUMMARY: list[dict[str, Any]] = []
_ROUNDS: list[dict[str, Any]] = []


def _write_outputs() -> None:
    out = Path(OUT)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    env = collect_env()
    env.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), bench_threads=THREADS, batch=BATCH,
               rounds=ROUNDS, warmup_rounds=WARMUP, order="ABBA (ours, torchvision, torchvision, ours)",
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    for name, rows in (("summary.csv", _SUMMARY), ("rounds.csv", _ROUNDS)):
        if rows:
            with open(out / name, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)


@pytest.fixture(scope="module", autouse=True)
def _fixed_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)
    if _SUMMARY:
        print(f"\n\nours / torchvision, CPU ({torch.backends.cpu.get_cpu_capability()}), {THREADS} threads, batch "
              f"{BATCH}, interleaved ABBA rounds (median of per-round ratios, 95% CI):")
        for r in _SUMMARY:
            print(f"  {r['model']:<16} {r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  "
                  f"ours {r['ours_ms_p50']:.1f} ms, torchvision {r['torchvision_ms_p50']:.1f} ms, n={r['rounds']}")


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    spec = models.get_spec(name)
    tv = torchvision.models.get_model(spec.torchvision, weights=None).eval()
    ours = models.create(name).eval()
    ours.load_state_dict(spec.extra.get("from_torchvision", dict)(tv.state_dict()))
    return ours, tv, torch.randn(BATCH, *spec.input_shape)


def _ms(values: list[float]) -> tuple[float, float, float]:
    return tuple(quantile(values, q) * 1e3 for q in (0.5, 0.2, 0.8))  # type: ignore[return-value]


@pytest.mark.parametrize("name", PAIRS)
def test_eager_cpu_vs_torchvision(benchmark: Any, name: str) -> None:
    ours, tv, x = _pair(name)

    def call(model: torch.nn.Module) -> Any:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(x)
        return run

    inter = Interleaved(call(ours), call(tv))
    order = ", ".join(SIDES[s] for s in ABBA)
    benchmark.group = f"{name} b{BATCH} {THREADS}thr: one ABBA round ({order})"
    benchmark.pedantic(inter.round, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    n = min(ROUNDS, len(inter.calls))  # --benchmark-disable runs a single round
    a_s, b_s = inter.result(last=n)
    est = paired_ratio(a_s, b_s)
    (o50, o20, o80), (t50, t20, t80) = _ms(a_s), _ms(b_s)
    row = {"model": name, "batch": BATCH, "threads": THREADS, "rounds": n, "ratio": est.ratio,
           "ci_low": est.ci_low, "ci_high": est.ci_high, "confidence": est.confidence,
           "ours_ms_p50": o50, "ours_ms_p20": o20, "ours_ms_p80": o80,
           "torchvision_ms_p50": t50, "torchvision_ms_p20": t20, "torchvision_ms_p80": t80}
    benchmark.extra_info.update(row, order="ABBA")
    _SUMMARY.append(row)
    for i, c in enumerate(inter.calls[-n:]):
        _ROUNDS.append({"model": name, "round": i, **{f"{SIDES[s]}_{j}_ms": t * 1e3
                                                     for j, (s, t) in enumerate(zip(ABBA, c))}})
    if OUT:  # rewritten after every model, so a run cut short keeps the models it finished
        _write_outputs()
    print(f"\n{name}: {n} interleaved rounds, each {order}\n"
          f"  ours        median {o50:.2f} ms (p20 {o20:.2f}, p80 {o80:.2f})\n"
          f"  torchvision median {t50:.2f} ms (p20 {t20:.2f}, p80 {t80:.2f})\n"
          f"  ours / torchvision = {est.ratio:.3f}, 95% CI [{est.ci_low:.3f}, {est.ci_high:.3f}]"
          f" (median of per-round ratios)")
