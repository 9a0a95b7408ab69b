"""``bench.compare_render`` value by value: the whole PR comment (markdown) of three comparisons, built in memory,
compared line by line, and the CSV and JSON of the same; the cells, verdict labels and which rows are notable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.compare import Comparison
from bench.compare_match import Run
from bench.compare_render import (
    _change_cell,
    _is_notable,
    _num,
    _verdict_cell,
    render_csv,
    render_json,
    render_markdown,
    summary_line,
)
from bench.compare_stats import RUN_LEVEL, SAMPLE_LEVEL, Options


def row(config: str, **kw: Any) -> dict[str, Any]:
    """A matched config as ``bench.compare._compare_pair`` returns it (defaults: an unchanged ok → ok models row)."""
    r = {"kind": "models", "config": config, "base_status": "ok", "new_status": "ok", "base_line": 2, "new_line": 3,
         "unit": "ms", "notes": [], "regression": False, "ratio": None, "ci_low": None, "ci_high": None,
         "p_value": None, "q_value": None, "mem_growth": False, "base_p50": None, "new_p50": None, "n_base": None,
         "n_new": None, "method": "", "significant": False, "reps_base": 1, "reps_new": 1, "spread": None,
         "verdict": "unchanged", "threshold": 0.05}
    return {**r, **kw}


def scenario_a() -> Comparison:
    """Every part of the report: env and machine-state warnings, both notes, notable and quiet rows of all kinds,
    unmatched configs, the environment diff, run-level statistics, FDR and --match-ignore."""
    rows = [
        row("a", verdict="slower", regression=True, ratio=1.2, ci_low=1.1, ci_high=1.3, p_value=0.001, q_value=0.002,
            base_p50=2.0, new_p50=2.4, method=RUN_LEVEL, reps_base=3, reps_new=3, spread=0.02, significant=True,
            notes=["runs 3 vs 3, between-run spread 2.0%"], n_base=60, n_new=60),
        row("b", kind="kernels", unit="µs", verdict="faster", ratio=0.5, ci_low=0.45, ci_high=0.55, p_value=1e-5,
            base_p50=24691.2, new_p50=12345.6, method=SAMPLE_LEVEL, significant=True),
        row("c", verdict="regression", regression=True, new_status="oom",
            notes=["status ok → oom: CUDA out of memory | try b1"]),
        row("d", verdict="fixed", base_status="error", notes=["status error → ok"]),
        row("e", within_spread=True, ratio=1.08, ci_low=1.01, ci_high=1.15, p_value=0.01, q_value=1e-4, base_p50=1.0,
            new_p50=1.08, method=RUN_LEVEL, notes=["runs 2 vs 2, between-run spread 9.0% (exceeds the change)"]),
        row("f", ratio=0.99, base_p50=3.0, new_p50=2.97, notes=["peak memory 120 → 100 MB (-16.7%)"],
            method="medians only (no samples, no p20/p80)"),
        row("g", ratio=1.01, ci_low=0.9, ci_high=1.12, p_value=0.5, q_value=0.75, base_p50=0.5, new_p50=0.505,
            method=SAMPLE_LEVEL, threshold=0.25,
            notes=["one run per side, CPU under 1 ms: threshold ±25%", "new flagged noisy"]),
        row("add 8 fp32 fwd y", kind="numerics", unit="", base_status="pass", new_status="pass"),
        row("add 8 fp32 fwd z", kind="numerics", unit="", base_status="pass", new_status="fail", verdict="regression",
            regression=True, notes=["status pass → fail: max_abs_err 0.5"]),
    ]
    unmatched = [{"kind": "models", "side": "base", "config": "u1"}, {"kind": "kernels", "side": "new", "config": "u2"},
                 {"kind": "models", "side": "new", "config": "u3"}]
    env_diff = [{"field": "torch", "base": "2.14.1", "new": "2.15.0", "material": True},
                {"field": "threads", "base": 2, "new": 4, "material": True},
                {"field": "git", "base": "abc", "new": "def-dirty", "material": False}]
    opts = Options(threshold=0.05, mem_threshold=0.1, confidence=0.9, resamples=500, seed=3,
                   match_ignore=("backend", "compile_mode"), fdr=True, single_run_threshold=0.3)
    return Comparison(Run(Path("runs/base"), {}, {}), Run(Path("runs/new"), {}, {}), opts, rows, unmatched, env_diff,
                      ["cpu MHz 3000 → 2000", "load 0.1 → 1.5"])


def scenario_b() -> Comparison:
    """Nothing notable, an immaterial env diff only, raw p (--no-fdr), no run-level rows, default options."""
    rows = [row("m", ratio=1.3, base_p50=10.0, new_p50=13.0, method="p20-p80 overlap (no samples)", q_value=None,
                notes=["base flagged noisy"]),
            row("k", kind="kernels", unit="µs", ratio=1.0, base_p50=0.25, new_p50=0.25, p_value=0.2,
                method="p20-p80 overlap (no samples)")]
    return Comparison(Run(Path("b.csv"), {}, {}), Run(Path("n.csv"), {}, {}), Options(fdr=False, mem_threshold=0.2),
                      rows, [], [{"field": "git", "base": "abc", "new": None, "material": False}])


def scenario_c() -> Comparison:
    """No matched config at all: only unmatched ones, the same environment, the machine state differs."""
    return Comparison(Run(Path("x"), {}, {}), Run(Path("y"), {}, {}), Options(threshold=0.1), [],
                      [{"kind": "kernels", "side": "base", "config": "add 8"}], [], ["isa avx2 → avx512"])


# The expected reports, read through line by line (bench/compare_render.py is the spec).
MD_A = (
    '## visionbench compare\n'
    '\n'
    '❌ **3 regression(s)**: 1 slower, 1 faster, 4 unchanged of 9 matched, 3 status change(s), 1 only '
    'in base, 2 only in new (threshold ±5%) · ⚠️ environments differ · ⚠️ machine state differs\n'
    '\n'
    'base `runs/base` → new `runs/new`\n'
    '\n'
    '> [!WARNING]\n'
    "> The two runs' environments differ, so timings may not be comparable: torch `2.14.1` → "
    '`2.15.0`; threads `2` → `4`\n'
    '\n'
    '> [!WARNING]\n'
    '> The machine state differed between the two runs (clocks, ISA, throttling, load): cpu MHz 3000 '
    '→ 2000; load 0.1 → 1.5\n'
    '\n'
    '> [!NOTE]\n'
    '> 2 of 9 configs were measured in one run per side: their interval covers the noise *within* a '
    'run, not the drift *between* runs (clocks, thermal state, allocator, other tenants), so a '
    'verdict may be a property of the run rather than the code. CPU configs under 1 ms need ±30% '
    'there. Use `run --repeats 3` on both sides or `bench ab` for run-level statistics.\n'
    '\n'
    '> [!NOTE]\n'
    '> 1 of 9 configs were flagged noisy (IQR/median > 10%) in base or new: the interval only covers '
    'the noise *within* each run, so treat their verdicts with care and rerun on a quiet machine.\n'
    '\n'
    '### Significant changes (7)\n'
    '\n'
    '| config | base p50 | new p50 | change [90% CI] | q (p) | verdict | notes |\n'
    '|---|---:|---:|---:|---:|---|---|\n'
    '| a | 2 ms | 2.4 ms | +20.0% [+10.0%, +30.0%] | 0.002 | 🔴 **slower** | runs 3 vs 3, between-run '
    'spread 2.0% |\n'
    '| c | — | oom | — | — | 🔴 **regression** | status ok → oom: CUDA out of memory \\| try b1 |\n'
    '| add 8 fp32 fwd z | pass | fail | — | — | 🔴 **regression** | status pass → fail: max_abs_err 0.5 |\n'
    '| b | 2.469e+04 µs | 1.235e+04 µs | -50.0% [-55.0%, -45.0%] | <1e-4 | 🟢 faster |  |\n'
    '| e | 1 ms | 1.08 ms | +8.0% [+1.0%, +15.0%] | 0.0001 | unchanged | runs 2 vs 2, between-run '
    'spread 9.0% (exceeds the change) |\n'
    '| f | 3 ms | 2.97 ms | -1.0% | — | unchanged | peak memory 120 → 100 MB (-16.7%) |\n'
    '| d | error | — | — | — | 🟢 fixed | status error → ok |\n'
    '\n'
    '<details><summary>No significant change (2)</summary>\n'
    '\n'
    '| config | base p50 | new p50 | change [90% CI] | q (p) | verdict | notes |\n'
    '|---|---:|---:|---:|---:|---|---|\n'
    '| g | 0.5 ms | 0.505 ms | +1.0% [-10.0%, +12.0%] | 0.75 | unchanged | one run per side, CPU '
    'under 1 ms: threshold ±25%; new flagged noisy |\n'
    '| add 8 fp32 fwd y | pass | pass | — | — | unchanged |  |\n'
    '\n'
    '</details>\n'
    '\n'
    '<details><summary>Unmatched configs (3)</summary>\n'
    '\n'
    '- only in base (models): u1\n'
    '- only in new (kernels): u2\n'
    '- only in new (models): u3\n'
    '\n'
    '</details>\n'
    '\n'
    '<details><summary>Environment diff</summary>\n'
    '\n'
    '| field | base | new |\n'
    '|---|---|---|\n'
    '| torch | 2.14.1 | 2.15.0 |\n'
    '| threads | 2 | 4 |\n'
    '| git | abc | def-dirty |\n'
    '\n'
    '</details>\n'
    '\n'
    '<sub>With several runs per side: change = ratio of the medians of per-run medians, 90% '
    "hierarchical bootstrap interval (runs, then samples within each run), Welch's t-test on the log "
    'per-run medians, and slower/faster also needs |change| > the between-run spread (max/min − 1 of '
    'the per-run medians). With one run per side: change = median(new)/median(base) − 1 of the '
    'per-sample latencies; 90% percentile bootstrap interval (500 resamples, seed 3); significant '
    'when the interval excludes 0 and the Mann–Whitney p adjusted by Benjamini–Hochberg over the '
    'configs compared with samples (q) < 0.1; slower/faster needs |change| ≥ 5% (±30% for a CPU '
    'config under 1 ms in one run per side). Peak memory flagged at ±10%. Regressions: slower, ok → '
    'failed status, memory growth, numerics pass → fail. Matched ignoring backend, compile_mode.</sub>\n'
)

MD_B = (
    '## visionbench compare\n'
    '\n'
    '✅ **no regressions**: 0 slower, 0 faster, 2 unchanged of 2 matched (threshold ±5%)\n'
    '\n'
    'base `b.csv` → new `n.csv`\n'
    '\n'
    '> [!NOTE]\n'
    '> 1 of 2 configs were flagged noisy (IQR/median > 10%) in base or new: the interval only covers '
    'the noise *within* each run, so treat their verdicts with care and rerun on a quiet machine.\n'
    '\n'
    'No significant changes.\n'
    '\n'
    '<details><summary>No significant change (2)</summary>\n'
    '\n'
    '| config | base p50 | new p50 | change [95% CI] | q (p) | verdict | notes |\n'
    '|---|---:|---:|---:|---:|---|---|\n'
    '| m | 10 ms | 13 ms | +30.0% | — | unchanged | base flagged noisy |\n'
    '| k | 0.25 µs | 0.25 µs | +0.0% | 0.2 | unchanged |  |\n'
    '\n'
    '</details>\n'
    '\n'
    '<details><summary>Environment diff</summary>\n'
    '\n'
    '| field | base | new |\n'
    '|---|---|---|\n'
    '| git | abc | None |\n'
    '\n'
    '</details>\n'
    '\n'
    '<sub>change = median(new)/median(base) − 1 of the per-sample latencies; 95% percentile '
    'bootstrap interval (2000 resamples, seed 0); significant when the interval excludes 0 and the '
    'Mann–Whitney p (not adjusted for multiple comparisons) < 0.05; slower/faster needs |change| ≥ '
    '5% (±25% for a CPU config under 1 ms in one run per side). Peak memory flagged at ±20%. '
    'Regressions: slower, ok → failed status, memory growth, numerics pass → fail.</sub>\n'
)

MD_C = (
    '## visionbench compare\n'
    '\n'
    '✅ **no regressions**: 0 slower, 0 faster, 0 unchanged of 0 matched, 1 only in base, 0 only in '
    'new (threshold ±10%) · ⚠️ machine state differs\n'
    '\n'
    'base `x` → new `y`\n'
    '\n'
    '> [!WARNING]\n'
    '> The machine state differed between the two runs (clocks, ISA, throttling, load): isa avx2 → avx512\n'
    '\n'
    'No significant changes.\n'
    '\n'
    '<details><summary>Unmatched configs (1)</summary>\n'
    '\n'
    '- only in base (kernels): add 8\n'
    '\n'
    '</details>\n'
    '\n'
    '<sub>change = median(new)/median(base) − 1 of the per-sample latencies; 95% percentile '
    'bootstrap interval (2000 resamples, seed 0); significant when the interval excludes 0 and the '
    'Mann–Whitney p adjusted by Benjamini–Hochberg over the configs compared with samples (q) < '
    '0.05; slower/faster needs |change| ≥ 10% (±25% for a CPU config under 1 ms in one run per '
    'side). Peak memory flagged at ±10%. Regressions: slower, ok → failed status, memory growth, '
    'numerics pass → fail.</sub>\n'
)

CSV_A = (
    'kind,config,verdict,regression,ratio,ci_low,ci_high,p_value,q_value,significant,threshold,'
    'spread,reps_base,reps_new,compile_ratio,base_p50,new_p50,unit,n_base,n_new,base_status,'
    'new_status,method,notes,base_line,new_line\n'
    'models,a,slower,True,1.2,1.1,1.3,0.001,0.002,True,0.05,0.02,3,3,,2.0,2.4,ms,60,60,ok,ok,runs: '
    'hierarchical bootstrap+welch,"runs 3 vs 3, between-run spread 2.0%",2,3\n'
    'kernels,b,faster,False,0.5,0.45,0.55,1e-05,,True,0.05,,1,1,,24691.2,12345.6,µs,,,ok,ok,'
    'bootstrap+mann-whitney,,2,3\n'
    'models,c,regression,True,,,,,,False,0.05,,1,1,,,,ms,,,ok,oom,,status ok → oom: CUDA out of '
    'memory | try b1,2,3\n'
    'models,d,fixed,False,,,,,,False,0.05,,1,1,,,,ms,,,error,ok,,status error → ok,2,3\n'
    'models,e,unchanged,False,1.08,1.01,1.15,0.01,0.0001,False,0.05,,1,1,,1.0,1.08,ms,,,ok,ok,runs: '
    'hierarchical bootstrap+welch,"runs 2 vs 2, between-run spread 9.0% (exceeds the change)",2,3\n'
    'models,f,unchanged,False,0.99,,,,,False,0.05,,1,1,,3.0,2.97,ms,,,ok,ok,"medians only (no '
    'samples, no p20/p80)",peak memory 120 → 100 MB (-16.7%),2,3\n'
    'models,g,unchanged,False,1.01,0.9,1.12,0.5,0.75,False,0.25,,1,1,,0.5,0.505,ms,,,ok,ok,'
    'bootstrap+mann-whitney,"one run per side, CPU under 1 ms: threshold ±25%; new flagged noisy",2,3\n'
    'numerics,add 8 fp32 fwd y,unchanged,False,,,,,,False,0.05,,1,1,,,,,,,pass,pass,,,2,3\n'
    'numerics,add 8 fp32 fwd z,regression,True,,,,,,False,0.05,,1,1,,,,,,,pass,fail,,status pass → '
    'fail: max_abs_err 0.5,2,3\n'
    'models,u1,only_in_base,False,,,,,,,,,,,,,,,,,,,,,,\n'
    'kernels,u2,only_in_new,False,,,,,,,,,,,,,,,,,,,,,,\n'
    'models,u3,only_in_new,False,,,,,,,,,,,,,,,,,,,,,,\n'
)


def test_markdown_of_a_comparison_with_every_part() -> None:
    assert render_markdown(scenario_a()) == MD_A


def test_markdown_with_nothing_notable_and_raw_p() -> None:
    assert render_markdown(scenario_b()) == MD_B


def test_markdown_of_only_unmatched_configs() -> None:
    assert render_markdown(scenario_c()) == MD_C


def test_summary_lines() -> None:
    assert summary_line(scenario_a()) == MD_A.splitlines()[2]
    assert summary_line(scenario_b()) == MD_B.splitlines()[2]
    assert summary_line(scenario_c()) == ("✅ **no regressions**: 0 slower, 0 faster, 0 unchanged of 0 matched, 1 only "
                                          "in base, 0 only in new (threshold ±10%) · ⚠️ machine state differs")
    c = scenario_b()
    c.rows[0].update(verdict="status changed")
    c.env_diff[0]["material"] = True
    assert summary_line(c) == ("✅ **no regressions**: 0 slower, 0 faster, 1 unchanged of 2 matched, 1 status "
                               "change(s) (threshold ±5%) · ⚠️ environments differ")


def test_csv_of_rows_and_unmatched_configs() -> None:
    assert render_csv(scenario_a()) == CSV_A
    assert render_csv(scenario_c()).splitlines()[1:] == ["kernels,add 8,only_in_base,False" + "," * 22]


def test_json_holds_the_whole_comparison() -> None:
    c = scenario_a()
    c.env_diff.append({"field": "path", "base": Path("/a"), "new": None, "material": False})  # not JSON: its str
    text = render_json(c)
    assert text.startswith('{\n "base": "runs/base",\n "new": "runs/new",\n "options": {\n  "threshold": 0.05,\n')
    assert text.endswith("\n}\n")
    doc = json.loads(text)
    assert doc == {"base": "runs/base", "new": "runs/new",
                   "options": {"threshold": 0.05, "mem_threshold": 0.1, "confidence": 0.9, "resamples": 500, "seed": 3,
                               "match_ignore": ["backend", "compile_mode"], "fdr": True, "single_run_threshold": 0.3,
                               "pool_runs": False, "compile_threshold": 0.25},
                   "summary": {"matched": 9, "slower": 1, "faster": 1, "unchanged": 4, "regressions": 3,
                               "unmatched": 3, "only_in_base": 1, "only_in_new": 2},
                   "env_diff": [*scenario_a().env_diff,
                                {"field": "path", "base": "/a", "new": None, "material": False}],
                   "machine_state_warnings": ["cpu MHz 3000 → 2000", "load 0.1 → 1.5"],
                   "rows": scenario_a().rows, "unmatched": scenario_a().unmatched}


# --- cells -----------------------------------------------------------------------------------------------------------


def test_number_and_change_cells() -> None:
    assert (_num(None), _num(1234.5), _num("0.5"), _num(2, ".4g"), _num(12345.6, ".4g")) == (
        "—", "1.23e+03", "0.5", "2", "1.235e+04")
    assert _change_cell({"ratio": None, "ci_low": 0.9, "ci_high": 1.1}) == "—"
    assert _change_cell({"ratio": 1.25, "ci_low": None, "ci_high": None}) == "+25.0%"
    assert _change_cell({"ratio": 0.8, "ci_low": 0.7, "ci_high": 0.95}) == "-20.0% [-30.0%, -5.0%]"


@pytest.mark.parametrize("verdict, cell", [("slower", "🔴 **slower**"), ("faster", "🟢 faster"),
                                           ("regression", "🔴 **regression**"), ("fixed", "🟢 fixed"),
                                           ("unchanged", "unchanged"), ("status changed", "status changed")])
def test_verdict_cell(verdict: str, cell: str) -> None:
    assert _verdict_cell({"verdict": verdict}) == cell


QUIET = {"verdict": "unchanged", "regression": False, "notes": []}


@pytest.mark.parametrize("r, notable", [
    (QUIET, False),
    ({**QUIET, "within_spread": False}, False),
    ({**QUIET, "notes": ["one run per side, CPU under 1 ms: threshold ±25%", "base flagged noisy",
                         "medians only (no samples, no p20/p80)", "p20-p80 overlap (no samples)",
                         "runs 3 vs 3, between-run spread 2.0%"]}, False),
    ({**QUIET, "verdict": "slower"}, True),
    ({**QUIET, "verdict": "status changed"}, True),
    ({**QUIET, "regression": True}, True),
    ({**QUIET, "within_spread": True}, True),
    ({**QUIET, "notes": ["base flagged noisy", "gflops 1 → 2 (+100.0%)"]}, True),
    ({**QUIET, "notes": ["compile_ms 100 → 200 (+100.0%)"]}, True),
])
def test_is_notable(r: dict[str, Any], notable: bool) -> None:
    assert _is_notable(r) is notable
