"""Crash-safe result files: rows appended and fsynced one at a time; strict readers for comparison inputs."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["drop_torn_tail", "RowWriter", "read_results", "row_line", "BadInputError", "append_jsonl", "read_jsonl"]


class BadInputError(ValueError):
    """A user-supplied file or flag that cannot be used; the CLI prints it as one line and exits 2."""


class RowWriter:
    """Append dict rows to a CSV; each row is flushed and fsynced so a killed sweep leaves only whole rows.

    A truncated last line left by an earlier crash (no trailing newline) is cut off before appending.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            drop_torn_tail(self.path)
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), [])
            missing = [c for c in self.columns if c not in header]
            if missing:
                raise BadInputError(f"{self.path}: existing file lacks columns {missing}; use a new --out directory")
            self.columns = header  # keep the file's column order
        else:
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
                f.flush()
                os.fsync(f.fileno())

    def append(self, row: dict[str, Any]) -> None:
        values = [_cell(row.get(c)) for c in self.columns]
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(values)
            f.flush()
            os.fsync(f.fileno())


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and v != v:  # NaN -> empty, never a fake number
        return ""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a killed writer left without its newline (so appends start on a fresh line)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)


def read_results(path: str | Path, required: Iterable[str] = (), numeric: Iterable[str] = (),
                 strict: bool = True) -> pd.DataFrame:
    """Read a results CSV, validating it; raises :class:`BadInputError` naming the file and line.

    Args:
        required: columns that must exist.
        numeric: columns whose non-empty cells must parse as numbers.
        strict: refuse a torn last line (no trailing newline) instead of ignoring it.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such file")
    raw = p.read_bytes()
    if not raw.strip():
        raise BadInputError(f"{p}: empty file")
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if strict and not raw.endswith(b"\n"):
        raise BadInputError(f"{p}:{len(lines)}: truncated last line (the run was interrupted mid-write?)")
    reader = csv.reader(lines)
    header = next(reader)
    row_lines: list[int] = []  # physical line of each data row (a quoted cell may span lines)
    start = reader.line_num + 1
    for row in reader:
        if row and len(row) != len(header):
            raise BadInputError(f"{p}:{start}: expected {len(header)} fields, found {len(row)}")
        if row:
            row_lines.append(start)
        start = reader.line_num + 1
    missing = [c for c in required if c not in header]
    if missing:
        raise BadInputError(f"{p}:1: missing columns {missing}")
    df = pd.read_csv(p, keep_default_na=False, dtype=str)
    df = df.astype(object).where(df != "", None)  # empty cell -> None (a failed config's metrics), never 0
    if len(row_lines) == len(df):
        df.attrs["lines"] = row_lines  # for error messages of later checks (see ``row_line``)
    for col in numeric:
        if col not in df.columns:
            continue
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() & df[col].notna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise BadInputError(f"{p}:{row_line(df, i)}: column {col!r} has non-numeric value {df[col].iloc[i]!r}")
        df[col] = vals
    return df


def row_line(df: pd.DataFrame, i: int) -> int:
    """The file line of data row ``i`` (0-based) of a frame from :func:`read_results` (header = line 1)."""
    lines = df.attrs.get("lines")
    return int(lines[i]) if lines is not None and i < len(lines) else i + 2


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BadInputError(f"{p}:{i}: not valid JSON ({e.msg})") from None
    return out
