"""``bench.compare`` (the ``bench compare`` driver) value by value on in-memory tables and tiny CSV run directories:
one matched pair (``_compare_pair``: every field, the status verdicts and their notes, the ``--match-ignore`` name,
the per-config seed, the FLOP / memory / compile / noisy / method notes), the compile note, the environment and load
diff, ``compare_runs`` (option checks, pairing, unmatched rows, devices, machine state), ``Comparison.counts``, the
CLI's arguments and ``main`` (checks, options, formats, ``--out``, exit code)."""

from __future__ import annotations

import argparse
import csv
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bench.compare as cmp
from bench.compare import Comparison, _compare_pair, _compile_note, _load_per_core, compare_runs, env_diff
from bench.compare_match import CHECKS, KERNELS, MODELS, Run, Table, _Kind, _row_key, load_run
from bench.compare_render import render_csv, render_json, render_markdown, summary_line
from bench.compare_stats import RUN_LEVEL, SAMPLE_LEVEL, Options, latency
from bench.io import BadInputError

# --------------------------------------------------------------------------------------------------- in-memory tables


def _model(line: int = 2, status: str = "ok", p50: float | None = 2.0, **kw: Any) -> dict[str, Any]:
    """A models row as ``compare_match`` holds it (``_line``: its CSV line)."""
    row = {"model": "basic_cnn", "backend": "eager", "mode": "infer", "device": "cuda", "dtype": "fp32",
           "batch_size": 1, "compile_mode": "", "device_name": "A100", "status": status, "latency_ms_p50": p50,
           "_line": line}
    return {**row, **kw}


def _kernel(line: int = 2, status: str = "ok", p50: float | None = 40.0, **kw: Any) -> dict[str, Any]:
    row = {"kernel": "conv", "shape": "1x3x8x8", "dtype": "fp32", "direction": "fwd", "provider": "triton",
           "device_name": "A100", "status": status, "p50_us": p50, "_line": line}
    return {**row, **kw}


def _check(line: int = 2, status: str = "pass", **kw: Any) -> dict[str, Any]:
    row = {"kernel": "conv", "shape": "1x3x8x8", "dtype": "fp32", "direction": "fwd", "output": "y",
           "device_name": "A100", "status": status, "_line": line}
    return {**row, **kw}


def _table(kind: _Kind, rows: list[dict[str, Any]], samples: list[np.ndarray | None] | None = None) -> Table:
    """One side's table: rows by their real key, one repetition each, with the given raw samples (if any)."""
    t = Table(kind, Path(f"{kind.name}.csv"), {})
    for i, r in enumerate(rows):
        k = _row_key(kind, r)
        t.rows[k] = r
        t.reps[k] = [r]
        s = None if samples is None else samples[i]
        if s is not None:
            t.samples[k] = s
            t.rep_samples[k] = {0: s}
    return t


