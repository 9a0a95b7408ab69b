"""The kernel section of ``DIR/report.md``: ``kernels_check.csv``, ``kernels.csv`` and ``kernels_compile.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.fmt import fmt_num
from bench.io import read_results

__all__ = ["kernels_markdown", "kernels_section", "CHECK_NUMERIC", "BENCH_NUMERIC", "COMPILE_NUMERIC"]

CHECK_NUMERIC = ["max_abs_err", "rel_fro_err", "eager_max_abs_err", "eager_rel_fro_err", "tol_max_abs", "tol_rel_fro",
                 "launches", "elapsed_s"]
BENCH_NUMERIC = ["p50_us", "p20_us", "p80_us", "warm_p50_us", "graph_p50_us", "n_samples", "compile_ms", "launches",
                 "flops", "bytes",
                 "tflops", "gbps", "pct_peak_bw", "pct_peak_flops", "floor_us", "speedup_vs_eager",
                 "speedup_vs_compile", "speedup_vs_best_peer", "peak_gbps", "peak_tflops", "copy_gbps"]
COMPILE_NUMERIC = ["launch", "num_warps", "num_stages", "programs", "waves", "regs", "spill_store_bytes",
                   "spill_load_bytes", "stack_bytes", "smem_bytes", "blocks_per_sm", "occupancy_pct", "compile_s"]


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _check_part(df: pd.DataFrame) -> list[str]:
    out = ["### Numerics (`--check`)", "",
           "Each output/gradient against a float64 reference from the same inputs; *eager* is the PyTorch reference "
           "in the same dtype. A row passes if `max_abs <= multiple·eager_max_abs + atol` or `rel_fro <= rtol_fro`, "
           "and always `rel_fro <= fro_cap` (`kernels/testing.py`), with no NaN/Inf, every output element written "
           "(NaN and 1e4 poisons give "
           "identical results), inputs unchanged and a Triton kernel actually launched.", ""]
    rows = []
    for (k, dt, d), g in df.groupby(["kernel", "dtype", "direction"], sort=True):
        st = g["status"].value_counts()
        # a row passes the error rule if either error is within its bound: its margin is the smaller ratio
        margin = pd.concat([g["max_abs_err"] / g["tol_max_abs"], g["rel_fro_err"] / g["tol_rel_fro"]], axis=1)
        ratio = margin.min(axis=1).max() if len(g) else None
        rows.append([k, dt, d, str(len(g)), str(st.get("pass", 0)), str(st.get("fail", 0)), str(st.get("error", 0)),
                     str(st.get("unsupported", 0)), fmt_num(g["max_abs_err"].max(), ".3g"),
                     fmt_num(g["rel_fro_err"].max(), ".3g"), fmt_num(ratio, ".2f")])
    out += _table(["kernel", "dtype", "direction", "rows", "pass", "fail", "error", "unsupported", "worst max_abs",
                   "worst rel_fro", "worst error / bound (≤ 1)"], rows, "lllrrrrrrrr")
    bad = df[df["status"].isin(["fail", "error"])]
    if len(bad):
        out += ["", f"**{len(bad)} failing row(s)**" + (" (first 30)" if len(bad) > 30 else "") + ":", ""]
        out += _table(["kernel", "shape", "dtype", "direction", "output", "status", "message"],
                      [[r["kernel"], r["shape"], r["dtype"], r["direction"], r["output"], r["status"],
                        str(r.get("message") or "")[:160]] for r in bad.head(30).to_dict("records")], "lllllll")
    return out


def _bench_part(df: pd.DataFrame) -> list[str]:
    out = ["### Microbenchmarks (`--bench`)", ""]
    if "device_name" in df and df["device_name"].notna().any():
        src = df["peak_source"].dropna().iloc[0] if "peak_source" in df and df["peak_source"].notna().any() else "?"
        out += [f"Device: {', '.join(sorted(df['device_name'].dropna().unique()))}; peaks from {src}. Latency: "
                "median of CUDA-event samples with the L2 flushed before each call (warm = not flushed; graph = "
                "flushed calls inside a CUDA graph, no launch gaps), JIT/compile excluded. % peak BW and floor from "
                "each kernel's minimum-bytes and FLOP formulas.", ""]
    rows = []
    keys = ["kernel", "shape", "dtype", "direction"]
    for key, g in df.groupby(keys, sort=True):
        by = {r["provider"]: r for r in g.to_dict("records")}
        t = by.get("triton", {})
        ok = {p for p, r in by.items() if r.get("status") == "ok"}.__contains__
        peer = t.get("best_peer") if isinstance(t.get("best_peer"), str) else None
        peer_cell = f"{peer} {fmt_num(by[peer]['p50_us'], '.1f')}" if peer and peer in by else "—"
        rows.append([*key, fmt_num(t.get("p50_us"), ".1f") if ok("triton") else f"**{t.get('status', '—')}**",
                     fmt_num(t.get("warm_p50_us"), ".1f"), fmt_num(t.get("graph_p50_us"), ".1f"),
                     fmt_num(by["eager"]["p50_us"], ".1f") if ok("eager") else "—",
                     fmt_num(by["compile"]["p50_us"], ".1f") if ok("compile") else "—", peer_cell,
                     fmt_num(t.get("speedup_vs_eager"), ".2f"), fmt_num(t.get("speedup_vs_best_peer"), ".2f"),
                     fmt_num(t.get("gbps"), ".0f"), fmt_num(t.get("pct_peak_bw"), ".1f"),
                     fmt_num(t.get("tflops"), ".2f"), fmt_num(t.get("floor_us"), ".1f")])
    out += _table(["kernel", "shape", "dtype", "dir", "triton µs", "warm µs", "graph µs", "eager µs", "compile µs",
                   "best peer µs", "× eager", "× peer", "GB/s", "% peak BW", "TFLOP/s", "floor µs"], rows,
                  "llllrrrrrrrrrrrr")
    bad = df[~df["status"].isin(["ok"])]
    if len(bad):
        out += ["", "Providers that did not run:", ""]
        out += _table(["kernel", "shape", "dtype", "direction", "provider", "status", "message"],
                      [[r["kernel"], r["shape"], r["dtype"], r["direction"], r["provider"], r["status"],
                        str(r.get("message") or "")[:160]] for r in bad.head(40).to_dict("records")], "lllllll")
    return out


def _compile_part(df: pd.DataFrame) -> list[str]:
    arch = ", ".join(sorted(df["arch"].dropna().astype(str).unique())) if "arch" in df else "?"
    tv = ", ".join(sorted(df["triton_version"].dropna().astype(str).unique())) if "triton_version" in df else "?"
    out = ["### Ahead-of-time compile (`--compile`)", "",
           f"Every launch a CUDA run makes, recorded on the CPU with the GPU's launch choices and compiled for {arch} "
           f"(Triton {tv}; registers and spills from `ptxas -v`, shared memory from the compiled kernel). "
           "Occupancy = resident warps per SM / maximum; waves = programs / (resident blocks × SMs).", ""]
    rows = []
    for (k, d, tk, dt), g in df.groupby(["kernel", "direction", "triton_kernel", "dtype"], sort=True):
        st = g["status"].value_counts()
        rows.append([k, d, tk, dt, str(len(g)), str(st.get("ok", 0)), str(len(g) - st.get("ok", 0)),
                     f"{fmt_num(g['regs'].min(), '.0f')}–{fmt_num(g['regs'].max(), '.0f')}",
                     fmt_num(g["spill_store_bytes"].max(), ".0f"), fmt_num(g["smem_bytes"].max() / 1024, ".1f"),
                     fmt_num(g["occupancy_pct"].min(), ".0f"),
                     f"{fmt_num(g['waves'].min(), '.2g')}–{fmt_num(g['waves'].max(), '.3g')}"])
    out += _table(["kernel", "direction", "triton kernel", "dtype", "launches", "ok", "not ok", "registers",
                   "max spill B", "max smem KB", "min occupancy %", "waves"], rows, "llllrrrrrrrr")
    spill = df[df["spill_store_bytes"].fillna(0) > 0].sort_values("spill_store_bytes", ascending=False)
    if len(spill):
        out += ["", f"{len(spill)} launch(es) spill registers to local memory" + (" (worst 15)" if len(spill) > 15
                                                                                else "") + ":", ""]
        out += _table(["kernel", "shape", "dtype", "direction", "triton kernel", "warps", "registers", "spill B"],
                      [[r["kernel"], r["shape"], r["dtype"], r["direction"], r["triton_kernel"],
                        fmt_num(r["num_warps"], ".0f"), fmt_num(r["regs"], ".0f"),
                        fmt_num(r["spill_store_bytes"], ".0f")] for r in spill.head(15).to_dict("records")],
                      "llllllrr")
    bad = df[df["status"] != "ok"]
    if len(bad):
        out += ["", f"**{len(bad)} launch(es) not ok**" + (" (first 30)" if len(bad) > 30 else "") + ":", ""]
        out += _table(["kernel", "shape", "dtype", "direction", "triton kernel", "status", "message"],
                      [[r["kernel"], r["shape"], r["dtype"], r["direction"], str(r.get("triton_kernel") or "—"),
                        r["status"], str(r.get("message") or "")[:160]] for r in bad.head(30).to_dict("records")],
                      "lllllll")
    return out


def kernels_markdown(df_check: pd.DataFrame | None, df_bench: pd.DataFrame | None,
                     df_compile: pd.DataFrame | None = None) -> str:
    """The ``## Kernels`` section: numerics, latency/roofline and compile tables; "" when all are empty."""
    parts = [(df_check, CHECK_NUMERIC, _check_part), (df_bench, BENCH_NUMERIC, _bench_part),
             (df_compile, COMPILE_NUMERIC, _compile_part)]
    parts = [(df, cols, fn) for df, cols, fn in parts if df is not None and len(df) > 0]
    if not parts:
        return ""
    out = ["## Kernels", ""]
    for df, cols, fn in parts:
        out += fn(_numeric(df, cols)) + [""]
    return "\n".join(out)


def _numeric(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def kernels_section(run_dir: str | Path) -> str:
    """:func:`kernels_markdown` for a run directory (what ``bench/report.py`` calls); "" without kernel CSVs."""
    d = Path(run_dir)
    check = d / "kernels_check.csv"
    bench = d / "kernels.csv"
    df_check = read_results(check, required=["kernel", "status"], numeric=CHECK_NUMERIC, strict=False) \
        if check.exists() else None
    df_bench = read_results(bench, required=["kernel", "provider", "status"], numeric=BENCH_NUMERIC, strict=False) \
        if bench.exists() else None
    comp = d / "kernels_compile.csv"
    df_compile = read_results(comp, required=["kernel", "direction", "status"], numeric=COMPILE_NUMERIC,
                              strict=False) if comp.exists() else None
    return kernels_markdown(df_check, df_bench, df_compile)
