"""Repetitions and drift: ``run --repeats``, run-level statistics in ``compare``, machine state, shards, ab."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.ab import abba_order
from bench.cli import main
from bench.compare import Options, compare_runs, load_run
from bench.compare_stats import RUN_LEVEL, SAMPLE_LEVEL
from bench.config import Config
from bench.io import RowWriter, append_jsonl, read_jsonl, read_results
from bench.machine_state import cpu_isa_flags, snapshot, state_warnings
from bench.repeats import schedule
from bench.runner import RESULT_COLUMNS, RunOptions
from bench.stats import compare_repeated
from bench.sweep import run_sweep

import fake_models

REPO = Path(__file__).resolve().parents[2]
FAST_OPTS = RunOptions(warmup_s=0.0, min_time_s=0.02, threads=1, count_flops=False)


@pytest.fixture
def fakes():
    fake_models.register_all()
    yield
    fake_models.unregister_all()


def _cfg(batch: int = 1, model: str = "basic_cnn") -> Config:
    return Config(model, "eager", "infer", "cpu", "fp32", batch)


# --- run --repeats ---------------------------------------------------------------------------------------------------


def test_schedule_is_round_robin_and_reverses_every_other_round() -> None:
    a, b, c = _cfg(1), _cfg(2), _cfg(3)
    order = [(cfg.batch_size, rep) for cfg, rep in schedule([a, b, c], 3)]
    assert order == [(1, 0), (2, 0), (3, 0), (3, 1), (2, 1), (1, 1), (1, 2), (2, 2), (3, 2)]
    assert schedule([a, b], 2, {(a.key(), 0), (b.key(), 1)}) == [(b, 0), (a, 1)]
    with pytest.raises(ValueError):
        schedule([a], 0)


def test_repeats_keep_a_row_and_samples_per_rep_and_resume_fills_gaps(tmp_path: Path, fakes: None) -> None:
    cfgs = [Config("fake_ok", "eager", "infer", "cpu", "fp32", b) for b in (1, 2)]
    rows = run_sweep(cfgs, tmp_path, FAST_OPTS, progress=False, repeats=3)
    assert [(r["batch_size"], r["rep"]) for r in rows] == [(1, 0), (2, 0), (2, 1), (1, 1), (1, 2), (2, 2)]
    df = read_results(tmp_path / "results.csv")
    assert len(df) == 6 and set(df["status"]) == {"ok"} and sorted(df["rep"].astype(int)) == [0, 0, 1, 1, 2, 2]
    assert df["cpu_capability"].notna().all() and df["loadavg_1m"].notna().all()  # machine state per row
    recs = read_jsonl(tmp_path / "samples.jsonl")
    assert sorted((r["batch_size"], r["rep"]) for r in recs) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert json.loads((tmp_path / "sweep.json").read_text())["repeats"] == 3
    # A sweep killed before its last repetition: --resume measures exactly the missing (config, rep).
    for name in ("results.csv", "samples.jsonl"):
        lines = (tmp_path / name).read_text().splitlines(keepends=True)
        (tmp_path / name).write_text("".join(lines[:-1]))
    again = run_sweep(cfgs, tmp_path, FAST_OPTS, progress=False, repeats=3, resume=True)
    assert [(r["batch_size"], r["rep"]) for r in again] == [(2, 2)]
    # The report has one line per config, aggregated over its runs.
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md.count("| infer | cpu | fp32 | eager |") == 2 and "3 runs, spread" in md
    # Two such directories compare at the level of runs.
    run_sweep(cfgs, tmp_path / "b", FAST_OPTS, progress=False, repeats=3)
    c = compare_runs(load_run(tmp_path), load_run(tmp_path / "b"))
    assert len(c.rows) == 2 and {r["method"] for r in c.rows} == {RUN_LEVEL}
    assert all(r["reps_base"] == 3 and r["reps_new"] == 3 and r["spread"] is not None for r in c.rows)


def test_bad_repeats_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--models", "basic_cnn", "--repeats", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--repeats" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --- run-level statistics --------------------------------------------------------------------------------------------


def _write(d: Path, runs: dict[Config, list[np.ndarray]], reps: bool = True, extra: dict[str, Any] | None = None
           ) -> Path:
    """A run directory with one row and samples record per config and repetition (``reps=False``: all of a
    config's samples pooled into one run, as a sweep without --repeats would see them)."""
    d.mkdir(parents=True)
    w = RowWriter(d / "results.csv", RESULT_COLUMNS)
    for cfg, arrays in runs.items():
        for rep, s in enumerate(arrays if reps else [np.concatenate(arrays)]):
            q = np.quantile(s, [0.2, 0.5, 0.8])
            w.append({**cfg.as_dict(), "rep": rep, "status": "ok", "latency_ms_p20": q[0], "latency_ms_p50": q[1],
                      "latency_ms_p80": q[2], "n_samples": len(s), **(extra or {})})
            append_jsonl(d / "samples.jsonl", {"key": list(cfg.key()), "rep": rep, **cfg.as_dict(),
                                               "samples_ms": list(s)})
    return d


def _drifting(rng: np.random.Generator, median: float, k: int = 3, n: int = 60, drift: float = 0.08) -> list:
    """``k`` runs of ``n`` lognormal samples (2% CV), each run scaled by its own random factor (between-run drift)."""
    return [median * rng.lognormal(0, drift) * rng.lognormal(0, 0.02, n) for _ in range(k)]


def test_injected_drift_is_flagged_without_run_level_stats_and_not_with(tmp_path: Path) -> None:
    """Unchanged code, each repetition scaled by a random factor (8% between-run sd): the per-sample statistics
    call most configs changed; testing the runs' medians calls none; a true 40% slowdown is still found."""
    rng = np.random.default_rng(7)
    cfgs = [_cfg(b) for b in range(1, 13)]
    base = {c: _drifting(rng, 5.0) for c in cfgs}
    new = {c: _drifting(rng, 5.0) for c in cfgs}
    pooled = compare_runs(load_run(_write(tmp_path / "a1", base, reps=False)),
                          load_run(_write(tmp_path / "b1", new, reps=False)))
    runs = compare_runs(load_run(_write(tmp_path / "a3", base)), load_run(_write(tmp_path / "b3", new)))
    assert {r["method"] for r in pooled.rows} == {SAMPLE_LEVEL} and {r["method"] for r in runs.rows} == {RUN_LEVEL}
    flagged_pooled = sum(r["verdict"] != "unchanged" for r in pooled.rows)
    assert flagged_pooled >= 6, flagged_pooled  # drift reads as a change in most configs
    assert sum(r["verdict"] != "unchanged" for r in runs.rows) == 0
    slow = {_cfg(99): _drifting(rng, 5.0, drift=0.02)}
    slower = {_cfg(99): [1.4 * x for x in _drifting(rng, 5.0, drift=0.02)]}
    r = compare_runs(load_run(_write(tmp_path / "s", slow)), load_run(_write(tmp_path / "t", slower))).rows[0]
    assert r["verdict"] == "slower" and r["regression"] and 1.2 < r["ci_low"] < r["ratio"] < r["ci_high"] < 1.65


def test_a_change_inside_the_between_run_spread_is_not_a_verdict() -> None:
    rng = np.random.default_rng(3)
    base = [f * rng.lognormal(0, 0.005, 80) for f in (1.0, 1.3, 1.02)]  # one slow run: 30% spread
    new = [f * rng.lognormal(0, 0.005, 80) for f in (1.2, 1.21, 1.19)]
    est = compare_repeated(base, new, seed=1)
    assert est.spread == pytest.approx(0.3, abs=0.02) and est.ratio == pytest.approx(1.2 / 1.02, rel=0.02)
    with pytest.raises(ValueError):
        compare_repeated(base[:1], new)


def test_single_run_sub_ms_cpu_configs_need_the_wider_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    fast, slow = _cfg(1), _cfg(2)
    base = {fast: [rng.lognormal(np.log(0.5), 0.01, 50)], slow: [rng.lognormal(np.log(5.0), 0.01, 50)]}
    new = {fast: [1.15 * base[fast][0]], slow: [1.15 * base[slow][0]]}  # +15% both, very precise
    c = compare_runs(load_run(_write(tmp_path / "a", base)), load_run(_write(tmp_path / "b", new)))
    by = {r["config"]: r for r in c.rows}
    assert by[fast.label()]["verdict"] == "unchanged" and by[fast.label()]["threshold"] == 0.25
    assert by[slow.label()]["verdict"] == "slower" and by[slow.label()]["threshold"] == 0.05
    c = compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"), Options(single_run_threshold=0.1))
    assert {r["verdict"] for r in c.rows} == {"slower"}


# --- machine state ---------------------------------------------------------------------------------------------------


def test_cpu_state_and_isa_flags() -> None:
    s = snapshot("cpu")
    assert s["cpu_capability"] and s["loadavg_1m"] is not None and "gpu_sm_mhz" not in s
    assert cpu_isa_flags("flags\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n") == \
        "avx512f avx512_bf16 amx_tile amx_bf16"
    assert cpu_isa_flags("flags\t: fpu sse avx2\n") == "none"


def test_gpu_state_from_nvml_and_its_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    fake = types.SimpleNamespace(
        NVMLError=RuntimeError, NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda u: "h", nvmlDeviceGetHandleByIndex=lambda i: "h",
        nvmlDeviceGetClockInfo=lambda h, kind: 1980 if kind == 0 else 2619,
        nvmlDeviceGetPowerUsage=lambda h: 612_000, nvmlDeviceGetTemperature=lambda h, kind: 71,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x4 | 0x20)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    s = snapshot("cuda")
    assert (s["gpu_sm_mhz"], s["gpu_mem_mhz"], s["gpu_power_w"], s["gpu_temp_c"]) == (1980, 2619, 612.0, 71)
    assert s["gpu_throttle"] == "sw_power_cap+sw_thermal" and "machine_note" not in s
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: empty GPU cells, a note saying why
    s = snapshot("cuda")
    assert "gpu_sm_mhz" not in s and "pynvml" in s["machine_note"]


def test_compare_warns_when_isa_clocks_or_throttling_differ(tmp_path: Path) -> None:
    same = {"cpu_capability": "AVX2", "cpu_mhz": 2400, "gpu_sm_mhz": 1980, "gpu_throttle": "none", "loadavg_1m": 1}
    assert state_warnings([same], [dict(same)]) == []
    other = {**same, "cpu_capability": "AVX512", "gpu_sm_mhz": 1500, "gpu_throttle": "hw_thermal", "loadavg_1m": 5}
    w = " ".join(state_warnings([same], [other]))
    assert "AVX2" in w and "AVX512" in w and "GPU SM clock 1980 → 1500" in w and "hw_thermal" in w and "load" in w
    rng = np.random.default_rng(0)
    runs = {_cfg(): _drifting(rng, 5.0)}
    c = compare_runs(load_run(_write(tmp_path / "a", runs, extra=same)),
                     load_run(_write(tmp_path / "b", runs, extra=other)))
    assert c.state_warnings and "machine state differs" in main_md(c)


def main_md(c: Any) -> str:
    from bench.compare import render_markdown

    return render_markdown(c)


# --- shards and bench ab ---------------------------------------------------------------------------------------------


def test_shards_with_repeats_merge_without_gaps(tmp_path: Path, fakes: None) -> None:
    from bench.merge import merge_runs

    cfgs = [Config("fake_ok", "eager", "infer", "cpu", "fp32", b) for b in (1, 2)]
    for i, part in enumerate(([cfgs[0]], [cfgs[1]])):
        run_sweep(part, tmp_path / f"s{i}", FAST_OPTS, progress=False, repeats=2, sweep_configs=cfgs,
                  shard=f"{i}/2")
    res = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")
    assert res.n_rows == 4 and not res.gaps and not res.duplicates
    assert len(read_jsonl(tmp_path / "m" / "samples.jsonl")) == 4
    (tmp_path / "s1" / "results.csv").write_text(
        "".join((tmp_path / "s1" / "results.csv").read_text().splitlines(keepends=True)[:-1]))
    res = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m2")
    assert res.gaps == ["fake_ok eager infer cpu fp32 b2 rep 2/2"]


def test_abba_order() -> None:
    assert abba_order(3) == ["base", "head", "head", "base", "base", "head"]


def test_bench_ab_end_to_end_on_two_worktrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """HEAD against HEAD~0 through real worktrees and `bench run` subprocesses: both run dirs with 2 runs each in
    ABBA order, each run importing its worktree's commit, and the run-level comparison."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "bench"))
    monkeypatch.setenv("VISIONBENCH_PLUGINS", "fake_models")
    monkeypatch.chdir(REPO)
    out = tmp_path / "ab"
    assert main(["ab", "HEAD", "HEAD~0", "--repeats", "2", "--out", str(out), "--models", "fake_ok", "--min-time-s",
                 "0.02", "--warmup-s", "0", "--no-flops", "--threads", "1"]) == 0
    doc = json.loads((out / "ab.json").read_text())
    assert [r["side"] for r in doc["runs"]] == ["base", "head", "head", "base"] and doc["base_sha"] == doc["head_sha"]
    for side in ("base", "head"):
        df = read_results(out / side / "results.csv")
        assert sorted(df["rep"].astype(int)) == [0, 1] and set(df["status"]) == {"ok"}
        assert json.loads((out / side / "env.json").read_text())["git_sha"].startswith(doc["head_sha"][:7])
    c = json.loads((out / "compare.json").read_text())
    assert c["summary"]["matched"] == 1 and c["rows"][0]["method"] == RUN_LEVEL
    assert (out / "compare.md").read_text().startswith("## visionbench compare")
    listed = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True).stdout
    assert not [t for t in doc["worktrees"].values() if t in listed or Path(t).exists()]  # removed afterwards
    capsys.readouterr()
    assert main(["ab", "no-such-ref", "HEAD", "--out", str(tmp_path / "x"), "--models", "fake_ok"]) == 2
    assert "no-such-ref" in capsys.readouterr().err and not (tmp_path / "x").exists()
