"""Repetitions (``run --repeats K``): the order they run in, which ones a directory already holds, and the report's
aggregate over them.

A repetition is one more independent measurement of a config (a fresh model build; under ``--isolate`` a fresh
process), not another config: ``results.csv`` holds one row per config *and* repetition (column ``rep``, 0-based;
a run without ``--repeats`` has ``rep`` 0 only), ``samples.jsonl`` one record per config and repetition (field
``rep``), and the config key (:data:`bench.config.KEY_FIELDS`) is unchanged, so ``compare`` groups a config's
repetitions and tests at the level of runs (:func:`bench.stats.compare_repeated`).

Order: round-robin over the configs, one repetition of every config per round, the direction reversed every other
round (A B C, C B A, A B C): slow drift (thermal state, clocks, other tenants) spreads over every config instead of
landing on one config's block, and no config is always first after a model switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import KEY_FIELDS, Config, key_of_row
from .io import read_results

__all__ = ["REP", "rep_of", "done_units", "schedule", "aggregate_reps"]

REP = "rep"


def rep_of(row: dict[str, Any]) -> int:
    """The repetition id of a row or samples record (0 when absent: files written before ``--repeats``)."""
    v = row.get(REP)
    try:
        return int(float(v)) if v not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def done_units(out_dir: Path) -> set[tuple[tuple[str, ...], int]]:
    """``(config key, rep)`` of every row already in ``DIR/results.csv`` (any status: ``--resume`` skips them)."""
    path = out_dir / "results.csv"
    if not path.exists() or path.stat().st_size == 0:
        return set()
    df = read_results(path, required=["model", "batch_size"], strict=False)
    return {(key_of_row(r), rep_of(r)) for r in df.to_dict("records")}


def schedule(configs: Sequence[Config], repeats: int, done: set[tuple[tuple[str, ...], int]] = frozenset()
             ) -> list[tuple[Config, int]]:
    """``(config, rep)`` still to measure, in round-robin order (see the module docstring)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = []
    for rep in range(repeats):
        for cfg in (configs if rep % 2 == 0 else list(reversed(configs))):
            if (cfg.key(), rep) not in done:
                out.append((cfg, rep))
    return out


def aggregate_reps(df: pd.DataFrame) -> pd.DataFrame:
    """One row per config (and device): latency columns = median over its ok repetitions, plus ``reps`` and
    ``rep_spread`` (max/min − 1 of the repetitions' p50). A config with a failed repetition keeps that row (a failure
    must stay visible). A frame without several repetitions is returned unchanged."""
    if REP not in df.columns or df.empty or df[REP].fillna(0).astype(float).nunique() <= 1:
        return df
    keys = [k for k in (*KEY_FIELDS, "device_name") if k in df.columns]
    out = []
    for _, g in df.groupby(keys, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        if len(ok) < len(g):
            row = g[g["status"] != "ok"].iloc[0].to_dict()
        else:
            row = ok.iloc[0].to_dict()
            for col in ("latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "latency_ms_mean", "throughput_per_s",
                        "tflops_per_s", "peak_mem_mb"):
                if col in ok:
                    row[col] = pd.to_numeric(ok[col], errors="coerce").median()
            p50 = pd.to_numeric(ok["latency_ms_p50"], errors="coerce")
            row["rep_spread"] = float(p50.max() / p50.min() - 1) if len(ok) > 1 else 0.0
            row["n_samples"] = pd.to_numeric(ok["n_samples"], errors="coerce").sum()
        row["reps"] = len(g)
        out.append(row)
    return pd.DataFrame(out)
