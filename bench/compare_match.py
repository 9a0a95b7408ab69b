"""``bench compare``, reading and matching: the table kinds, run directories, raw samples per repetition, and the
projection of config keys (``--match-ignore``).

A models table may hold several rows per config, one per repetition (``rep``, :mod:`bench.repeats`): ``Table.rows``
then holds one aggregated row per config (status = the first failure if any repetition failed; p20/p50/p80 = the
median over the ok repetitions), ``Table.reps`` the repetition rows, ``Table.rep_samples`` the raw samples per
repetition and ``Table.samples`` all of them pooled.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import KEY_FIELDS, Config
from .io import BadInputError, read_results, row_line
from .repeats import rep_of

__all__ = ["KERNEL_KEY", "CHECK_KEY", "OK", "MODELS", "KERNELS", "CHECKS", "KINDS", "Table", "Run", "load_run",
           "project", "label", "fmt_key"]

KERNEL_KEY = ("kernel", "shape", "dtype", "direction", "provider")
CHECK_KEY = ("kernel", "shape", "dtype", "direction", "output")
OK = "ok"
CHECK_OK = "pass"


@dataclass(frozen=True)
class _Kind:
    """How one kind of table is read and compared."""

    name: str
    file: str  # file name inside a run directory
    key: tuple[str, ...]
    required: tuple[str, ...]
    numeric: tuple[str, ...]
    p50: str = ""  # latency columns (empty for numerics)
    p20: str = ""
    p80: str = ""
    unit: str = ""
    samples_file: str = ""
    flops: str = ""  # work per call, compared exactly
    memory: str = ""
    compile: str = ""  # first-call (compile) time, reported when it changes


# Every key ends with the device name: a run that spans several GPU types (a Ray cluster, merged shards) holds one row
# per config *and device*, and two runs are compared device by device (`--match-ignore device_name` pairs across).
MODELS = _Kind("models", "results.csv", (*KEY_FIELDS, "device_name"),
               ("model", "backend", "mode", "device", "dtype", "batch_size", "status", "latency_ms_p50"),
               ("batch_size", "input_size", "latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "n_samples",
                "gflops", "peak_mem_mb", "threads"),
               "latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "ms", "samples.jsonl", "gflops", "peak_mem_mb",
               "compile_ms")
KERNELS = _Kind("kernels", "kernels.csv", (*KERNEL_KEY, "device_name"), (*KERNEL_KEY, "status", "p50_us"),
                ("p50_us", "p20_us", "p80_us", "n_samples", "flops", "bytes"),
                "p50_us", "p20_us", "p80_us", "µs", "kernels_samples.jsonl", "flops", compile="compile_ms")
CHECKS = _Kind("numerics", "kernels_check.csv", (*CHECK_KEY, "device_name"), (*CHECK_KEY, "status"),
               ("max_abs_err", "rel_fro_err"))
KINDS = (MODELS, KERNELS, CHECKS)


@dataclass
class Table:
    """One side's rows of one kind, by full key (aggregated over repetitions); ``samples`` in the table's latency
    unit, pooled; ``reps`` / ``rep_samples``: per repetition (see the module docstring)."""

    kind: _Kind
    path: Path
    rows: dict[tuple[str, ...], dict[str, Any]]
    samples: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)
    reps: dict[tuple[str, ...], list[dict[str, Any]]] = field(default_factory=dict)
    rep_samples: dict[tuple[str, ...], dict[int, np.ndarray]] = field(default_factory=dict)


@dataclass
class Run:
    path: Path
    tables: dict[str, Table]
    env: dict[str, Any]


def _row_key(kind: _Kind, row: dict[str, Any]) -> tuple[str, ...]:
    device = str(row.get("device_name") or "")
    if kind is MODELS:
        return (*Config.from_dict(row).key(), device)
    return (*(str(row.get(f) if row.get(f) is not None else "") for f in kind.key[:-1]), device)


def _read_table(kind: _Kind, path: Path) -> Table:
    df = read_results(path, required=kind.required, numeric=kind.numeric, strict=True)
    reps: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for i, r in enumerate(df.to_dict("records")):
        line = row_line(df, i)
        try:
            key = _row_key(kind, r)
        except (ValueError, TypeError, KeyError) as e:
            raise BadInputError(f"{path}:{line}: bad config key cells ({e})") from None
        r["_rep"] = rep_of(r)
        first = next((x for x in reps.get(key, []) if x["_rep"] == r["_rep"]), None)
        if first is not None:
            what = f" rep {r['_rep']}" if len(reps[key]) > 1 or r["_rep"] else ""
            raise BadInputError(f"{path}:{line}: duplicate config key {fmt_key(kind, key)}{what} (first on line "
                                f"{first['_line']})")
        if not r.get("status"):
            raise BadInputError(f"{path}:{line}: empty status")
        if kind.p50 and r["status"] == OK and not (r.get(kind.p50) or 0) > 0:
            raise BadInputError(f"{path}:{line}: status ok but {kind.p50} is empty or not positive")
        r["_line"] = line
        reps.setdefault(key, []).append(r)
    rows = {key: _aggregate(kind, rs) for key, rs in reps.items()}
    return Table(kind, path, rows, reps=reps)


def _aggregate(kind: _Kind, reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One row standing for a config's repetitions: the first failed one if any failed, else the first with its
    latency quantiles replaced by their medians over the repetitions and ``_reps`` = how many."""
    if len(reps) == 1:
        return {**reps[0], "_reps": 1}
    failed = [r for r in reps if r["status"] != (CHECK_OK if kind is CHECKS else OK)]
    row = dict(failed[0] if failed else reps[0])
    if not failed:
        for col in (kind.p50, kind.p20, kind.p80):
            vals = [float(r[col]) for r in reps if col and r.get(col) is not None]
            if vals:
                row[col] = float(np.median(vals))
        row["n_samples"] = sum(float(r.get("n_samples") or 0) for r in reps)
    row["_reps"] = len(reps)
    return row