def _pair(kind: _Kind, b: dict[str, Any], n: dict[str, Any], opts: Options | None = None,
          samples: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    bt = _table(kind, [b], None if samples is None else [samples[0]])
    nt = _table(kind, [n], None if samples is None else [samples[1]])
    return _compare_pair(kind, bt, nt, _row_key(kind, b), _row_key(kind, n), opts or Options())


def _blank(kind: str, config: str, sb: str, sn: str, unit: str, **kw: Any) -> dict[str, Any]:
    """Every field of a pair before the latency statistics (what a status change or a numerics row reports)."""
    return {"kind": kind, "config": config, "base_status": sb, "new_status": sn, "base_line": 2, "new_line": 2,
            "unit": unit, "notes": [], "regression": False, "ratio": None, "ci_low": None, "ci_high": None,
            "p_value": None, "q_value": None, "mem_growth": False, "base_p50": None, "new_p50": None,
            "n_base": None, "n_new": None, "method": "", "significant": False, "reps_base": 1, "reps_new": 1,
            "spread": None, **kw}


CFG = "basic_cnn eager infer cuda fp32 b1"


# ------------------------------------------------------------------------------------------------------ status changes


def test_a_status_change_reports_every_field_and_counts_repetitions() -> None:
    b, n = _model(status="ok", _reps=3), _model(status="error", p50=None, error="RuntimeError: boom")
    assert _pair(MODELS, b, n) == _blank("models", CFG, "ok", "error", "ms", verdict="regression", regression=True,
                                         reps_base=3, notes=["status ok → error: RuntimeError: boom"])
    b, n = _model(status="error", p50=None), _model(status="oom", p50=None, _reps=2)
    assert _pair(MODELS, b, n) == _blank("models", CFG, "error", "oom", "ms", verdict="status changed", reps_new=2,
                                         notes=["status error → oom"])


@pytest.mark.parametrize(("sb", "sn", "extra", "verdict", "note"), [
    ("ok", "error", {"message": "the message", "error": "the error"}, "regression", "status ok → error: the message"),
    ("ok", "oom", {"error": "CUDA out of memory"}, "regression", "status ok → oom: CUDA out of memory"),
    ("ok", "timeout", {"message": "over 3 s"}, "regression", "status ok → timeout: over 3 s"),
    ("ok", "crashed", {}, "regression", "status ok → crashed"),
    ("ok", "error", {"error": "x" * 130}, "regression", "status ok → error: " + "x" * 120),
    # the new row passes: its error cell (e.g. "profile failed: ...", kept on ok rows) is not the reason
    ("error", "ok", {"error": "profile failed: no trace"}, "fixed", "status error → ok"),
    ("timeout", "ok", {}, "fixed", "status timeout → ok"),
    ("error", "timeout", {"error": "slow"}, "status changed", "status error → timeout: slow"),
])
def test_status_change_verdicts_and_notes(sb: str, sn: str, extra: dict[str, Any], verdict: str, note: str) -> None:
    out = _pair(MODELS, _model(status=sb), _model(status=sn, **extra))
    assert (out["verdict"], out["regression"], out["notes"]) == (verdict, sb == "ok", [note])


def test_numerics_and_kernel_rows() -> None:
    # numerics: "pass" is the good status; an unchanged check is "unchanged" without any latency
    numerics = "conv 1x3x8x8 fp32 fwd y"
    assert _pair(CHECKS, _check(), _check()) == _blank("numerics", numerics, "pass", "pass", "", verdict="unchanged")
    out = _pair(CHECKS, _check(), _check(status="fail", message="max err 3e-2"))
    assert (out["verdict"], out["regression"], out["notes"]) == ("regression", True,
                                                                 ["status pass → fail: max err 3e-2"])
    out = _pair(CHECKS, _check(status="fail"), _check())
    assert (out["verdict"], out["regression"], out["notes"]) == ("fixed", False, ["status fail → pass"])
    out = _pair(KERNELS, _kernel(), _kernel(status="error", p50=None))
    assert (out["kind"], out["config"], out["unit"], out["verdict"]) == ("kernels", "conv 1x3x8x8 fp32 fwd triton",
                                                                         "µs", "regression")


def test_two_failed_rows_are_unchanged_without_statistics() -> None:
    out = _pair(MODELS, _model(status="error", p50=None), _model(status="error", p50=None))
    assert out == _blank("models", CFG, "error", "error", "ms", verdict="unchanged")


# ------------------------------------------------------------------------------------------------ the pair's name


@pytest.mark.parametrize(("ignore", "new", "name"), [
    (("backend", "compile_mode"), {"backend": "compile", "compile_mode": "default"},
     "basic_cnn compile infer cuda fp32 b1 (backend: eager → compile)"),
    (("backend",), {"backend": "triton"}, "basic_cnn triton infer cuda fp32 b1 (backend: eager → triton)"),
    (("dtype", "batch_size"), {"dtype": "fp16", "batch_size": 2},
     "basic_cnn eager infer cuda fp16 b2 (dtype: fp32 → fp16; batch_size: 1 → 2)"),
    (("dtype", "batch_size"), {"batch_size": 4}, "basic_cnn eager infer cuda fp32 b4 (batch_size: 1 → 4)"),
    (("provider",), {}, CFG),  # not a models key field
    ((), {}, CFG),
])
def test_ignored_fields_that_differ_are_named(ignore: tuple[str, ...], new: dict[str, Any], name: str) -> None:
    b, n = _model(status="ok"), _model(status="error", p50=None, **new)
    assert _pair(MODELS, b, n, Options(match_ignore=ignore))["config"] == name


# ------------------------------------------------------------------------------------------------ ok -> ok statistics


def test_an_ok_pair_gets_the_statistics_of_its_own_seeded_stream() -> None:
    rng = np.random.default_rng(5)
    bs, ns = 4.0 * rng.lognormal(0, 0.03, 40), 5.0 * rng.lognormal(0, 0.03, 40)
    b = _model(p50=float(np.median(bs)), _reps=1)
    n = _model(p50=float(np.median(ns)), backend="compile", compile_mode="default")
    opts = Options(resamples=300, seed=2**32 + 7, match_ignore=("backend", "compile_mode"))
    out = _pair(MODELS, b, n, opts, (bs, ns))
    name = "basic_cnn compile infer cuda fp32 b1 (backend: eager → compile)"
    bt, nt = _table(MODELS, [b], [bs]), _table(MODELS, [n], [ns])
    seed = (7 + zlib.crc32(name.encode())) % 2**32
    est = latency(MODELS, b, n, bt, nt, _row_key(MODELS, b), _row_key(MODELS, n), opts, seed)
    assert est["method"] == SAMPLE_LEVEL and est["significant"]
    assert out == {**_blank("models", name, "ok", "ok", "ms"), **est, "verdict": "slower", "regression": True}
    # the seed matters: another stream gives another interval
    other = latency(MODELS, b, n, bt, nt, _row_key(MODELS, b), _row_key(MODELS, n), opts, seed + 1)
    assert other["ci_low"] != est["ci_low"]


def _stub_latency(monkeypatch: pytest.MonkeyPatch, res: dict[str, Any]) -> None:
    monkeypatch.setattr(cmp, "latency", lambda *a, **k: dict(res))


def _ok_pair() -> dict[str, Any]:
    return _pair(MODELS, _model(), _model())


RUN = {"ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3, "p_value": 0.01, "significant": True, "n_base": 40, "n_new": 60,
       "method": RUN_LEVEL, "reps_base": 2, "reps_new": 3, "threshold": 0.05, "base_p50": 2.0, "new_p50": 2.4}


def test_run_level_notes_give_the_runs_and_the_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_latency(monkeypatch, {**RUN, "spread": 0.123})  # change 20% > spread 12.3%: a verdict
    out = _ok_pair()
    assert (out["verdict"], out["regression"]) == ("slower", True)
    assert out["notes"] == ["runs 2 vs 3, between-run spread 12.3%"]
    _stub_latency(monkeypatch, {**RUN, "spread": 0.3})  # change 20% <= spread 30%: unchanged, said in the note
    out = _ok_pair()
    assert (out["verdict"], out["regression"], out["within_spread"]) == ("unchanged", False, True)
    assert out["notes"] == ["runs 2 vs 3, between-run spread 30.0% (exceeds the change)"]


def test_sample_level_notes_the_raised_cpu_threshold_only(monkeypatch: pytest.MonkeyPatch) -> None:
    res = {**RUN, "method": SAMPLE_LEVEL, "reps_base": 1, "reps_new": 1, "ratio": 1.3}
    _stub_latency(monkeypatch, {**res, "threshold": 0.25})
    out = _ok_pair()
    assert (out["verdict"], out["notes"]) == ("slower", ["one run per side, CPU under 1 ms: threshold ±25%"])
    _stub_latency(monkeypatch, res)  # threshold = --threshold: nothing to say
    assert _ok_pair()["notes"] == []
    # without samples the method itself is the note, never the threshold one
    _stub_latency(monkeypatch, {**res, "method": "p20-p80 overlap (no samples)", "threshold": 0.25})
    assert _ok_pair()["notes"] == ["p20-p80 overlap (no samples)"]


def test_without_samples_the_method_is_noted() -> None:
    out = _pair(MODELS, _model(p50=2.0, latency_ms_p20=1.9, latency_ms_p80=2.1),
                _model(p50=3.0, latency_ms_p20=2.9, latency_ms_p80=3.1))
    assert (out["method"], out["verdict"], out["notes"]) == ("p20-p80 overlap (no samples)", "slower",
                                                             ["p20-p80 overlap (no samples)"])
    out = _pair(MODELS, _model(), _model())
    assert out["notes"] == ["medians only (no samples, no p20/p80)"]


# ---------------------------------------------------------------------------------------- FLOP, memory, noisy notes


@pytest.mark.parametrize(("fb", "fn", "note"), [
    (1.5, 1.5, None),
    (2.0, 3.0, "gflops 2 → 3 (+50.0%)"),
    (4.0, 3.0, "gflops 4 → 3 (-25.0%)"),
    (0.0, 5.0, "gflops 0 → 5 (new)"),
    (None, 3.0, None),
    (3.0, None, None),
    (100.0, 100.0 + 1e-8, None),  # a relative difference of 1e-10: rounding, not a change
    (1e-3, 1e-3 * (1 + 1e-7), "gflops 0.001 → 0.001 (+0.0%)"),  # small counts: relative, not absolute
    (1e9, 1e9 + 1, None),  # exactly 1e-9 relative: not over the tolerance
    (1e9, 1e9 + 2, "gflops 1e+09 → 1e+09 (+0.0%)"),
])
def test_flop_changes(fb: float | None, fn: float | None, note: str | None) -> None:
    out = _pair(MODELS, _model(gflops=fb), _model(gflops=fn))
    assert [x for x in out["notes"] if "flops" in x] == ([note] if note else [])


def test_kernel_flop_changes_name_the_kernel_column() -> None:
    out = _pair(KERNELS, _kernel(flops=1000.0), _kernel(flops=2000.0))
    assert "flops 1000 → 2000 (+100.0%)" in out["notes"]


@pytest.mark.parametrize(("mb", "mn", "thr", "note", "growth"), [
    (100.0, 125.0, 0.25, "peak memory 100 → 125 MB (+25.0%)", True),  # exactly the threshold
    (100.0, 124.0, 0.25, None, False),
    (100.0, 50.0, 0.25, "peak memory 100 → 50 MB (-50.0%)", False),
    (100.0, 100.0, 0.0, "peak memory 100 → 100 MB (+0.0%)", False),  # threshold 0: listed, but not a growth
    (None, 100.0, 0.1, None, False),
    (0.0, 100.0, 0.1, None, False),
    (100.0, None, 0.1, None, False),
])
def test_memory_changes(mb: float | None, mn: float | None, thr: float, note: str | None, growth: bool) -> None:
    out = _pair(MODELS, _model(peak_mem_mb=mb), _model(peak_mem_mb=mn), Options(mem_threshold=thr))
    assert out["verdict"] == "unchanged"  # medians only: the latency says nothing
    assert [x for x in out["notes"] if "memory" in x] == ([note] if note else [])
    assert (out["mem_growth"], out["regression"]) == (growth, growth)


def test_memory_growth_adds_to_a_status_regression() -> None:
    out = _pair(MODELS, _model(peak_mem_mb=100.0), _model(status="oom", peak_mem_mb=50.0))
    assert (out["regression"], out["mem_growth"]) == (True, False)


def test_noisy_rows_are_noted() -> None:
    out = _pair(MODELS, _model(noisy="True"), _model(noisy=True))
    medians = "medians only (no samples, no p20/p80)"
    assert out["notes"] == ["base flagged noisy", "new flagged noisy", medians]
    out = _pair(MODELS, _model(noisy="false"), _model(noisy="TRUE"))
    assert out["notes"] == ["new flagged noisy", medians]
    assert _pair(MODELS, _model(), _model(noisy=False))["notes"] == [medians]


# ----------------------------------------------------------------------------------------------------- compile notes

COLD = "cold: fresh Inductor and Triton cache dirs"


@pytest.mark.parametrize(("kind", "make"), [(MODELS, _model), (KERNELS, _kernel)])
def test_compile_time_is_compared_only_between_two_ok_rows(kind: _Kind, make: Any) -> None:
    out = _pair(kind, make(compile_ms=100.0, compile_cache=COLD), make(compile_ms=200.0, compile_cache=COLD))
    assert out["compile_ratio"] == 2.0 and "compile_ms 100 → 200 (+100.0%)" in out["notes"]
    out = _pair(kind, make(status="error", p50=None, compile_ms=100.0), make(compile_ms=200.0))
    assert "compile_ratio" not in out and out["notes"] == ["status error → ok"]
    out = _pair(kind, make(status="error", p50=None, compile_ms=100.0), make(status="error", p50=None,
                                                                             compile_ms=300.0))
    assert "compile_ratio" not in out and out["notes"] == []


@pytest.mark.parametrize(("b", "n", "ratio", "notes"), [
    ({"compile_ms": 100.0}, {"compile_ms": 125.0}, 1.25, ["compile_ms 100 → 125 (+25.0%)"]),  # exactly 0.25
    ({"compile_ms": 100.0}, {"compile_ms": 124.0}, 1.24, []),
    ({"compile_ms": 100.0}, {"compile_ms": 110.0}, 1.1, []),
    ({"compile_ms": 100.0}, {"compile_ms": 40.0}, 0.4, ["compile_ms 100 → 40 (-60.0%)"]),
    ({"compile_ms": 100.0}, {"compile_ms": 100.0}, 1.0, []),
    ({"compile_ms": 0.0}, {"compile_ms": 100.0}, None, []),
    ({}, {"compile_ms": 100.0}, None, []),
    ({"compile_ms": 100.0}, {}, None, []),
    ({"compile_ms": 100.0, "compile_cache": COLD}, {"compile_ms": 900.0, "compile_cache": "warm: shared caches"},
     9.0, ["compile_ms not comparable: compile cache cold → warm"]),
    ({"compile_ms": 100.0, "compile_cache": "warm: shared caches (/d, empty before)"},
     {"compile_ms": 200.0, "compile_cache": "warm: shared caches (/d, 12 entries before)"},
     2.0, ["compile_ms 100 → 200 (+100.0%)"]),
    ({"compile_ms": 100.0, "compile_cache": "warm"}, {"compile_ms": 200.0, "compile_cache": "warm"},
     2.0, ["compile_ms 100 → 200 (+100.0%)"]),
    # one side did not record its cache state: the figures are compared
    ({"compile_ms": 100.0}, {"compile_ms": 200.0, "compile_cache": "warm"}, 2.0, ["compile_ms 100 → 200 (+100.0%)"]),
    ({"compile_ms": 100.0, "compile_cache": "cold"}, {"compile_ms": 200.0, "compile_cache": ""},
     2.0, ["compile_ms 100 → 200 (+100.0%)"]),
])
def test_compile_note(b: dict[str, Any], n: dict[str, Any], ratio: float | None, notes: list[str]) -> None:
    out: dict[str, Any] = {"notes": []}
    _compile_note(out, b, n, "compile_ms", 0.25)
    assert out == ({"notes": notes} if ratio is None else {"notes": notes, "compile_ratio": ratio})


# ---------------------------------------------------------------------------------------------- environment and load


def test_load_per_core() -> None:
    assert _load_per_core({"load_avg": [3.0, 1.0, 0.5], "cpu_count": 4}) == 0.75
    assert _load_per_core({"load_avg": [1.5, 1.0, 0.5], "cpu_count": 1}) == 1.5
    assert _load_per_core({"load_avg": [3.0, 1.0, 0.5]}) == 3.0  # no core count: per machine
    assert _load_per_core({"load_avg": [3.0, 1.0, 0.5], "cpu_count": 0}) == 3.0
    assert _load_per_core({"load_avg": [], "cpu_count": 4}) is None
    assert _load_per_core({"cpu_count": 4}) is None


ENV_A = {"device_name": "cpu", "cpu_model": "EPYC", "cpu_capability": "AVX2", "cpu_bf16_native": False,
         "cpu_fp16_native": False, "onednn_version": "3.1", "host": "a", "threads": 2, "torch_version": "2.14",
         "torchvision_version": "0.29", "triton_version": "3.8", "cuda_version": None, "cudnn_version": None,
         "driver": None, "python": "3.11", "cpu_governor": "performance", "triton_interpret": "1",
         "git_sha": "abc", "git_dirty": False}


def test_env_diff_lists_the_fields_that_differ() -> None:
    assert env_diff(ENV_A, dict(ENV_A)) == []
    new = {**ENV_A, "gpus": [{"name": "A100"}, {"name": "H100"}], "cpu_capability": "AVX512", "threads": 4,
           "cuda_version": "12.4", "git_dirty": True, "python": None}
    assert env_diff(ENV_A, new) == [
        {"field": "device", "base": "cpu", "new": "A100, H100", "material": True},
        {"field": "cpu ISA", "base": "AVX2", "new": "AVX512", "material": True},
        {"field": "threads", "base": 2, "new": 4, "material": True},
        {"field": "cuda", "base": None, "new": "12.4", "material": True},
        {"field": "python", "base": "3.11", "new": None, "material": True},
        {"field": "git", "base": "abc", "new": "abc-dirty", "material": False},
    ]
    # values compared as text: 2 and "2" are the same thread count
    assert env_diff({"threads": 2}, {"threads": "2"}) == []


@pytest.mark.parametrize(("lb", "ln", "row"), [
    ([2.468], [1.0], {"base": 1.23, "new": 0.5, "material": True}),  # per core on 2 cores, rounded to 0.01
    ([1.0], [2.468], {"base": 0.5, "new": 1.23, "material": True}),
    ([1.0], [1.5], None),  # exactly 0.25 per core apart: ordinary fluctuation
    ([1.0], [1.4], None),
    ([2.468], None, {"base": 1.23, "new": None, "material": False}),
    (None, [2.468], {"base": None, "new": 1.23, "material": False}),
    (None, None, None),
])
def test_env_diff_load(lb: list[float] | None, ln: list[float] | None, row: dict[str, Any] | None) -> None:
    def env(load: list[float] | None) -> dict[str, Any]:
        return {"cpu_count": 2} if load is None else {"cpu_count": 2, "load_avg": load}
    assert env_diff(env(lb), env(ln)) == ([] if row is None else [{"field": "load (1-min avg per core)", **row}])


# ------------------------------------------------------------------------------------------------------- compare_runs


def _run(name: str, env: dict[str, Any] | None = None, **tables: Table) -> Run:
    return Run(Path(name), dict(tables), env or {})


VALID = ("backend, batch_size, channels_last, compile_mode, device, device_name, direction, dtype, input_size, kernel, "
         "kernels, mode, model, output, provider, shape, timer")


def test_compare_runs_checks_match_ignore_and_completes_the_backend_axis() -> None:
    a, b = _run("a", models=_table(MODELS, [_model()])), _run("b", models=_table(MODELS, [_model()]))
    with pytest.raises(BadInputError) as e:
        compare_runs(a, b, Options(match_ignore=("dtype", "bogus")))
    assert str(e.value) == f"--match-ignore: unknown key field 'bogus'; valid: {VALID}"
    assert compare_runs(a, b).opts == Options()
    opts = Options(threshold=0.07, match_ignore=("dtype",))
    assert compare_runs(a, b, opts).opts is opts
    assert compare_runs(a, b, Options(match_ignore=("backend",))).opts.match_ignore == ("backend", "compile_mode")
    both = Options(match_ignore=("compile_mode", "backend"))
    assert compare_runs(a, b, both).opts is both


def test_runs_without_a_common_table_are_bad_input() -> None:
    a = _run("a", models=_table(MODELS, [_model()]), numerics=_table(CHECKS, [_check()]))
    b = _run("b", kernels=_table(KERNELS, [_kernel()]))
    with pytest.raises(BadInputError) as e:
        compare_runs(a, b)
    assert str(e.value) == "a and b have no table in common (models, numerics vs kernels)"
    with pytest.raises(BadInputError) as e:
        compare_runs(b, a)
    assert str(e.value) == "b and a have no table in common (kernels vs models, numerics)"


def test_rows_and_tables_on_one_side_only_are_unmatched() -> None:
    base = _run("a", models=_table(MODELS, [_model(batch_size=8), _model(status="error", p50=None)]),
                kernels=_table(KERNELS, [_kernel(), _kernel(shape="2x3x8x8")]))
    new = _run("b", models=_table(MODELS, [_model(status="oom", p50=None), _model(batch_size=4)]),
               numerics=_table(CHECKS, [_check()]))
    c = compare_runs(base, new)
    assert [(r["kind"], r["config"], r["verdict"]) for r in c.rows] == [("models", CFG, "status changed")]
    assert c.unmatched == [
        {"kind": "models", "side": "base", "config": "basic_cnn eager infer cuda fp32 b8"},
        {"kind": "models", "side": "new", "config": "basic_cnn eager infer cuda fp32 b4"},
        {"kind": "kernels", "side": "base", "config": "conv 1x3x8x8 fp32 fwd triton"},
        {"kind": "kernels", "side": "base", "config": "conv 2x3x8x8 fp32 fwd triton"},
        {"kind": "numerics", "side": "new", "config": "conv 1x3x8x8 fp32 fwd y"},
    ]
    assert (c.base, c.new, c.state_warnings) == (base, new, [])
    # the other way round (the kinds are visited models, kernels, numerics)
    c = compare_runs(new, base)
    assert [(u["kind"], u["side"]) for u in c.unmatched] == [("models", "base"), ("models", "new"),
                                                              ("kernels", "new"), ("kernels", "new"),
                                                              ("numerics", "base")]


def test_a_table_on_one_side_does_not_stop_the_next_kind() -> None:
    base = _run("a", kernels=_table(KERNELS, [_kernel()]), numerics=_table(CHECKS, [_check()]))
    new = _run("b", models=_table(MODELS, [_model()]), numerics=_table(CHECKS, [_check(status="fail")]))
    c = compare_runs(base, new)
    assert [(r["kind"], r["verdict"]) for r in c.rows] == [("numerics", "regression")]
    assert [(u["kind"], u["side"]) for u in c.unmatched] == [("models", "new"), ("kernels", "base")]
    assert c.state_warnings == []  # the models table is on one side only


def test_several_devices_are_named_per_row() -> None:
    def side() -> Table:
        return _table(MODELS, [_model(status="error", p50=None, device_name=d) for d in ("A100", "H100")])
    c = compare_runs(_run("a", models=side()), _run("b", models=side()))
    assert [r["config"] for r in c.rows] == [f"{CFG} @ A100", f"{CFG} @ H100"]
    # one device, several backends and timers: no device in the name
    rows = [_model(status="error", p50=None), _model(status="error", p50=None, backend="compile",
                                                     compile_mode="default", timer="flushed")]
    c = compare_runs(_run("a", models=_table(MODELS, rows)), _run("b", models=_table(MODELS, rows)))
    assert [r["config"] for r in c.rows] == [CFG, "basic_cnn compile infer cuda fp32 b1 timer=flushed"]
    # two devices, one on each side, paired across with --match-ignore device_name: no device in the name
    a = _table(MODELS, [_model(status="error", p50=None, device_name="A100")])
    b = _table(MODELS, [_model(status="error", p50=None, device_name="H100")])
    c = compare_runs(_run("a", models=a), _run("b", models=b), Options(match_ignore=("device_name",)))
    assert [r["config"] for r in c.rows] == [f"{CFG} (device_name: A100 → H100)"]


def test_compare_runs_adjusts_p_values_and_reads_machine_state_and_env() -> None:
    rng = np.random.default_rng(3)
    s = [4.0 * rng.lognormal(0, 0.03, 30) for _ in range(4)]
    b = [_model(p50=float(np.median(s[0])), cpu_capability="AVX2"),
         _model(p50=float(np.median(s[1])), batch_size=2, cpu_capability="AVX2")]
    n = [_model(p50=float(np.median(s[2])), cpu_capability="AVX512"),
         _model(p50=float(np.median(s[3])), batch_size=2, cpu_capability="AVX512")]
    base = _run("a", {"threads": 2}, models=_table(MODELS, b, s[:2]))
    new = _run("b", {"threads": 4}, models=_table(MODELS, n, s[2:]))
    c = compare_runs(base, new, Options(resamples=200))
    assert [r["q_value"] is not None and r["q_value"] >= r["p_value"] for r in c.rows] == [True, True]
    assert c.state_warnings == ["CPU ISA (ATen dispatch) differs: `AVX2` → `AVX512`"]
    assert c.env_diff == [{"field": "threads", "base": 2, "new": 4, "material": True}]


# ----------------------------------------------------------------------------------------------------------- counts


def test_counts() -> None:
    rows = [{"verdict": v, "regression": g} for v, g in (("slower", True), ("slower", 1), ("faster", False),
                                                          ("unchanged", 0), ("unchanged", True), ("unchanged", False),
                                                          ("regression", True), ("fixed", False))]
    unmatched = [{"side": s} for s in ("base", "new", "new")]
    c = Comparison(_run("a"), _run("b"), Options(), rows, unmatched, [])
    assert c.counts() == {"matched": 8, "slower": 2, "faster": 1, "unchanged": 3, "regressions": 4, "unmatched": 3,
                          "only_in_base": 1, "only_in_new": 2}
    assert Comparison(_run("a"), _run("b"), Options(), [], [], []).counts() == {
        "matched": 0, "slower": 0, "faster": 0, "unchanged": 0, "regressions": 0, "unmatched": 0, "only_in_base": 0,
        "only_in_new": 0}
    assert c.regressions == [rows[0], rows[1], rows[4], rows[6]]


# -------------------------------------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench compare")
    cmp.add_arguments(p)
    return p


def test_arguments_their_defaults_and_help() -> None:
    got = {a.dest: (tuple(a.option_strings), type(a).__name__, a.type, a.default, a.nargs, a.metavar, a.choices,
                    a.help) for a in _parser()._actions if a.dest != "help"}
    assert got == {
        "base": ((), "_StoreAction", None, None, None, None, None, "baseline run directory or CSV"),
        "new": ((), "_StoreAction", None, None, None, None, None, "new run directory or CSV"),
        "threshold": (("--threshold",), "_StoreAction", float, 0.05, None, None, None,
                      "minimum |ratio - 1| to call a change (0.05)"),
        "single_run_threshold": (("--single-run-threshold",), "_StoreAction", float, 0.25, None, None, None,
                                 "minimum |ratio - 1| for a CPU config under 1 ms measured in one run per side, where "
                                 "drift between runs is not covered (0.25)"),
        "mem_threshold": (("--mem-threshold",), "_StoreAction", float, 0.10, None, None, None,
                          "peak-memory change to flag (0.10)"),
        "compile_threshold": (("--compile-threshold",), "_StoreAction", float, 0.25, None, None, None,
                              "compile_ms (first call) change to report, not a regression (0.25)"),
        "confidence": (("--confidence",), "_StoreAction", float, 0.95, None, None, None,
                       "bootstrap interval / test level (0.95)"),
        "resamples": (("--resamples",), "_StoreAction", int, 2000, None, None, None, "bootstrap resamples (2000)"),
        "seed": (("--seed",), "_StoreAction", int, 0, None, None, None, "bootstrap seed (0)"),
        "match_ignore": (("--match-ignore",), "_StoreAction", None, [], "+", "FIELD", None,
                         "key fields to ignore when matching, e.g. backend (eager run vs compile run)"),
        "pool_runs": (("--pool-runs",), "_StoreTrueAction", None, False, 0, None, None,
                      "treat a config's repetitions as one run (per-sample statistics, drift not covered): the "
                      "comparison without run-level statistics, e.g. to measure what they change"),
        "format": (("--format",), "_StoreAction", None, "md", None, None, ["md", "csv", "json"], None),
        "out": (("--out",), "_StoreAction", None, None, None, None, None, "write the report here instead of stdout"),
        "fdr": (("--no-fdr",), "_StoreFalseAction", None, True, 0, None, None,
                "judge each config by its own p-value (default: Benjamini–Hochberg q over all configs)"),
        "fail_on_regression": (("--fail-on-regression",), "_StoreTrueAction", None, False, 0, None, None,
                               "exit 1 if any config is significantly slower, fails where it passed, or grew in "
                               "memory"),
    }


def _write(d: Path, p50: float, mem: float = 100.0) -> Path:
    """A run directory with one models row (no samples: the p20-p80 rule decides)."""
    d.mkdir(parents=True)
    with (d / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "backend", "mode", "device", "dtype", "batch_size", "status", "latency_ms_p50",
                    "latency_ms_p20", "latency_ms_p80", "peak_mem_mb", "device_name"])
        w.writerow(["basic_cnn", "eager", "infer", "cuda", "fp32", 1, "ok", p50, p50 * 0.95, p50 * 1.05, mem, "A100"])
    return d


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path / "base", 2.0), _write(tmp_path / "new", 3.0)


