"""Rich progress bar over a sweep (current config, elapsed, ETA) and the end-of-run summary table."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .fmt import fmt_num

__all__ = ["SweepProgress", "summary_table", "console"]

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class SweepProgress:
    def __init__(self, total: int, enabled: bool = True, skipped: int = 0) -> None:
        self.enabled = enabled
        self.skipped = skipped
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 disable=not enabled, transient=False)
        self.task = self.progress.add_task("sweep", total=total)

    def __enter__(self) -> SweepProgress:
        if self.skipped and self.enabled:
            console.print(f"resume: {self.skipped} configs already in results.csv, skipped")
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def start(self, label: str) -> None:
        self.progress.update(self.task, description=label)

    def advance(self, row: dict[str, Any]) -> None:
        if row.get("status") != "ok" and self.enabled:
            self.progress.console.print(f"[yellow]{row.get('status')}[/]: {row.get('model')} {row.get('error', '')}")
        self.progress.advance(self.task)


def summary_table(rows: Sequence[dict[str, Any]], title: str = "visionbench results") -> Table:
    t = Table(title=title)
    for col in ("model", "backend", "mode", "device", "dtype", "batch", "p50 ms [p20–p80]", "items/s", "TFLOP/s",
                "peak MB", "status"):
        t.add_column(col, justify="right" if col not in ("model", "backend", "mode", "device", "status") else "left")
    for r in rows:
        lat = (f"{fmt_num(r.get('latency_ms_p50'), '.2f')} [{fmt_num(r.get('latency_ms_p20'), '.2f')}–"
               f"{fmt_num(r.get('latency_ms_p80'), '.2f')}]") if r.get("status") == "ok" else "—"
        status = r.get("status", "")
        t.add_row(str(r.get("model")), str(r.get("backend")), str(r.get("mode")), str(r.get("device")),
                  str(r.get("dtype")), str(r.get("batch_size")), lat, fmt_num(r.get("throughput_per_s"), ".1f"),
                  fmt_num(r.get("tflops_per_s"), ".3f"), fmt_num(r.get("peak_mem_mb"), ".0f"),
                  status if status == "ok" else f"[red]{status}[/]")
    return t
