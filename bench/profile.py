"""``python -m bench run --profile``: one ``torch.profiler`` trace per config, and the top operators by self time.

:func:`profile_config` is called by :func:`bench.runner.measure` after timing (so the step is warm and compiled). It
records ``WARMUP`` + ``ACTIVE`` further steps under a profiler ``schedule`` (only the active ones are kept), with
input shapes and memory events, CPU activity always and CUDA activity when the config runs on a GPU. Files written
into ``DIR/traces/``:

* ``<config>.<timestamp>.pt.trace.json``: written by ``torch.profiler.tensorboard_trace_handler``; the config label is
  the *worker* name, so ``tensorboard --logdir DIR/traces`` (torch-tb-profiler) shows one run with one worker per
  config, and the same file opens in ``chrome://tracing`` or https://ui.perfetto.dev.
* ``<config>.top_ops.json``: the ``TOP_K`` operators by self CPU time (self CUDA time too on a GPU), per step.

:func:`profile_section` turns the ``*.top_ops.json`` files into the report's markdown section
(:func:`bench.report._optional_sections` calls it).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["profile_config", "profile_section", "trace_name", "top_operators", "WARMUP", "ACTIVE", "TOP_K"]

WARMUP = 1  # profiler warm-up steps: traced but discarded (the profiler's own start-up cost lands here)
ACTIVE = 3  # steps whose events are kept
TOP_K = 15  # operators kept in <config>.top_ops.json
_SHOWN = 8  # operators shown per config in the report


def trace_name(cfg: Any) -> str:
    """A file-system and torch-tb-profiler safe name for a config: ``[A-Za-z0-9_-]`` only.

    torch-tb-profiler splits ``<worker>.<span>.pt.trace.json`` at the first dot followed by digits, so the worker
    name must not contain dots.
    """
    label = cfg.label() if hasattr(cfg, "label") else str(cfg)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_") or "config"


def _sync(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def top_operators(key_averages: Any, steps: int, use_cuda: bool, k: int = TOP_K) -> list[dict[str, Any]]:
    """The ``k`` operators with the largest self time from ``prof.key_averages()``, per step, in ms.

    Sorted by self CUDA time when ``use_cuda`` (what the GPU spends), else by self CPU time. ``self`` excludes the
    time of child operators, so the list adds up to at most the step time (``total`` does not).
    """
    rows = []
    for e in key_averages:
        if e.key.startswith("ProfilerStep"):  # the profiler's per-step wrapper, not an operator
            continue
        self_cuda = float(e.self_device_time_total) if use_cuda else 0.0
        rows.append({
            "name": e.key,
            "calls_per_step": e.count / steps,
            "self_cpu_ms": e.self_cpu_time_total / steps / 1e3,
            "cpu_total_ms": e.cpu_time_total / steps / 1e3,
            "self_cuda_ms": self_cuda / steps / 1e3 if use_cuda else None,
            "self_cpu_mem_mb": e.self_cpu_memory_usage / 2**20,  # allocated minus freed by the op itself
        })
    sort_key = "self_cuda_ms" if use_cuda else "self_cpu_ms"
    rows.sort(key=lambda r: r[sort_key] or 0.0, reverse=True)
    return rows[:k]


def profile_config(step: Callable[[], Any], cfg: Any, profile_dir: str | Path) -> str:
    """Trace ``WARMUP + ACTIVE`` calls of the warm ``step`` of ``cfg`` into ``profile_dir``; returns the trace path.

    An earlier trace of the same config (a re-run into the same directory) is replaced, so each config has one.
    """
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    out = Path(profile_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = trace_name(cfg)
    for old in out.glob(f"{name}.*.pt.trace.json*"):
        old.unlink()
    device = str(getattr(cfg, "device", "cpu"))
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if use_cuda else [])
    write_trace = tensorboard_trace_handler(str(out), worker_name=name)
    ops: list[dict[str, Any]] = []

    def on_ready(prof: Any) -> None:
        write_trace(prof)
        ops.extend(top_operators(prof.key_averages(), ACTIVE, use_cuda))

    with profile(activities=activities, schedule=schedule(wait=0, warmup=WARMUP, active=ACTIVE, repeat=1),
                 on_trace_ready=on_ready, record_shapes=True, profile_memory=True) as prof:
        for _ in range(WARMUP + ACTIVE):
            step()
            _sync(device)  # step boundaries must include the device work of the step
            prof.step()
    traces = sorted(out.glob(f"{name}.*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise RuntimeError(f"torch.profiler wrote no trace for {name} into {out}")
    trace = str(traces[-1])
    summary = {
        "config": cfg.label() if hasattr(cfg, "label") else str(cfg),
        "key": list(cfg.key()) if hasattr(cfg, "key") else None,
        "trace": Path(trace).name,
        "steps": ACTIVE,
        "sort_by": "self_cuda_ms" if use_cuda else "self_cpu_ms",
        "activities": [a.name for a in activities],
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "ops": ops,
    }
    (out / f"{name}.top_ops.json").write_text(json.dumps(summary, indent=1) + "\n")
    return trace


def _ms(v: Any) -> str:
    return "—" if v is None else f"{float(v):.3f}"


def profile_section(run_dir: str | Path) -> str | None:
    """Markdown: per profiled config, the top operators by self time per step; None when nothing was profiled."""
    tdir = Path(run_dir) / "traces"
    files = sorted(tdir.glob("*.top_ops.json")) if tdir.is_dir() else []
    if not files:
        return None
    out = ["## Profiler: top operators by self time", "",
           f"`torch.profiler` over {ACTIVE} steps after warm-up (shapes and memory recorded); times are per step. "
           f"Open the traces with `tensorboard --logdir {tdir}` (torch-tb-profiler: one worker per config) or load a "
           "`*.pt.trace.json` in chrome://tracing / Perfetto.", ""]
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            out += [f"_{f.name}: unreadable, skipped_", ""]
            continue
        cuda = data.get("sort_by") == "self_cuda_ms"
        out += [f"### {data.get('config', f.stem)}", "", f"trace: `traces/{data.get('trace')}`", ""]
        head = "| operator | calls | self CPU ms | CPU total ms |" + (" self CUDA ms |" if cuda else "")
        out += [head, "|---|---:|---:|---:|" + ("---:|" if cuda else "")]
        for op in data.get("ops", [])[:_SHOWN]:
            line = (f"| `{op['name']}` | {op['calls_per_step']:g} | {_ms(op['self_cpu_ms'])} | "
                    f"{_ms(op['cpu_total_ms'])} |")
            out.append(line + (f" {_ms(op.get('self_cuda_ms'))} |" if cuda else ""))
        out.append("")
    return "\n".join(out).rstrip() + "\n"
