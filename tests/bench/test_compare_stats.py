"""``bench.compare_stats`` on in-memory tables: which method a matched pair gets, that the options reach the
statistics, the CPU sub-millisecond threshold, and numbers read from CSV cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.compare_match import KERNELS, MODELS, Table, _Kind
from bench.compare_stats import RUN_LEVEL, SAMPLE_LEVEL, Options, _runs, adjust_fdr, decide, latency, to_float
from bench.stats import compare_repeated, compare_samples

KEY = ("cfg",)


def _pair(kind: _Kind, base_runs: list[list[float]], new_runs: list[list[float]], device: str = "cpu",
          ) -> tuple[dict, dict, Table, Table]:
    """Two ok rows and their tables: ``rep_samples`` per run, ``samples`` pooled, p50 = the pooled median."""
    def side(runs: list[list[float]]) -> tuple[dict, Table]:
        pooled = np.concatenate([np.asarray(r, float) for r in runs])
        row = {kind.p50: float(np.median(pooled)), "device": device}
        t = Table(kind, Path("x"), {KEY: row}, samples={KEY: pooled},
                  rep_samples={KEY: {i: np.asarray(r, float) for i, r in enumerate(runs)}})
        return row, t
    (b, bt), (n, nt) = side(base_runs), side(new_runs)
    return b, n, bt, nt


def _runs_of(rng: np.random.Generator, median: float, sizes: tuple[int, ...]) -> list[list[float]]:
    return [list(median * rng.lognormal(0, 0.02, k)) for k in sizes]


def test_two_runs_per_side_is_run_level_and_the_options_reach_the_test() -> None:
    rng = np.random.default_rng(1)
    opts = Options(resamples=500, confidence=0.9)
    base, new = _runs_of(rng, 5.0, (20, 3)), _runs_of(rng, 5.5, (20, 20))  # a run of exactly 3 samples counts
    out = latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, opts, seed=7)
    est = compare_repeated(base, new, n_boot=500, confidence=0.9, seed=7)
    assert out["method"] == RUN_LEVEL and (out["reps_base"], out["reps_new"]) == (2, 2)
    assert (out["ratio"], out["ci_low"], out["ci_high"], out["p_value"]) == (est.ratio, est.ci_low, est.ci_high,
                                                                            est.p_value)
    for other in (Options(resamples=501, confidence=0.9), Options(resamples=500, confidence=0.95)):
        assert latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, other, seed=7)["ci_low"] != out["ci_low"]
    assert latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, opts, seed=8)["ci_low"] != out["ci_low"]


@pytest.mark.parametrize("sizes", [((20, 20), (20,)), ((20,), (20, 20)), ((20, 2), (20, 20)), ((20, 20), (2, 20))])
def test_fewer_than_two_usable_runs_on_a_side_is_sample_level(sizes: tuple[tuple[int, ...], ...]) -> None:
    # A run with fewer than 3 samples does not count as a run; the pooled samples still feed the per-sample test.
    rng = np.random.default_rng(2)
    base, new = _runs_of(rng, 5.0, sizes[0]), _runs_of(rng, 5.5, sizes[1])
    opts = Options(resamples=400, confidence=0.9)
    out = latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, opts, seed=3)
    est = compare_samples(np.concatenate(base), np.concatenate(new), n_boot=400, confidence=0.9, seed=3)
    assert out["method"] == SAMPLE_LEVEL
    assert (out["ratio"], out["ci_low"], out["ci_high"], out["p_value"]) == (est.ratio, est.ci_low, est.ci_high,
                                                                            est.p_value)


def test_pool_runs_uses_the_per_sample_test() -> None:
    rng = np.random.default_rng(3)
    base, new = _runs_of(rng, 5.0, (20, 20)), _runs_of(rng, 5.5, (20, 20))
    assert latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, Options(pool_runs=True), seed=0)["method"] \
        == SAMPLE_LEVEL


@pytest.mark.parametrize("kind, median, device, threshold", [
    (MODELS, 0.9, "cpu", 0.25),  # under 1 ms on the CPU, one run per side: the wider threshold
    (MODELS, 1.1, "cpu", 0.05),
    (MODELS, 0.9, "cuda", 0.05),
    (KERNELS, 900.0, "cpu", 0.25),  # kernels are in µs: 900 µs is under 1 ms
    (KERNELS, 1100.0, "cpu", 0.05),
])
def test_single_run_sub_ms_cpu_threshold(kind: _Kind, median: float, device: str, threshold: float) -> None:
    rng = np.random.default_rng(4)
    base, new = _runs_of(rng, median, (20,)), _runs_of(rng, median, (20,))
    out = latency(kind, *_pair(kind, base, new, device), KEY, KEY, Options(), seed=0)
    assert out["threshold"] == threshold


def test_to_float_reads_numbers_and_treats_nan_and_text_as_missing() -> None:
    assert to_float("2.5") == 2.5 and to_float(3) == 3.0
    assert to_float("nan") is None and to_float(math.nan) is None
    assert to_float("fast") is None and to_float(None) is None


def test_runs_keeps_runs_with_enough_samples_in_order() -> None:
    runs = _runs({2: np.ones(3), 0: np.ones(4), 1: np.ones(2)})
    assert [len(r) for r in runs] == [4, 3] and _runs(None) == []


def _decided(opts: Options | None = None, **out: object) -> dict:
    row = {"significant": True, "mem_growth": False, **out}
    decide(row, opts or Options())
    return row


def test_decide_threshold_spread_and_memory() -> None:
    # |change| >= threshold counts (1.25 - 1 is exactly 0.25 in binary floating point).
    assert _decided(ratio=1.25, threshold=0.25)["verdict"] == "slower"
    assert _decided(ratio=0.75, threshold=0.25)["verdict"] == "faster"
    assert _decided(ratio=1.2, threshold=0.25)["verdict"] == "unchanged"
    # No threshold in the row: the option's.
    assert _decided(Options(threshold=0.3), ratio=1.25)["verdict"] == "unchanged"
    assert _decided(Options(threshold=0.2), ratio=1.25)["verdict"] == "slower"
    # Run level: the change must also exceed the between-run spread.
    r = _decided(ratio=1.2, threshold=0.05, spread=0.3)
    assert r["verdict"] == "unchanged" and r["within_spread"] and r["regression"] is False  # a JSON false, not null
    r = _decided(ratio=1.25, threshold=0.05, spread=0.25)  # equal to the spread: not over it
    assert r["verdict"] == "unchanged" and r["within_spread"]
    assert _decided(ratio=1.25, threshold=0.25, spread=0.3)["within_spread"]  # at the threshold, inside the spread
    assert not _decided(ratio=1.2, threshold=0.05, spread=0.3, significant=False)["within_spread"]
    assert _decided(ratio=1.2, threshold=0.05, spread=0.1)["verdict"] == "slower"
    # Not significant: unchanged, but memory growth alone is still a regression.
    r = _decided(ratio=1.5, threshold=0.05, significant=False, mem_growth=True)
    assert r["verdict"] == "unchanged" and r["regression"] and not r["within_spread"]
    r = _decided(ratio=0.5, threshold=0.05, mem_growth=True)
    assert r["verdict"] == "faster" and r["regression"]
    assert not _decided(ratio=0.5, threshold=0.05)["regression"]


def test_adjust_fdr_over_the_rows_tested_with_samples() -> None:
    def row(p: float | None, method: str = SAMPLE_LEVEL) -> dict:
        return _decided(ratio=1.5, threshold=0.05, p_value=p, method=method, q_value=None)

    # BH over the three tested rows only: p (0.01, 0.04, 0.03) -> q (0.03, 0.04, 0.04); the untested rows keep q None.
    rows = [row(0.01), row(0.04, RUN_LEVEL), row(0.03), row(None, "p20-p80 overlap (no samples)"),
            row(0.001, "medians only (no samples, no p20/p80)")]
    adjust_fdr(rows, Options(confidence=0.965))
    assert [r["q_value"] for r in rows] == pytest.approx([0.03, 0.04, 0.04, None, None])
    # q < 1 - confidence = 0.035 stays significant; q = 0.04 does not, and its verdict is decided again.
    assert [r["significant"] for r in rows] == [True, False, False, True, True]
    assert [r["verdict"] for r in rows] == ["slower", "unchanged", "unchanged", "slower", "slower"]
    assert [r["regression"] for r in rows] == [True, False, False, True, True]
    one = [row(0.25)]  # q = p = 0.25 = 1 - confidence exactly (binary): not below it, so not significant
    adjust_fdr(one, Options(confidence=0.75))
    assert one[0]["q_value"] == 0.25 and one[0]["significant"] is False
    rows = [row(0.01), row(0.04)]
    adjust_fdr(rows, Options(fdr=False))
    assert [r["q_value"] for r in rows] == [None, None] and all(r["significant"] for r in rows)


def test_every_field_of_the_estimate_is_reported() -> None:
    rng = np.random.default_rng(5)
    opts = Options(threshold=0.07)
    base, new = _runs_of(rng, 5.0, (20, 30)), _runs_of(rng, 5.5, (25, 20))
    out = latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, opts, seed=1)
    est = compare_repeated(base, new, n_boot=2000, confidence=0.95, seed=1)
    assert {k: out[k] for k in ("significant", "n_base", "n_new", "spread", "threshold", "base_p50", "new_p50")} == {
        "significant": est.significant, "n_base": 50, "n_new": 45, "spread": est.spread, "threshold": 0.07,
        "base_p50": float(np.median([np.median(r) for r in base])),
        "new_p50": float(np.median([np.median(r) for r in new]))}
    base, new = _runs_of(rng, 5.0, (20,)), _runs_of(rng, 5.5, (30, 2))  # sample level: 1 usable run a side
    out = latency(MODELS, *_pair(MODELS, base, new), KEY, KEY, opts, seed=1)
    bs, ns = np.concatenate(base), np.concatenate(new)
    est = compare_samples(bs, ns, seed=1)
    assert {k: out[k] for k in ("significant", "n_base", "n_new", "threshold", "base_p50", "new_p50", "reps_base",
                                "reps_new")} == {
        "significant": est.significant, "n_base": 20, "n_new": 32, "threshold": 0.07, "base_p50": float(np.median(bs)),
        "new_p50": float(np.median(ns)), "reps_base": 1, "reps_new": 1}


@pytest.mark.parametrize("new_p20, new_p80, significant", [(5.6, 6.0, True), (4.9, 6.0, False), (3.0, 3.9, True),
                                                          (5.0, 6.0, False), (3.0, 4.0, False)])  # touching: overlap
def test_without_samples_the_p20_p80_ranges_decide(new_p20: float, new_p80: float, significant: bool) -> None:
    b = {"latency_ms_p50": 4.5, "latency_ms_p20": 4.0, "latency_ms_p80": 5.0, "n_samples": 40, "device": "cuda"}
    n = {"latency_ms_p50": 5.4, "latency_ms_p20": new_p20, "latency_ms_p80": new_p80, "n_samples": 30,
         "device": "cuda"}
    bt, nt = Table(MODELS, Path("a"), {KEY: b}), Table(MODELS, Path("b"), {KEY: n})
    out = latency(MODELS, b, n, bt, nt, KEY, KEY, Options(), seed=0)
    assert out == {"ratio": 5.4 / 4.5, "ci_low": None, "ci_high": None, "p_value": None, "n_base": 40.0,
                   "n_new": 30.0, "base_p50": 4.5, "new_p50": 5.4, "threshold": 0.05, "significant": significant,
                   "method": "p20-p80 overlap (no samples)"}
    del n["latency_ms_p80"]
    out = latency(MODELS, b, n, bt, nt, KEY, KEY, Options(), seed=0)
    assert out["method"] == "medians only (no samples, no p20/p80)" and out["significant"] is False


def test_a_base_median_of_exactly_1_ms_is_not_under_1_ms() -> None:
    runs = [[0.98, 0.99, 1.0, 1.01, 1.02]]  # median 1.0 exactly
    out = latency(MODELS, *_pair(MODELS, runs, runs), KEY, KEY, Options(), seed=0)
    assert out["base_p50"] == 1.0 and out["threshold"] == 0.05


def test_sample_level_edges() -> None:
    rng = np.random.default_rng(6)
    # 2 base runs, 1 new run: per-sample statistics; the base has repetitions, so no sub-ms widening; reps counted.
    out = latency(MODELS, *_pair(MODELS, _runs_of(rng, 0.5, (10, 10)), _runs_of(rng, 0.5, (10,))), KEY, KEY,
                  Options(), seed=0)
    assert out["method"] == SAMPLE_LEVEL and out["threshold"] == 0.05 and (out["reps_base"], out["reps_new"]) == (2, 1)
    out = latency(MODELS, *_pair(MODELS, _runs_of(rng, 5.0, (10,)), _runs_of(rng, 5.0, (10, 10))), KEY, KEY,
                  Options(), seed=0)
    assert (out["reps_base"], out["reps_new"]) == (1, 2)
    # Exactly 3 pooled samples on a side are enough; samples without per-run records count as one run each side.
    b, n, bt, nt = _pair(MODELS, [[1.0, 1.1, 1.2]], [[1.3, 1.4, 1.5]], device="cuda")
    bt.rep_samples.clear()
    nt.rep_samples.clear()
    out = latency(MODELS, b, n, bt, nt, KEY, KEY, Options(), seed=0)
    assert out["method"] == SAMPLE_LEVEL and (out["n_base"], out["n_new"], out["reps_base"], out["reps_new"]) == \
        (3, 3, 1, 1)
    # Samples on one side only: the p20-p80 rule (no p20/p80 here: medians only).
    for side in (bt, nt):
        side.samples.clear()
        out = latency(MODELS, b, n, bt, nt, KEY, KEY, Options(), seed=0)
        assert out["method"] == "medians only (no samples, no p20/p80)"