def _read_samples(table: Table, path: Path) -> None:
    """Attach ``samples_ms`` (models) or ``samples_us``/``samples_ms`` (kernels) records of ``path`` to ``table``."""
    if not path.is_file():
        return
    seen: dict[tuple[tuple[str, ...], int], int] = {}
    raw = path.read_text()
    for i, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            torn = " (truncated last line?)" if i == len(raw.splitlines()) and not raw.endswith("\n") else ""
            raise BadInputError(f"{path}:{i}: not valid JSON ({e.msg}){torn}") from None
        if not isinstance(rec, dict):
            raise BadInputError(f"{path}:{i}: expected a JSON object")
        scale = 1.0
        vals = rec.get("samples_ms")
        if table.kind is KERNELS:
            vals, scale = (rec.get("samples_us"), 1.0) if "samples_us" in rec else (vals, 1e3)
        try:
            key = _row_key(table.kind, rec)
        except (ValueError, TypeError, KeyError) as e:
            raise BadInputError(f"{path}:{i}: bad config key fields ({e})") from None
        if "device_name" not in rec:  # older records: the config alone identifies the row if it is unique
            same = [k for k in table.rows if k[:-1] == key[:-1]]
            key = same[0] if len(same) == 1 else key
        if not isinstance(vals, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in vals):
            raise BadInputError(f"{path}:{i}: samples must be a list of numbers")
        arr = np.asarray(vals, dtype=float) * scale
        if arr.size and not (np.all(np.isfinite(arr)) and arr.min() > 0):
            raise BadInputError(f"{path}:{i}: samples must be finite and positive")
        unit = (key, rep_of(rec))
        if unit in seen:
            raise BadInputError(f"{path}:{i}: duplicate samples for {fmt_key(table.kind, key)}"
                                f"{f' rep {unit[1]}' if unit[1] else ''} (first on line {seen[unit]})")
        seen[unit] = i
        if key in table.rows:
            table.rep_samples.setdefault(key, {})[unit[1]] = arr
    for key, by_rep in table.rep_samples.items():
        table.samples[key] = np.concatenate([by_rep[r] for r in sorted(by_rep)])


def _csv_kind(path: Path) -> _Kind:
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    if "model" in header:
        return MODELS
    if "kernel" in header and "provider" in header:
        return KERNELS
    if "kernel" in header and "output" in header:
        return CHECKS
    raise BadInputError(f"{path}:1: not a visionbench results, kernels or kernels_check CSV (no model/kernel column)")


def _read_env(d: Path, tables: dict[str, Table]) -> dict[str, Any]:
    p = d / "env.json"
    if p.is_file():
        try:
            env = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(env, dict):
            raise BadInputError(f"{p}:1: expected a JSON object")
        return env
    # No env.json: the per-row environment columns of the first row stand in for it.
    for t in tables.values():
        for r in t.rows.values():
            cols = ("device_name", "host", "torch_version", "triton_version", "torchvision_version", "cuda_version",
                    "threads", "git_sha", "device")
            return {c: r[c] for c in cols if r.get(c) is not None}
    return {}


def load_run(path: str | Path) -> Run:
    """Read a run directory or one CSV file (see the module docstring); raises :class:`BadInputError`."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file or directory")
    tables: dict[str, Table] = {}
    if p.is_dir():
        for kind in KINDS:
            f = p / kind.file
            if f.is_file():
                tables[kind.name] = _read_table(kind, f)
        if not tables:
            raise BadInputError(f"{p}: no results.csv, kernels.csv or kernels_check.csv in this directory")
        d = p
    else:
        kind = _csv_kind(p)
        tables[kind.name] = _read_table(kind, p)
        d = p.parent
    for t in tables.values():
        if t.kind.samples_file:
            _read_samples(t, d / t.kind.samples_file)
    return Run(p, tables, _read_env(d, tables))


def fmt_key(kind: _Kind, key: Sequence[str]) -> str:
    return "(" + ", ".join(f"{f}={v}" for f, v in zip(kind.key, key) if v not in ("", "0", "false")) + ")"


def label(kind: _Kind, row: dict[str, Any]) -> str:
    if kind is MODELS:
        return Config.from_dict(row).label()
    return " ".join(str(row.get(f)) for f in kind.key[:-1])  # the device is added where runs span several


def project(table: Table, ignore: Sequence[str]) -> dict[tuple[str, ...], tuple[str, ...]]:
    """projected key -> full key; two rows that collide once ``ignore`` is dropped are ambiguous (bad input)."""
    keep = [i for i, f in enumerate(table.kind.key) if f not in ignore]
    out: dict[tuple[str, ...], tuple[str, ...]] = {}
    for key, row in table.rows.items():
        pk = tuple(key[i] for i in keep)
        if pk in out:
            first = table.rows[out[pk]]["_line"]
            raise BadInputError(f"{table.path}:{row['_line']}: same key as line {first} once "
                                f"{', '.join(ignore)} is ignored; --match-ignore cannot pair these rows")
        out[pk] = key
    return out