def test_main_passes_every_option(runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Options] = []
    real = cmp.compare_runs

    def spy(base: Run, new: Run, opts: Options) -> Comparison:
        assert (base.path, new.path) == runs
        seen.append(opts)
        return real(base, new, opts)

    monkeypatch.setattr(cmp, "compare_runs", spy)
    a, b = map(str, runs)
    assert cmp.main(_parser().parse_args([a, b])) == 0
    assert cmp.main(_parser().parse_args([
        a, b, "--threshold", "0.07", "--mem-threshold", "0.2", "--confidence", "0.9", "--resamples", "150", "--seed",
        "3", "--match-ignore", "batch_size", "dtype", "--no-fdr", "--single-run-threshold", "0.3", "--pool-runs",
        "--compile-threshold", "0.4"])) == 0
    # a caller's namespace without the later options gets their defaults
    ns = argparse.Namespace(base=a, new=b, threshold=0.06, mem_threshold=0.11, confidence=0.8, resamples=120, seed=4,
                            match_ignore=[], format="md", out=None, fail_on_regression=False)
    assert cmp.main(ns) == 0
    assert seen == [Options(), Options(0.07, 0.2, 0.9, 150, 3, ("batch_size", "dtype"), False, 0.3, True, 0.4),
                    Options(0.06, 0.11, 0.8, 120, 4, (), True, 0.25, False, 0.25)]
    capsys.readouterr()


