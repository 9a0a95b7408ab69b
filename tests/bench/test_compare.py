"""``bench compare``: statistics, verdicts, matching, output formats and bad input, on synthetic and real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.cli import main as cli_main
from bench.compare import Options, compare_runs, load_run, render_markdown
from bench.config import Config
from bench.io import BadInputError, RowWriter, append_jsonl
from bench.runner import RESULT_COLUMNS
from bench.stats import _boot_medians, benjamini_hochberg, bootstrap_ratio_ci, compare_samples, mann_whitney_p

ENV = {"cpu_model": "Test CPU", "threads": 2, "torch_version": "2.14.1", "triton_version": "3.8.0",
       "host": "h", "gpus": [], "git_sha": "abc", "python": "3.11"}


def _cfg(model: str = "basic_cnn", batch: int = 1, dtype: str = "fp32", backend: str = "eager") -> Config:
    return Config(model, backend, "infer", "cpu", dtype, batch)


def write_run(d: Path, configs: dict[Config, np.ndarray | None], env: dict[str, Any] | None = None,
              extra: dict[Config, dict[str, Any]] | None = None) -> Path:
    """A run directory like ``run_sweep`` writes: results.csv (+ samples.jsonl for configs with samples)."""
    d.mkdir(parents=True, exist_ok=True)
    w = RowWriter(d / "results.csv", RESULT_COLUMNS)
    for cfg, s in configs.items():
        row: dict[str, Any] = {**cfg.as_dict(), "status": "ok", "gflops": 0.5, "peak_mem_mb": 100.0}
        if s is not None:
            q = np.quantile(s, [0.2, 0.5, 0.8])
            row.update(latency_ms_p20=q[0], latency_ms_p50=q[1], latency_ms_p80=q[2], n_samples=len(s))
            append_jsonl(d / "samples.jsonl", {"key": list(cfg.key()), **cfg.as_dict(), "samples_ms": list(s)})
        row.update((extra or {}).get(cfg, {}))
        w.append(row)
    (d / "env.json").write_text(json.dumps(env or ENV))
    return d


def lognormal(rng: np.random.Generator, median: float, cv: float, n: int) -> np.ndarray:
    sigma = np.sqrt(np.log1p(cv**2))  # lognormal with this coefficient of variation
    return median * rng.lognormal(0.0, sigma, n)


def run_cli(*args: str) -> int:
    return cli_main(["compare", *map(str, args)])


# --- statistics ------------------------------------------------------------------------------------------------------


def test_fast_bootstrap_medians_match_explicit_resampling() -> None:
    rng = np.random.default_rng(1)
    for n in (5, 8, 31):  # odd and even sample counts
        x = lognormal(rng, 1.0, 0.3, n)
        fast = _boot_medians(x, 40_000, np.random.default_rng(2))
        slow = np.median(x[np.random.default_rng(3).integers(0, n, (40_000, n))], axis=1)
        q = [0.025, 0.25, 0.5, 0.75, 0.975]
        np.testing.assert_allclose(np.quantile(fast, q), np.quantile(slow, q), rtol=0.02)
        assert abs(fast.mean() - slow.mean()) < 0.01


def test_mann_whitney_known_values() -> None:
    # Complete separation of 5 vs 5: scipy's exact test (small samples, no ties) gives two-sided p = 2/252 = 0.0079.
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252, rel=1e-9)
    assert 0.005 < mann_whitney_p([1, 2, 3, 4, 5, 5], [5, 6, 7, 8, 9, 10]) < 0.02  # one tie across the groups
    assert mann_whitney_p([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert mann_whitney_p([2, 2, 2], [2, 2, 2]) == 1.0


def test_bootstrap_is_seeded_and_brackets_the_ratio() -> None:
    rng = np.random.default_rng(0)
    b, n = lognormal(rng, 10.0, 0.1, 40), lognormal(rng, 12.0, 0.1, 40)
    r1 = bootstrap_ratio_ci(b, n, seed=5)
    assert r1 == bootstrap_ratio_ci(b, n, seed=5)
    ratio, lo, hi = r1
    assert lo < ratio < hi and lo > 1.1 and hi < 1.35
    with pytest.raises(ValueError):
        compare_samples([1.0, 2.0], [1.0, 2.0, 3.0])  # below MIN_SAMPLES


# --- verdicts on synthetic runs --------------------------------------------------------------------------------------


def test_identical_runs_report_no_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    cfgs = {_cfg(batch=b, dtype=dt): lognormal(rng, 2.0 * b, 0.1, 30) for b in (1, 2, 4) for dt in ("fp32", "bf16")}
    a = write_run(tmp_path / "a", cfgs)
    b = write_run(tmp_path / "b", cfgs)
    c = compare_runs(load_run(a), load_run(b))
    assert len(c.rows) == 6 and not c.unmatched and not c.env_diff
    assert {r["verdict"] for r in c.rows} == {"unchanged"}
    assert all(r["ratio"] == 1.0 and r["ci_low"] <= 1.0 <= r["ci_high"] for r in c.rows)
    assert run_cli(a, b, "--fail-on-regression") == 0
    out = capsys.readouterr().out
    assert "no regressions" in out and "0 slower, 0 faster, 6 unchanged" in out and "No significant changes" in out


def test_true_20pct_slowdown_is_flagged_and_gates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    slow_cfg, same_cfg = _cfg(batch=1), _cfg(batch=2)
    a = write_run(tmp_path / "a", {slow_cfg: lognormal(rng, 5.0, 0.05, 25), same_cfg: lognormal(rng, 9.0, 0.05, 25)})
    b = write_run(tmp_path / "b", {slow_cfg: lognormal(rng, 6.0, 0.05, 25), same_cfg: lognormal(rng, 9.0, 0.05, 25)})
    c = compare_runs(load_run(a), load_run(b))
    by = {r["config"]: r for r in c.rows}
    r = by[slow_cfg.label()]
    assert r["verdict"] == "slower" and r["regression"] and r["significant"]
    assert 1.1 < r["ci_low"] < r["ratio"] < r["ci_high"] < 1.3 and r["p_value"] < 1e-6
    assert by[same_cfg.label()]["verdict"] == "unchanged"
    assert run_cli(a, b) == 0  # without the flag the comparison itself succeeds
    assert run_cli(a, b, "--fail-on-regression") == 1
    md = capsys.readouterr().out
    # Significant table first, the unchanged config folded below it.
    sig, details = md.index("### Significant changes"), md.index("<details><summary>No significant change")
    assert sig < md.index(slow_cfg.label()) < details < md.index(same_cfg.label())
    # The reverse direction is a speed-up: not a regression.
    assert run_cli(b, a, "--fail-on-regression") == 0
    assert "🟢 faster" in capsys.readouterr().out


def test_noisy_unchanged_configs_are_not_flagged(tmp_path: Path) -> None:
    """40 configs, both runs drawn from the same lognormal (30% CV): the false-positive rate stays near alpha."""
    rng = np.random.default_rng(2)
    base = {_cfg(batch=b, dtype=dt): lognormal(rng, 3.0, 0.3, 30) for b in range(1, 21) for dt in ("fp32", "bf16")}
    new = {cfg: lognormal(rng, 3.0, 0.3, 30) for cfg in base}
    c = compare_runs(load_run(write_run(tmp_path / "a", base)), load_run(write_run(tmp_path / "b", new)))
    flagged = [r for r in c.rows if r["verdict"] != "unchanged"]
    assert len(c.rows) == 40 and len(flagged) <= 2  # <= 5% (about 3% expected for iid noise at n = 30)
    # The same noise with a true 20% slowdown and more samples is detected in every config.
    slow = {cfg: lognormal(rng, 3.6, 0.3, 200) for cfg in list(base)[:10]}
    ref = {cfg: lognormal(rng, 3.0, 0.3, 200) for cfg in slow}
    c = compare_runs(load_run(write_run(tmp_path / "c", ref)), load_run(write_run(tmp_path / "d", slow)))
    assert [r["verdict"] for r in c.rows] == ["slower"] * 10


def test_benjamini_hochberg_known_values() -> None:
    # sorted p: .005 .01 .03 .04 (m = 4) -> p*m/rank: .02 .02 .04 .04 -> running min from the top: same
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(q, [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(benjamini_hochberg([0.5, 0.01]), [0.5, 0.02])
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.8]), [0.9, 0.9])  # monotone: q never below a smaller p's
    assert benjamini_hochberg([]).size == 0
    with pytest.raises(ValueError):
        benjamini_hochberg([1.5])


def test_fdr_keeps_a_large_sweep_of_unchanged_configs_quiet(tmp_path: Path) -> None:
    """300 unchanged configs at --threshold 0 (any significant shift is called): raw p flags ~3% of them,
    Benjamini–Hochberg keeps false discoveries near zero, and true 15% slowdowns among them are still found."""
    rng = np.random.default_rng(11)
    same = [_cfg(batch=b, dtype=dt) for b in range(1, 151) for dt in ("fp32", "bf16")]
    slow = [_cfg(model="resnet18", batch=b) for b in range(1, 6)]
    base = {c: lognormal(rng, 3.0, 0.3, 60) for c in same + slow}
    new = {c: lognormal(rng, 3.0 * (1.15 if c in slow else 1.0), 0.3, 60) for c in base}
    base[slow[0]], new[slow[0]] = lognormal(rng, 3.0, 0.05, 200), lognormal(rng, 3.45, 0.05, 200)
    a, b = load_run(write_run(tmp_path / "a", base)), load_run(write_run(tmp_path / "b", new))
    raw = compare_runs(a, b, Options(threshold=0.0, fdr=False))
    adj = compare_runs(a, b, Options(threshold=0.0))
    label = {r["config"]: r for r in adj.rows}

    def false_calls(c: Any) -> int:
        return sum(r["verdict"] != "unchanged" for r in c.rows if not r["config"].startswith("resnet18"))

    assert false_calls(raw) >= 3  # the raw per-config test (CI and p): ~9 expected of 300
    assert false_calls(adj) <= 1
    assert all(r["q_value"] is not None and r["q_value"] >= r["p_value"] for r in adj.rows)
    precise = next(r for cfg, r in label.items() if cfg.startswith("resnet18") and r["n_base"] == 200)
    assert precise["verdict"] == "slower" and precise["regression"]
    assert "Benjamini–Hochberg" in render_markdown(adj) and "not adjusted" in render_markdown(raw)


def test_significant_but_below_threshold_is_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cfg = _cfg()
    a = write_run(tmp_path / "a", {cfg: lognormal(rng, 10.0, 0.005, 40)})
    b = write_run(tmp_path / "b", {cfg: lognormal(rng, 10.2, 0.005, 40)})  # +2%, very precise
    r = compare_runs(load_run(a), load_run(b)).rows[0]
    assert r["significant"] and r["verdict"] == "unchanged"
    r = compare_runs(load_run(a), load_run(b), Options(threshold=0.01)).rows[0]
    assert r["verdict"] == "slower"


def test_status_flops_memory_and_env_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    oom, flops, mem, gone, added = (_cfg(batch=8), _cfg(batch=2), _cfg(batch=4), _cfg(batch=16), _cfg(batch=32))
    s = {c: lognormal(rng, 4.0, 0.02, 20) for c in (oom, flops, mem, gone, added)}
    a = write_run(tmp_path / "a", {oom: s[oom], flops: s[flops], mem: s[mem], gone: s[gone]})
    b = write_run(tmp_path / "b", {oom: None, flops: s[flops], mem: s[mem], added: s[added]},
                  env={**ENV, "threads": 1, "torch_version": "2.15.0", "git_sha": "def"},
                  extra={oom: {"status": "oom", "error": "OutOfMemoryError: CUDA out of memory"},
                         flops: {"gflops": 0.6, "noisy": True}, mem: {"peak_mem_mb": 150.0}})
    c = compare_runs(load_run(a), load_run(b))
    by = {r["config"]: r for r in c.rows}
    assert by[oom.label()]["verdict"] == "regression" and by[oom.label()]["regression"]
    assert "status ok → oom: OutOfMemoryError" in by[oom.label()]["notes"][0]
    assert by[flops.label()]["verdict"] == "unchanged" and not by[flops.label()]["regression"]
    assert any(n.startswith("gflops 0.5 → 0.6 (+20.0%)") for n in by[flops.label()]["notes"])
    assert by[mem.label()]["regression"] and any("peak memory 100 → 150 MB (+50.0%)" in n
                                                 for n in by[mem.label()]["notes"])
    assert {(u["side"], u["config"]) for u in c.unmatched} == {("base", gone.label()), ("new", added.label())}
    diff = {d["field"]: d for d in c.env_diff}
    assert diff["threads"]["material"] and diff["torch"]["new"] == "2.15.0" and not diff["git"]["material"]
    md = render_markdown(c)
    assert "environments differ" in md and "threads `2` → `1`" in md
    assert "1 of 3 configs were flagged noisy" in md and "new flagged noisy" in by[flops.label()]["notes"]
    assert f"only in base (models): {gone.label()}" in md and f"only in new (models): {added.label()}" in md
    assert "❌ **2 regression(s)**" in md.splitlines()[2]
    assert run_cli(a, b, "--fail-on-regression") == 1
    capsys.readouterr()


def test_match_ignore_pairs_eager_with_compile(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = write_run(tmp_path / "a", {_cfg(backend="eager"): lognormal(rng, 8.0, 0.03, 20)})
    b = write_run(tmp_path / "b", {_cfg(backend="compile"): lognormal(rng, 6.0, 0.03, 20)})
    c = compare_runs(load_run(a), load_run(b))
    assert not c.rows and len(c.unmatched) == 2  # listed, never dropped silently
    c = compare_runs(load_run(a), load_run(b), Options(match_ignore=("backend",)))
    assert len(c.rows) == 1 and not c.unmatched
    r = c.rows[0]
    assert r["verdict"] == "faster" and "(backend: eager → compile)" in r["config"]


def test_csv_and_json_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(6)
    a = write_run(tmp_path / "a", {_cfg(): lognormal(rng, 5.0, 0.05, 20), _cfg(batch=2): lognormal(rng, 5, 0.05, 20)})
    b = write_run(tmp_path / "b", {_cfg(): lognormal(rng, 7.0, 0.05, 20)})
    assert run_cli(a, b, "--format", "json", "--out", tmp_path / "c.json") == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["summary"]["slower"] == 1 and doc["summary"]["only_in_base"] == 1
    assert doc["rows"][0]["verdict"] == "slower" and doc["options"]["threshold"] == 0.05
    assert "wrote" in capsys.readouterr().out
    assert run_cli(a, b, "--format", "csv") == 0
    import csv as _csv

    rows = list(_csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["verdict"] for r in rows] == ["slower", "only_in_base"]
    assert float(rows[0]["ratio"]) == pytest.approx(1.4, rel=0.1)


def test_kernels_tables_and_numerics(tmp_path: Path) -> None:
    """kernels.csv rows match on (kernel, shape, dtype, direction, provider); kernels_check pass → fail is flagged."""
    def write(d: Path, p50: float, status: str, check: str) -> Path:
        d.mkdir()
        hdr = "kernel,shape,dtype,direction,provider,status,message,p50_us,p20_us,p80_us,n_samples,flops,bytes\n"
        (d / "kernels.csv").write_text(hdr + f"window_attention,small,bf16,forward,triton,ok,,{p50},{p50 * 0.98},"
                                       f"{p50 * 1.02},100,1000,2000\nwindow_attention,small,bf16,forward,eager,ok,,50,"
                                       "49,51,100,1000,2000\n")
        (d / "kernels_check.csv").write_text("kernel,shape,dtype,direction,output,status,message\n"
                                             f"window_attention,small,bf16,forward,out,{check},"
                                             f"{'max_abs 1 > 0.1' if check == 'fail' else ''}\n")
        (d / "env.json").write_text(json.dumps(ENV))
        return d

    a, b = write(tmp_path / "a", 20.0, "ok", "pass"), write(tmp_path / "b", 30.0, "ok", "fail")
    c = compare_runs(load_run(a), load_run(b))
    by = {(r["kind"], r["config"]): r for r in c.rows}
    trit = by[("kernels", "window_attention small bf16 forward triton")]
    assert trit["verdict"] == "slower" and trit["method"] == "p20-p80 overlap (no samples)"
    assert by[("kernels", "window_attention small bf16 forward eager")]["verdict"] == "unchanged"
    num = by[("numerics", "window_attention small bf16 forward out")]
    assert num["verdict"] == "regression" and "pass → fail: max_abs 1 > 0.1" in num["notes"][0]


def test_kernel_bench_samples_feed_the_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench kernels --bench`` rows and their raw samples (kernels_samples.jsonl), written by the real writer from
    real ``bench_case`` rows on the CPU (the CUDA-event timer alone is replaced by seeded samples: 20% slower in the
    new run for the eager provider, unchanged for compile), are compared by bootstrap, not by the p20-p80 fallback."""
    import kernels  # noqa: F401 - registers the kernels
    from bench.kernelbench import microbench
    from bench.kernelbench.cli import SAMPLES_JSONL, write_bench_rows
    from bench.kernelbench.microbench import BENCH_COLUMNS, bench_case
    from bench.timing import summarize
    from kernels.registry import get_kernel

    spec = get_kernel("depthwise_conv")
    shape_name, shape = next(iter(spec.test_shapes.items()))

    def run(d: Path, slow: float, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        calls = []

        def fake_time(fn: Any, warmup_ms: float, rep_ms: float) -> dict[str, Any]:
            fn()  # the provider really runs once
            calls.append(1)
            factor = slow if len(calls) == 1 else 1.0  # providers run in order: eager first
            us = list(100.0 * factor * rng.lognormal(0.0, 0.05, 300))
            q = summarize([u / 1e3 for u in us])
            return {"p50_us": q["p50"] * 1e3, "p20_us": q["p20"] * 1e3, "p80_us": q["p80"] * 1e3,
                    "n_samples": len(us), "warm_p50_us": q["p50"] * 1e3, "samples_us": us}

        monkeypatch.setattr(microbench, "_time", fake_time)
        rows = bench_case(spec, shape_name, shape, torch.float32, "forward", ["eager", "compile"], "cpu", None)
        assert [r["status"] for r in rows] == ["ok", "ok"], rows
        env = {"device_name": "test-cpu"}
        writer = RowWriter(d / "kernels.csv", BENCH_COLUMNS + ["device_name"])
        write_bench_rows(rows, writer, d / SAMPLES_JSONL, env)
        (d / "env.json").write_text(json.dumps(ENV))
        return d

    a, b = run(tmp_path / "a", 1.0, 1), run(tmp_path / "b", 1.2, 2)
    recs = [json.loads(line) for line in (a / SAMPLES_JSONL).read_text().splitlines()]
    assert [r["provider"] for r in recs] == ["eager", "compile"] and all(len(r["samples_us"]) == 300 for r in recs)
    # One run per side of a 100 µs CPU case: +20% is inside the single-run drift threshold (25%) by default...
    c = compare_runs(load_run(a), load_run(b))
    assert {r["verdict"] for r in c.rows if r["kind"] == "kernels"} == {"unchanged"}
    # ...and called once the caller accepts the drift risk.
    c = compare_runs(load_run(a), load_run(b), Options(single_run_threshold=0.0))
    by = {r["config"]: r for r in c.rows if r["kind"] == "kernels"}
    eager = by[f"depthwise_conv {shape_name} fp32 forward eager"]
    comp = by[f"depthwise_conv {shape_name} fp32 forward compile"]
    assert eager["method"] == comp["method"] == "bootstrap+mann-whitney"
    assert eager["verdict"] == "slower" and eager["ci_low"] < 1.2 < eager["ci_high"]
    assert comp["verdict"] == "unchanged"


# --- bad input: one line naming file and line, exit 2 ----------------------------------------------------------------


def _good(tmp_path: Path, name: str = "good") -> Path:
    rng = np.random.default_rng(7)
    return write_run(tmp_path / name, {_cfg(batch=b): lognormal(rng, 3.0, 0.1, 10) for b in (1, 2)})


def _edit_csv(d: Path, fn: Any) -> None:
    p = d / "results.csv"
    p.write_text(fn(p.read_text()))


@pytest.mark.parametrize("case, expect", [
    ("missing_dir", "nope: no such file or directory"),
    ("empty_dir", "empty: no results.csv, kernels.csv or kernels_check.csv"),
    ("missing_column", "results.csv:1: missing columns ['latency_ms_p50']"),
    ("duplicate_key", "results.csv:4: duplicate config key"),
    ("truncated", "results.csv:3: truncated last line"),
    ("text_in_number", "results.csv:3: column 'latency_ms_p50' has non-numeric value 'fast'"),
    ("short_row", "results.csv:2: expected"),
    ("bad_samples", "samples.jsonl:2: not valid JSON"),
    ("samples_not_numbers", "samples.jsonl:1: samples must be a list of numbers"),
    ("bad_env", "env.json:1: not valid JSON"),
    ("not_results_csv", "x.csv:1: not a visionbench"),
])
def test_bad_input_exits_2_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
                                              expect: str) -> None:
    good = _good(tmp_path)
    bad = _good(tmp_path, "bad")
    if case == "missing_dir":
        bad = tmp_path / "nope"
    elif case == "empty_dir":
        bad = tmp_path / "empty"
        bad.mkdir()
    elif case == "missing_column":
        _edit_csv(bad, lambda t: t.replace("latency_ms_p50,", "latency_ms_p5O,", 1))
    elif case == "duplicate_key":
        _edit_csv(bad, lambda t: t + t.splitlines()[1] + "\n")
    elif case == "truncated":
        _edit_csv(bad, lambda t: t[:-25])
    elif case == "text_in_number":
        def sub(t: str) -> str:
            lines = t.splitlines()
            cells = lines[2].split(",")
            cells[RESULT_COLUMNS.index("latency_ms_p50")] = "fast"
            lines[2] = ",".join(cells)
            return "\n".join(lines) + "\n"
        _edit_csv(bad, sub)
    elif case == "short_row":
        _edit_csv(bad, lambda t: t.replace("\n", "\nbasic_cnn,eager\n", 1))
    elif case == "bad_samples":
        p = bad / "samples.jsonl"
        p.write_text(p.read_text()[:-30])
    elif case == "samples_not_numbers":
        p = bad / "samples.jsonl"
        rec = json.loads(p.read_text().splitlines()[0])
        p.write_text(json.dumps({**rec, "samples_ms": ["1.0", "x"]}) + "\n")
    elif case == "bad_env":
        (bad / "env.json").write_text("{not json")
    elif case == "not_results_csv":
        bad = tmp_path / "x.csv"
        bad.write_text("a,b\n1,2\n")
    assert run_cli(good, bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and "Traceback" not in err
    assert run_cli(bad, good, "--fail-on-regression") == 2  # either side, and nothing compared on garbage
    assert capsys.readouterr().out == ""


def test_bad_options_and_ambiguous_match_ignore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _good(tmp_path)
    assert run_cli(good, good, "--confidence", "1.5") == 2
    assert run_cli(good, good, "--match-ignore", "colour") == 2
    assert "unknown key field 'colour'" in capsys.readouterr().err
    # Ignoring batch_size makes the two batch sizes collide: ambiguous, refused with the line.
    assert run_cli(good, good, "--match-ignore", "batch_size") == 2
    assert "results.csv:3: same key as line 2 once batch_size is ignored" in capsys.readouterr().err


# --- real runs -------------------------------------------------------------------------------------------------------


def test_two_real_cpu_runs_of_the_same_config_compare_cleanly(tmp_path: Path) -> None:
    """End to end on real samples: the same tiny config measured twice through ``run_sweep``.

    The verdict itself depends on this machine's load, so it is not asserted (the false-positive rate over repeated
    real runs is reported in the README); everything else about the comparison is.
    """
    from bench.runner import RunOptions
    from bench.sweep import run_sweep

    cfg = _cfg()
    opts = RunOptions(warmup_s=0.02, min_time_s=0.1, count_flops=False, threads=1)
    for name in ("a", "b"):
        rows = run_sweep([cfg], tmp_path / name, opts, progress=False)
        assert rows[0]["status"] == "ok", rows[0].get("error")
    base, new = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    (key,) = base.tables["models"].samples  # one config, keyed by its config key + device name
    assert key[:-1] == cfg.key() and len(base.tables["models"].samples[key]) >= 5
    c = compare_runs(base, new)
    assert len(c.rows) == 1 and not c.unmatched
    r = c.rows[0]
    assert r["method"] == "bootstrap+mann-whitney" and r["ci_low"] <= r["ratio"] <= r["ci_high"]
    assert r["verdict"] in ("unchanged", "slower", "faster") and 0 <= r["p_value"] <= 1
    assert not [d for d in c.env_diff if d["field"] in ("threads", "torch", "device")]


def test_runs_spanning_several_gpu_types_compare_device_by_device(tmp_path: Path) -> None:
    """A heterogeneous run (Ray cluster, merged shards) has one row per config and device; compare pairs rows of
    the same device, labels them, and lists a config whose device changed as unmatched (unless told to ignore it)."""
    from bench.runner import RESULT_COLUMNS

    def write(d: Path, rows: list[tuple[str, str, float]]) -> Path:
        d.mkdir()
        lines = [",".join(RESULT_COLUMNS)]
        for model, device, p50 in rows:
            r = dict.fromkeys(RESULT_COLUMNS, "")
            r.update(model=model, backend="eager", mode="infer", device="cuda", dtype="bf16", batch_size="8",
                     channels_last="False", input_size="0", status="ok", latency_ms_p50=str(p50),
                     latency_ms_p20=str(p50 * 0.99), latency_ms_p80=str(p50 * 1.01), device_name=device)
            lines.append(",".join(r[c] for c in RESULT_COLUMNS))
        (d / "results.csv").write_text("\n".join(lines) + "\n")
        return d

    a = write(tmp_path / "a", [("resnet50", "NVIDIA H100", 10.0), ("resnet50", "NVIDIA A100", 20.0),
                               ("swin_t", "NVIDIA A100", 30.0)])
    b = write(tmp_path / "b", [("resnet50", "NVIDIA H100", 10.0), ("resnet50", "NVIDIA A100", 30.0),
                               ("swin_t", "NVIDIA H100", 15.0)])
    c = compare_runs(load_run(a), load_run(b))
    by = {r["config"]: r for r in c.rows}
    assert by["resnet50 eager infer cuda bf16 b8 @ NVIDIA H100"]["verdict"] == "unchanged"
    assert by["resnet50 eager infer cuda bf16 b8 @ NVIDIA A100"]["verdict"] == "slower"
    assert {(u["side"], u["config"]) for u in c.unmatched} == {("base", "swin_t eager infer cuda bf16 b8"),
                                                             ("new", "swin_t eager infer cuda bf16 b8")}
    # Pairing across devices is explicit; with duplicates per config it is refused as ambiguous.
    with pytest.raises(BadInputError, match="cannot pair"):
        compare_runs(load_run(a), load_run(b), Options(match_ignore=("device_name",)))


def test_compile_time_changes_are_reported_and_cache_states_kept_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    slow, same, mixed = _cfg(backend="compile"), _cfg(batch=2, backend="compile"), _cfg(batch=4, backend="compile")
    s = {c: lognormal(rng, 4.0, 0.02, 20) for c in (slow, same, mixed)}
    cold = {"compile_cache": "cold: fresh Inductor and Triton cache dirs"}
    a = write_run(tmp_path / "a", s, extra={slow: {"compile_ms": 8000.0, **cold}, same: {"compile_ms": 8000.0, **cold},
                                           mixed: {"compile_ms": 8000.0, **cold}})
    b = write_run(tmp_path / "b", s, extra={slow: {"compile_ms": 12000.0, **cold}, same: {"compile_ms": 8800.0, **cold},
                                           mixed: {"compile_ms": 900.0, "compile_cache": "warm: shared caches"}})
    by = {r["config"]: r for r in compare_runs(load_run(a), load_run(b)).rows}
    assert "compile_ms 8000 → 12000 (+50.0%)" in by[slow.label()]["notes"]
    assert by[slow.label()]["compile_ratio"] == pytest.approx(1.5) and not by[slow.label()]["regression"]
    assert not any("compile_ms" in n for n in by[same.label()]["notes"])  # +10%: under --compile-threshold
    assert "compile_ms not comparable: compile cache cold → warm" in by[mixed.label()]["notes"]
