"""``DIR/report.md`` from ``DIR/results.csv`` (+ ``env.json``): one table per model, ready to paste into a PR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .fmt import fmt_num
from .io import BadInputError, read_results
from .repeats import aggregate_reps

__all__ = ["write_report", "render_report", "NUMERIC_COLUMNS", "fmt_num"]

NUMERIC_COLUMNS = ["batch_size", "input_size", "latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "latency_ms_mean",
                   "latency_ms_std", "n_samples", "compile_ms", "throughput_per_s", "gflops", "gmacs", "tflops_per_s",
                   "params", "peak_mem_mb"]


def _yes_no(v: Any) -> str:
    return "?" if v is None else ("yes" if v else "no")


def _env_summary(env: dict[str, Any]) -> str:
    if not env:
        return "_no env.json next to the results_\n"
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "none"
    sha = env.get("git_sha", "?") + (" (dirty)" if env.get("git_dirty") else "")
    lines = [
        f"- **CPU**: {env.get('cpu_model')} ({env.get('cpu_count')} cores, {env.get('threads')} torch threads)",
        f"- **CPU ISA**: ATen dispatch {env.get('cpu_capability', '?')}; native bf16 "
        f"{_yes_no(env.get('cpu_bf16_native'))}, fp16 {_yes_no(env.get('cpu_fp16_native'))}; flags "
        f"{' '.join(env.get('cpu_flags') or []) or '?'}; oneDNN {env.get('onednn_version', '?')}, "
        f"MKL {env.get('mkl_version', '?')}",
        f"- **GPU**: {gpus}" + (f", driver {env['driver']}" if env.get("driver") else ""),
        f"- **Versions**: torch {env.get('torch_version')}, torchvision {env.get('torchvision_version')}, "
        f"triton {env.get('triton_version')}, CUDA {env.get('cuda_version')}, Python {env.get('python')}",
        f"- **Code**: git {sha}; run at {env.get('timestamp')}",
        f"- **Command**: `{env.get('command')}`",
    ]
    return "\n".join(lines) + "\n"


def render_report(df: pd.DataFrame, env: dict[str, Any] | None = None, extra_sections: list[str] | None = None) -> str:
    df = aggregate_reps(df)  # run --repeats: one line per config, medians over its repetitions (per-rep rows: CSV)
    out = ["# visionbench report", "", _env_summary(env or {}), _conventions() if len(df) else "", ""]
    group_cols = ["model"] + (["device_name"] if "device_name" in df and df["device_name"].nunique() > 1 else [])
    for keys, g in df.groupby(group_cols, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        title = keys[0] + (f" — {keys[1]}" if len(keys) > 1 else "")
        params = g["params"].dropna()
        gfl = g[g["mode"] == "infer"]["gflops"].dropna() if "gflops" in g else pd.Series(dtype=float)
        sub = []
        if len(params):
            sub.append(f"{float(params.iloc[0]) / 1e6:.2f} M params")
        if len(gfl):
            sub.append(f"{float(gfl.iloc[0]):.2f} GFLOPs/sample (infer)")
        out += [f"## {title}", "", ", ".join(sub) + ("" if not sub else ""), ""]
        out.append("| mode | device | dtype | backend | batch | latency p50 ms [p20–p80] | throughput /s | TFLOP/s "
                   "| peak MB | n | status |")
        out.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
        g = g.sort_values(["mode", "device", "batch_size", "dtype", "backend"])
        for r in g.to_dict("records"):
            ok = r.get("status") == "ok"
            timed = ok or r.get("status") == "inaccurate"  # an inaccurate row keeps its timing, flagged
            lat = (f"{fmt_num(r['latency_ms_p50'], '.2f')} [{fmt_num(r['latency_ms_p20'], '.2f')}–"
                   f"{fmt_num(r['latency_ms_p80'], '.2f')}]") if timed else "—"
            noisy = " (noisy)" if str(r.get("noisy")).lower() == "true" else ""
            reduced = " (reduced)" if str(r.get("reduced_samples")).lower() == "true" else ""
            if ok and (r.get("reps") or 1) > 1:  # the spread of the repetitions' medians: the drift between runs
                noisy += f" · {int(r['reps'])} runs, spread {fmt_num(100 * r['rep_spread'], '.1f')}%"
            backend = r["backend"] + (f":{r['kernels']}" if r.get("kernels") not in (None, "", "all") else "")
            backend += f" ({r['compile_mode']})" if r.get("compile_mode") not in (None, "", "default") else ""
            backend += " cl" if str(r.get("channels_last")).lower() == "true" else ""
            backend += f" [{r['timer']}]" if r.get("timer") not in (None, "", "back-to-back") else ""
            # An unsupported row's reason (e.g. the bf16 fallback probe) is the finding: keep it whole.
            width = 400 if r.get("status") == "unsupported" else 80
            status = r.get("status") if ok else f"**{r.get('status')}**: {str(r.get('error') or '')[:width]}"
            out.append(f"| {r['mode']} | {r['device']} | {r['dtype']} | {backend} | {int(r['batch_size'])} "
                       f"| {lat}{noisy} | {fmt_num(r.get('throughput_per_s'), '.1f')} | "
                       f"{fmt_num(r.get('tflops_per_s'), '.3f')} | "
                       f"{fmt_num(r.get('peak_mem_mb'), '.0f')} | {fmt_num(r.get('n_samples'), '.0f')}{reduced} "
                       f"| {status} |")
        out.append("")
    for section in extra_sections or []:
        out += [section, ""]
    return "\n".join(out)


def _conventions() -> str:
    return ("Latency: median of n samples after warm-up (first call and compile excluded), p20–p80 in brackets; "
            "with `run --repeats K` each quantile is the median over the K runs (every run's row is in results.csv) "
            "and the spread is max/min − 1 of the runs' medians; "
            "throughput = batch × timed calls / their total time. Timing regime: back-to-back steps unless the "
            "backend cell says [flushed] (L2 flushed before each call) or [cudagraph] (CUDA-graph replays); "
            "(mode) after a compiled backend = torch.compile's mode, cl = channels_last. "
            "FLOPs: `torch.utils.flop_counter`, a multiply-add = 2 FLOPs, per sample, counted on the CPU, "
            "forward for infer and forward+backward for train. bf16/fp16 run under autocast, bf16-pure/fp16-pure "
            "with the model and inputs cast; tf32 = fp32 with TF32 matmuls. (reduced): fewer samples, to fit "
            "`--max-config-s`. Peak memory: CUDA `max_memory_allocated` of one step; CPU: bytes of tensors created "
            "by the step (see `bench/memory.py`). Accuracy: each row's outputs (train: loss and gradients) against "
            "the same model in float64 on the CPU; a row beyond its dtype's bound is **inaccurate** (timed, not to "
            "be quoted; `acc_*` columns of results.csv, `bench/accuracy.py`).")


def write_report(out_dir: str | Path) -> Path:
    """(Re)build ``DIR/report.md`` from ``DIR/results.csv``; adds kernel and plot sections when present."""
    d = Path(out_dir)
    if not d.is_dir():
        raise BadInputError(f"{d}: no such run directory")
    env_path = d / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    sections: list[str] = []
    df = None
    if (d / "results.csv").exists():
        df = read_results(d / "results.csv", required=["model", "backend", "mode", "dtype", "status"],
                          numeric=NUMERIC_COLUMNS, strict=False)
    sections += _optional_sections(d)
    if (d / "skipped.txt").exists():
        left = (d / "skipped.txt").read_text().splitlines()
        sections.insert(0, f"## Not measured: the time budget ran out\n\n{len(left)} config(s) were not started "
                           "(`skipped.txt`; `run --resume` measures them): " + ", ".join(f"`{c}`" for c in left))
    if df is None:
        if not sections:
            raise BadInputError(f"{d}: no results.csv or kernels.csv to report on")
        df = pd.DataFrame(columns=["model"])
    text = render_report(df, env, sections)
    path = d / "report.md"
    path.write_text(text)
    return path


def _optional_sections(d: Path) -> list[str]:
    """Kernel-bench tables, plots and profiler top-ops, from the modules that own them (each returns None when the
    run has nothing for it)."""
    from .kernelbench.report import kernels_section
    from .plots import plots_section
    from .profile import profile_section

    sections = (section(d) for section in (kernels_section, plots_section, profile_section))
    return [s for s in sections if s]