@pytest.mark.parametrize(("args", "msg"), [
    (["--threshold", "-0.01"], "--threshold must be >= 0, got -0.01"),
    (["--mem-threshold", "-0.5"], "--mem-threshold must be >= 0, got -0.5"),
    (["--confidence", "0"], "--confidence must be between 0 and 1, got 0.0"),
    (["--confidence", "1"], "--confidence must be between 0 and 1, got 1.0"),
    (["--confidence", "1.5"], "--confidence must be between 0 and 1, got 1.5"),
    (["--resamples", "99"], "--resamples must be at least 100, got 99"),
])
def test_main_rejects_bad_options(runs: tuple[Path, Path], args: list[str], msg: str) -> None:
    with pytest.raises(BadInputError) as e:
        cmp.main(_parser().parse_args([*map(str, runs), *args]))
    assert str(e.value) == msg


def test_main_accepts_the_edges_of_the_options(runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--threshold", "0"], ["--mem-threshold", "0"], ["--resamples", "100"], ["--confidence", "0.5"]):
        assert cmp.main(_parser().parse_args([*map(str, runs), *extra])) == 0
    capsys.readouterr()


def test_main_formats_outputs_and_exit_code(runs: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b = map(str, runs)
    c = compare_runs(load_run(a), load_run(b))
    assert [r["verdict"] for r in c.rows] == ["slower"]
    for fmt, render in (("md", render_markdown), ("csv", render_csv), ("json", render_json)):
        assert cmp.main(_parser().parse_args([a, b, "--format", fmt])) == 0
        assert capsys.readouterr().out == render(c)
    assert cmp.main(_parser().parse_args([a, b])) == 0 and capsys.readouterr().out == render_markdown(c)
    out = tmp_path / "x" / "y" / "report.csv"  # parents created
    assert cmp.main(_parser().parse_args([a, b, "--format", "csv", "--out", str(out), "--fail-on-regression"])) == 1
    assert out.read_text() == render_csv(c)
    assert capsys.readouterr().out == f"{summary_line(c)}\nwrote {out}\n"
    out2 = out.with_name("report.md")  # its folder exists now
    assert cmp.main(_parser().parse_args([a, b, "--out", str(out2)])) == 0
    assert out2.read_text() == render_markdown(c)
    capsys.readouterr()
    # nothing regressed: --fail-on-regression exits 0
    assert cmp.main(_parser().parse_args([a, a, "--fail-on-regression"])) == 0
    capsys.readouterr()
