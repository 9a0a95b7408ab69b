"""``run --dry-run``: list the configs and check that everything they need imports, measuring nothing."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from .config import KERNEL_BACKENDS, Config

__all__ = ["dry_run", "check_imports"]


def check_imports(configs: Sequence[Config]) -> list[tuple[str, str]]:
    """``[(module, problem)]`` for each needed module that fails to import ('' when fine)."""
    needed = {"torch", "torchvision", "pandas", "rich", "matplotlib", "models"}
    if any(c.backend in KERNEL_BACKENDS for c in configs):
        needed |= {"triton", "kernels"}
    needed.add("fvcore")  # optional: FLOP MACs degrade to empty with a note
    out = []
    for mod in sorted(needed):
        try:
            importlib.import_module(mod)
            out.append((mod, ""))
        except Exception as e:  # report, don't crash: that is the point of a dry run
            out.append((mod, f"{type(e).__name__}: {e}"))
    return out


def dry_run(configs: Sequence[Config]) -> int:
    console = Console()
    t = Table(title=f"{len(configs)} configs (dry run: nothing measured)")
    for col in ("#", "model", "backend", "mode", "device", "dtype", "batch", "input", "channels_last", "kernels",
                "compile mode", "timer"):
        t.add_column(col)
    for i, c in enumerate(configs, 1):
        t.add_row(str(i), c.model, c.backend, c.mode, c.device, c.dtype, str(c.batch_size),
                  str(c.input_size or "default"), str(c.channels_last), c.kernels or "—", c.compile_mode or "—",
                  c.timer)
    console.print(t)
    problems = 0
    for mod, err in check_imports(configs):
        optional = mod == "fvcore"
        if err:
            problems += 0 if optional else 1
            console.print(f"[{'yellow' if optional else 'red'}]import {mod}: {err}"
                          + (" (optional: GMACs columns stay empty)" if optional else "") + "[/]")
        else:
            console.print(f"import {mod}: ok")
    return 1 if problems else 0
