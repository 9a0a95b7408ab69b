"""PNG plots for ``DIR/report.md`` (matplotlib, Agg canvas; no display needed), written to ``DIR/plots/``.

* ``throughput_<model>.png``: throughput (samples/s) against batch size, one line per dtype × backend (× mode,
  device, channels_last where a run has several), error bars from the p20/p80 latencies.
* ``latency_<model>.png``: the distribution of the raw per-sample latencies of every config (``samples.jsonl``), one
  box per config (box = quartiles, whiskers = 1.5 IQR, dots = outliers).
* ``roofline_<dtype>.png`` (when ``DIR/kernels.csv`` exists): achieved FLOP/s of each kernel provider against its
  arithmetic intensity (FLOPs / minimum bytes moved), under the device's ceilings: bandwidth ``peak_gbps · AI``
  (diagonal), compute ``peak_tflops`` (horizontal), and the measured copy bandwidth when the kernel bench recorded one.
  Colour = kernel, marker = provider, hollow = backward. Columns read (written by :mod:`bench.kernelbench.microbench`):
  ``kernel, provider, dtype, direction, status, p50_us, flops, bytes, peak_gbps, peak_tflops, copy_gbps``.

:func:`plots_section` is called by :func:`bench.report.write_report` and returns the markdown that embeds them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .io import BadInputError, read_jsonl, read_results
from .repeats import aggregate_reps

__all__ = ["plots_section", "plot_throughput", "plot_latency", "plot_roofline", "roofline_ceiling"]

_LINE_FIELDS = ("dtype", "backend", "mode", "device", "channels_last", "kernels", "input_size", "compile_mode", "timer")


def _figure(width: float, height: float) -> Any:
    # A bare Figure with its own Agg canvas: no pyplot global state, no GUI backend, safe in worker processes.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "plot"


def _varying(df: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    return [f for f in fields if f in df.columns and df[f].astype(str).nunique() > 1]


def _line_label(row: Any, fields: list[str]) -> str:
    parts = []
    for f in fields:
        v = row[f]
        if f == "channels_last":
            parts.append("channels_last" if str(v).lower() in ("true", "1") else "contiguous")
        elif f == "input_size":
            parts.append(f"{int(float(v))}px" if v else "default size")
        else:
            parts.append(str(v) if v not in (None, "") else "-")
    return " ".join(parts)


def plot_throughput(df: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per model: throughput vs batch size; returns ``[(model, path)]``."""
    ok = df[(df["status"] == "ok") & df["throughput_per_s"].notna()] if "throughput_per_s" in df else df.iloc[0:0]
    written = []
    for model, g in ok.groupby("model", sort=True):
        fields = ["dtype", "backend"] + _varying(g, [f for f in _LINE_FIELDS if f not in ("dtype", "backend")])
        fig = _figure(6.4, 4.2)
        ax = fig.add_subplot()
        for _, line in g.groupby([f for f in fields if f in g.columns], sort=True, dropna=False):
            line = line.sort_values("batch_size")
            bs = line["batch_size"].astype(float).to_numpy()
            thr = line["throughput_per_s"].astype(float).to_numpy()
            yerr = None
            if {"latency_ms_p20", "latency_ms_p80"} <= set(line.columns) and line["latency_ms_p20"].notna().all():
                # throughput at the p80 latency is the low end, at the p20 latency the high end
                lo = bs / (line["latency_ms_p80"].astype(float).to_numpy() / 1e3)
                hi = bs / (line["latency_ms_p20"].astype(float).to_numpy() / 1e3)
                yerr = [(thr - lo).clip(min=0), (hi - thr).clip(min=0)]
            ax.errorbar(bs, thr, yerr=yerr, marker="o", capsize=3, label=_line_label(line.iloc[0], fields))
        sizes = sorted(g["batch_size"].astype(float).unique())
        if sizes[-1] > 4 * sizes[0]:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{b:g}" for b in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (samples/s)")
        ax.set_title(f"{model}: throughput vs batch size (p20–p80 bars)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        path = out_dir / f"throughput_{_safe(str(model))}.png"
        fig.savefig(path)
        written.append((str(model), path))
    return written


def plot_latency(samples: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per model: a box per config of its raw latency samples (ms); returns ``[(model, path)]``."""
    from .config import Config

    by_model: dict[str, list[tuple[str, list[float]]]] = {}
    for rec in samples:
        vals = rec.get("samples_ms")
        if not vals or "model" not in rec:
            continue
        cfg = Config.from_dict(rec)
        label = cfg.label().removeprefix(cfg.model + " ")
        by_model.setdefault(cfg.model, []).append((label, [float(v) for v in vals]))
    written = []
    for model, items in sorted(by_model.items()):
        items.sort()
        fig = _figure(7.0, 1.2 + 0.35 * len(items))
        ax = fig.add_subplot()
        import matplotlib

        # matplotlib 3.10 replaced vert=False by orientation="horizontal" (and deprecated vert in 3.11).
        horiz = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                 else {"vert": False})
        ax.boxplot([v for _, v in items], showfliers=True, flierprops={"markersize": 3}, **horiz)
        ax.set_yticks(range(1, len(items) + 1), [f"{lab} (n={len(v)})" for lab, v in items])
        lo = min(min(v) for _, v in items)
        hi = max(max(v) for _, v in items)
        if lo > 0 and hi / lo > 20:
            ax.set_xscale("log")
        ax.invert_yaxis()  # first config on top
        ax.set_xlabel("latency per call (ms)")
        ax.set_title(f"{model}: latency distribution per config")
        ax.grid(True, axis="x", alpha=0.3)
        path = out_dir / f"latency_{_safe(model)}.png"
        fig.savefig(path)
        written.append((model, path))
    return written


def roofline_ceiling(ai: float, peak_gbps: float | None, peak_tflops: float | None) -> float:
    """The attainable FLOP/s at arithmetic intensity ``ai`` (FLOP/byte): ``min(peak_gbps·1e9·ai, peak_tflops·1e12)``.

    A missing peak drops that ceiling; with neither the result is ``inf``.
    """
    roofs = []
    if peak_gbps:
        roofs.append(peak_gbps * 1e9 * ai)
    if peak_tflops:
        roofs.append(peak_tflops * 1e12)
    return min(roofs) if roofs else math.inf


def _first(g: pd.DataFrame, col: str) -> float | None:
    if col not in g:
        return None
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return float(v.iloc[0]) if len(v) else None


def plot_roofline(kdf: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per dtype of the kernel bench's ok rows; returns ``[(dtype, path)]``."""
    import numpy as np

    need = {"flops", "bytes", "p50_us", "status", "kernel", "provider", "dtype"}
    if not need <= set(kdf.columns):
        return []
    df = kdf[kdf["status"] == "ok"].copy()
    for c in ("flops", "bytes", "p50_us"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df[(df["flops"] > 0) & (df["bytes"] > 0) & (df["p50_us"] > 0)]
    df["ai"] = df["flops"] / df["bytes"]
    df["flop_s"] = df["flops"] / (df["p50_us"] * 1e-6)
    written = []
    markers = "os^Dv<>P*Xh"
    for dtype, g in df.groupby("dtype", sort=True):
        fig = _figure(7.0, 4.8)
        ax = fig.add_subplot()
        gbps, tflops, copy = _first(g, "peak_gbps"), _first(g, "peak_tflops"), _first(g, "copy_gbps")
        lo, hi = g["ai"].min() / 4, g["ai"].max() * 4
        if gbps and tflops:
            ridge = tflops * 1e3 / gbps  # FLOP/byte where the two ceilings meet
            lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
        xs = np.logspace(math.log10(lo), math.log10(hi), 200)
        if gbps or tflops:
            ax.plot(xs, [roofline_ceiling(x, gbps, tflops) for x in xs], color="black", lw=1.5,
                    label=f"roof: {gbps or '—'} GB/s, {tflops or '—'} TFLOP/s ({dtype})")
        if copy:
            ax.plot(xs, [roofline_ceiling(x, copy, tflops) for x in xs], color="gray", ls="--", lw=1,
                    label=f"measured copy {copy:.0f} GB/s")
        kernels = sorted(g["kernel"].astype(str).unique())
        providers = sorted(g["provider"].astype(str).unique())
        colors = {k: f"C{i % 10}" for i, k in enumerate(kernels)}
        if "direction" not in g:
            g = g.assign(direction="forward")
        for (kernel, provider, direction), pts in g.groupby(["kernel", "provider", "direction"], sort=True):
            color = colors[str(kernel)]
            ax.scatter(pts["ai"], pts["flop_s"], marker=markers[providers.index(str(provider)) % len(markers)], s=30,
                       facecolors=color if direction != "backward" else "none", edgecolors=color,
                       label=f"{kernel} {direction} / {provider}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte, minimum bytes moved)")
        ax.set_ylabel("achieved FLOP/s")
        title = f"kernel roofline, {dtype}"
        if not (gbps or tflops):
            title += " (no device peaks recorded: no ceilings)"
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize="x-small", ncol=2)
        path = out_dir / f"roofline_{_safe(str(dtype))}.png"
        fig.savefig(path)
        written.append((str(dtype), path))
    return written


def _attempt(what: str, fn: Callable[[], list[tuple[str, Path]]], failures: list[str]) -> list[tuple[str, Path]]:
    """Run one plotter; a failure becomes a visible line in the report instead of losing the whole report."""
    try:
        return fn()
    except (BadInputError, ValueError, KeyError, TypeError, OSError) as e:
        failures.append(f"_{what} plot skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}_")
        return []


def plots_section(run_dir: str | Path) -> str | None:
    """Write the PNGs of ``run_dir`` into ``run_dir/plots`` and return markdown embedding them (None: nothing)."""
    d = Path(run_dir)
    out = d / "plots"
    failures: list[str] = []
    thr: list[tuple[str, Path]] = []
    lat: list[tuple[str, Path]] = []
    roof: list[tuple[str, Path]] = []
    if (d / "results.csv").is_file():
        df = read_results(d / "results.csv", required=["model", "status", "batch_size"],
                          numeric=["batch_size", "throughput_per_s", "latency_ms_p20", "latency_ms_p80"],
                          strict=False)
        if len(df):
            out.mkdir(exist_ok=True)
            agg = aggregate_reps(df)  # run --repeats: one point per config, the median over its runs
            thr = _attempt("throughput", lambda: plot_throughput(agg, out), failures)
    if (d / "samples.jsonl").is_file():
        out.mkdir(exist_ok=True)
        lat = _attempt("latency", lambda: plot_latency(read_jsonl(d / "samples.jsonl"), out), failures)
    if (d / "kernels.csv").is_file():
        kdf = read_results(d / "kernels.csv", required=["kernel", "status"], strict=False)
        if len(kdf):
            out.mkdir(exist_ok=True)
            roof = _attempt("roofline", lambda: plot_roofline(kdf, out), failures)
    if not (thr or lat or roof or failures):
        return None
    md = ["## Plots", ""]
    for title, items in (("Throughput vs batch size", thr), ("Latency distribution per config", lat),
                         ("Kernel roofline", roof)):
        if items:
            md += [f"### {title}", ""]
            md += [f"![{title}: {name}]({p.relative_to(d).as_posix()})" for name, p in items]
            md.append("")
    md += failures
    return "\n".join(md).rstrip() + "\n"
