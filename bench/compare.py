"""``python -m bench compare BASE NEW``: a noise-aware comparison of two runs, as a PR comment or for machines.

BASE and NEW are run directories (``results.csv`` + ``samples.jsonl`` + ``env.json``, and/or the kernel bench's
``kernels.csv`` / ``kernels_check.csv``) or single CSV files. Rows are matched by their config key
(:data:`bench.config.KEY_FIELDS`; kernels: :data:`KERNEL_KEY`; numerics: :data:`CHECK_KEY`); ``--match-ignore``
drops fields from the key (e.g. ``backend`` to compare an eager run with a compile run). Per matched config:

* ``ratio`` = median(NEW) / median(BASE) latency (> 1: NEW is slower) with a bootstrap interval from the stored raw
  samples and a Mann–Whitney test (:mod:`bench.stats`). *Significant* = the interval excludes 1 and the test's p,
  adjusted by Benjamini–Hochberg over every config compared with samples (``q``; ``--no-fdr``: raw p), < 1 − confidence.
  Without stored samples (a bare CSV) the fallback is: significant when the p20–p80 ranges do not overlap.
* verdict ``slower`` / ``faster`` = significant and ``|ratio − 1| >= --threshold``; otherwise ``unchanged``.
* status changes (ok → oom/error/timeout/crashed/unsupported/inaccurate is a regression), FLOP changes, peak-memory
  changes of at least ``--mem-threshold`` (growth is a regression), numerics pass → fail/error (a regression).
* an environment diff (device, versions, threads, ...) with a warning when they differ.

Bad input (missing path, missing columns, duplicate keys, torn last line, text in numeric cells, broken samples file)
raises :class:`bench.io.BadInputError` naming the file and line; the CLI prints it and exits 2. ``--fail-on-regression``
exits 1 when any config regressed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import KEY_FIELDS, Config
from .io import BadInputError, read_results, row_line
from .stats import MIN_SAMPLES, benjamini_hochberg, compare_samples

__all__ = ["add_arguments", "main", "compare_runs", "load_run", "render_markdown", "render_csv", "render_json",
           "Options", "Comparison", "KERNEL_KEY", "CHECK_KEY"]

KERNEL_KEY = ("kernel", "shape", "dtype", "direction", "provider")
CHECK_KEY = ("kernel", "shape", "dtype", "direction", "output")
OK = "ok"


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


# Every key ends with the device name: a run that spans several GPU types (a Ray cluster, merged shards) holds one row
# per config *and device*, and two runs are compared device by device (`--match-ignore device_name` pairs across).
MODELS = _Kind("models", "results.csv", (*KEY_FIELDS, "device_name"),
               ("model", "backend", "mode", "device", "dtype", "batch_size", "status", "latency_ms_p50"),
               ("batch_size", "input_size", "latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "n_samples",
                "gflops", "peak_mem_mb", "threads"),
               "latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "ms", "samples.jsonl", "gflops", "peak_mem_mb")
KERNELS = _Kind("kernels", "kernels.csv", (*KERNEL_KEY, "device_name"), (*KERNEL_KEY, "status", "p50_us"),
                ("p50_us", "p20_us", "p80_us", "n_samples", "flops", "bytes"),
                "p50_us", "p20_us", "p80_us", "µs", "kernels_samples.jsonl", "flops")
CHECKS = _Kind("numerics", "kernels_check.csv", (*CHECK_KEY, "device_name"), (*CHECK_KEY, "status"),
               ("max_abs_err", "rel_fro_err"))
KINDS = (MODELS, KERNELS, CHECKS)


# --- reading ---------------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One side's rows of one kind, by full key; ``samples`` in the table's latency unit."""

    kind: _Kind
    path: Path
    rows: dict[tuple[str, ...], dict[str, Any]]
    samples: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)


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
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for i, r in enumerate(df.to_dict("records")):
        line = row_line(df, i)
        try:
            key = _row_key(kind, r)
        except (ValueError, TypeError, KeyError) as e:
            raise BadInputError(f"{path}:{line}: bad config key cells ({e})") from None
        if key in rows:
            raise BadInputError(f"{path}:{line}: duplicate config key {_fmt_key(kind, key)} (first on line "
                                f"{rows[key]['_line']})")
        if not r.get("status"):
            raise BadInputError(f"{path}:{line}: empty status")
        if kind.p50 and r["status"] == OK and not (r.get(kind.p50) or 0) > 0:
            raise BadInputError(f"{path}:{line}: status ok but {kind.p50} is empty or not positive")
        r["_line"] = line
        rows[key] = r
    return Table(kind, path, rows)


def _read_samples(table: Table, path: Path) -> None:
    """Attach ``samples_ms`` (models) or ``samples_us``/``samples_ms`` (kernels) records of ``path`` to ``table``."""
    if not path.is_file():
        return
    seen: dict[tuple[str, ...], int] = {}
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
        if key in seen:
            raise BadInputError(f"{path}:{i}: duplicate samples for {_fmt_key(table.kind, key)} (first on line "
                                f"{seen[key]})")
        seen[key] = i
        if key in table.rows:
            table.samples[key] = arr


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


# --- comparing -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    threshold: float = 0.05
    mem_threshold: float = 0.10
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    match_ignore: tuple[str, ...] = ()
    fdr: bool = True  # Benjamini–Hochberg over the configs tested with samples


@dataclass
class Comparison:
    base: Run
    new: Run
    opts: Options
    rows: list[dict[str, Any]]  # one per matched config (all kinds)
    unmatched: list[dict[str, Any]]  # {"kind", "side": "base"|"new", "config"}
    env_diff: list[dict[str, Any]]  # {"field", "base", "new", "material"}

    @property
    def regressions(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["regression"]]

    def counts(self) -> dict[str, int]:
        c = {"matched": len(self.rows), "slower": 0, "faster": 0, "unchanged": 0, "regressions": 0,
             "unmatched": len(self.unmatched), "only_in_base": 0, "only_in_new": 0}
        for r in self.rows:
            if r["verdict"] in ("slower", "faster", "unchanged"):
                c[r["verdict"]] += 1
            c["regressions"] += bool(r["regression"])
        for u in self.unmatched:
            c[f"only_in_{u['side']}"] += 1
        return c


def _fmt_key(kind: _Kind, key: Sequence[str]) -> str:
    return "(" + ", ".join(f"{f}={v}" for f, v in zip(kind.key, key) if v not in ("", "0", "false")) + ")"


def _label(kind: _Kind, row: dict[str, Any]) -> str:
    if kind is MODELS:
        return Config.from_dict(row).label()
    return " ".join(str(row.get(f)) for f in kind.key[:-1])  # the device is added where runs span several


def _project(table: Table, ignore: Sequence[str]) -> dict[tuple[str, ...], tuple[str, ...]]:
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


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def _latency(kind: _Kind, b: dict[str, Any], n: dict[str, Any], bs: np.ndarray | None, ns: np.ndarray | None,
             opts: Options, seed: int) -> dict[str, Any]:
    """Ratio, interval, p-value, significance and the method used, for two ok rows."""
    bp, np50 = float(b[kind.p50]), float(n[kind.p50])
    if bs is not None and ns is not None and len(bs) >= MIN_SAMPLES and len(ns) >= MIN_SAMPLES:
        est = compare_samples(bs, ns, n_boot=opts.resamples, confidence=opts.confidence, seed=seed)
        return {"ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high, "p_value": est.p_value,
                "significant": est.significant, "n_base": est.n_base, "n_new": est.n_new,
                "method": "bootstrap+mann-whitney", "base_p50": float(np.median(bs)), "new_p50": float(np.median(ns))}
    out = {"ratio": np50 / bp, "ci_low": None, "ci_high": None, "p_value": None, "n_base": _float(b.get("n_samples")),
           "n_new": _float(n.get("n_samples")), "base_p50": bp, "new_p50": np50}
    lo_b, hi_b, lo_n, hi_n = (_float(b.get(kind.p20)), _float(b.get(kind.p80)), _float(n.get(kind.p20)),
                              _float(n.get(kind.p80)))
    if None in (lo_b, hi_b, lo_n, hi_n):
        return {**out, "significant": False, "method": "medians only (no samples, no p20/p80)"}
    return {**out, "significant": bool(lo_n > hi_b or hi_n < lo_b), "method": "p20-p80 overlap (no samples)"}


def _compare_pair(kind: _Kind, b: dict[str, Any], n: dict[str, Any], bs: np.ndarray | None, ns: np.ndarray | None,
                  opts: Options) -> dict[str, Any]:
    label = _label(kind, n)
    diff = {f: (str(b.get(f)), str(n.get(f))) for f in opts.match_ignore if f in kind.key and b.get(f) != n.get(f)}
    if diff:
        label += " (" + "; ".join(f"{f}: {x} → {y}" for f, (x, y) in diff.items()) + ")"
    sb, sn = str(b["status"]), str(n["status"])
    ok_status = "pass" if kind is CHECKS else OK
    out: dict[str, Any] = {"kind": kind.name, "config": label, "base_status": sb, "new_status": sn,
                           "base_line": b["_line"], "new_line": n["_line"], "unit": kind.unit, "notes": [],
                           "regression": False, "ratio": None, "ci_low": None, "ci_high": None, "p_value": None,
                           "q_value": None, "mem_growth": False,
                           "base_p50": None, "new_p50": None, "n_base": None, "n_new": None, "method": "",
                           "significant": False}
    if sb != sn:
        out["verdict"] = "regression" if sb == ok_status else ("fixed" if sn == ok_status else "status changed")
        out["regression"] = sb == ok_status
        msg = str(n.get("message") or n.get("error") or "")[:120] if sn != ok_status else ""
        out["notes"].append(f"status {sb} → {sn}" + (f": {msg}" if msg else ""))
    elif kind is CHECKS or sb != OK:
        out["verdict"] = "unchanged"
    else:
        seed = (opts.seed + zlib.crc32(label.encode())) % 2**32  # independent, reproducible stream per config
        out.update(_latency(kind, b, n, bs, ns, opts, seed))
        _decide(out, opts)
    if kind.flops:
        fb, fn = _float(b.get(kind.flops)), _float(n.get(kind.flops))
        if fb is not None and fn is not None and abs(fn - fb) > 1e-9 * max(abs(fb), 1e-30):
            out["notes"].append(f"{kind.flops} {fb:.4g} → {fn:.4g} ({_pct(fn / fb) if fb else 'new'})")
    if kind.memory:
        mb, mn = _float(b.get(kind.memory)), _float(n.get(kind.memory))
        if mb and mn is not None and abs(mn / mb - 1) >= opts.mem_threshold:
            out["notes"].append(f"peak memory {mb:.0f} → {mn:.0f} MB ({_pct(mn / mb)})")
            out["mem_growth"] = mn > mb
            out["regression"] = out["regression"] or mn > mb
    for side, r in (("base", b), ("new", n)):
        if str(r.get("noisy")).lower() == "true":
            out["notes"].append(f"{side} flagged noisy")
    if out["method"] and out["method"] != "bootstrap+mann-whitney":
        out["notes"].append(out["method"])
    return out


def _decide(out: dict[str, Any], opts: Options) -> None:
    """Latency verdict of an ok → ok pair from its significance and the effect threshold."""
    change = out["ratio"] - 1
    if out["significant"] and abs(change) >= opts.threshold:
        out["verdict"] = "slower" if change > 0 else "faster"
        out["regression"] = change > 0 or out["mem_growth"]
    else:
        out["verdict"] = "unchanged"
        out["regression"] = out["mem_growth"]


def _adjust_fdr(rows: list[dict[str, Any]], opts: Options) -> None:
    """Benjamini–Hochberg over the rows tested with samples: ``q_value``, and significance needs ``q`` < alpha."""
    tested = [r for r in rows if r["p_value"] is not None and r["method"] == "bootstrap+mann-whitney"]
    if not opts.fdr or not tested:
        return
    for r, q in zip(tested, benjamini_hochberg([r["p_value"] for r in tested])):
        r["q_value"] = float(q)
        if r["significant"] and q >= 1.0 - opts.confidence:
            r["significant"] = False
            _decide(r, opts)


_ENV_FIELDS: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] = [
    # (label, getter, material: a difference makes timings incomparable)
    ("device", lambda e: ", ".join(g.get("name", "?") for g in e.get("gpus", [])) or e.get("device_name")
     or e.get("device"), True),
    ("cpu", lambda e: e.get("cpu_model"), True),
    # The ISA ATen dispatches to and native bf16/fp16 decide which CPU kernels ran (AVX2 bf16 conv: a fallback).
    ("cpu ISA", lambda e: e.get("cpu_capability"), True),
    ("cpu bf16/fp16 native", lambda e: None if e.get("cpu_bf16_native") is None
     else f"bf16={e.get('cpu_bf16_native')}, fp16={e.get('cpu_fp16_native')}", True),
    ("oneDNN", lambda e: e.get("onednn_version"), True),
    ("host", lambda e: e.get("host"), True),
    ("threads", lambda e: e.get("threads"), True),
    ("torch", lambda e: e.get("torch_version"), True),
    ("torchvision", lambda e: e.get("torchvision_version"), True),
    ("triton", lambda e: e.get("triton_version"), True),
    ("cuda", lambda e: e.get("cuda_version"), True),
    ("cudnn", lambda e: e.get("cudnn_version"), True),
    ("driver", lambda e: e.get("driver"), True),
    ("python", lambda e: e.get("python"), True),
    ("cpu governor", lambda e: e.get("cpu_governor"), True),
    ("TRITON_INTERPRET", lambda e: e.get("triton_interpret"), True),
    ("git", lambda e: (e.get("git_sha") or "") + ("-dirty" if e.get("git_dirty") else "") or None, False),
]


# The 1-minute load average per core (env.json's ``load_avg[0]`` / ``cpu_count``) differs materially when one run had a
# quarter of the machine more busy than the other: on 2 cores, one extra runnable process for half of the minute.
# A smaller difference is ordinary fluctuation (the load average moves between any two runs) and is not listed.
LOAD_PER_CORE_DIFF = 0.25


def _load_per_core(env: dict[str, Any]) -> float | None:
    load = env.get("load_avg")
    if not load:
        return None
    return float(load[0]) / max(int(env.get("cpu_count") or 1), 1)


def env_diff(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Fields whose values differ between the two environments (a field missing on both sides is skipped), and the
    load when it differs by more than :data:`LOAD_PER_CORE_DIFF` per core."""
    out = []
    for name, get, material in _ENV_FIELDS:
        vb, vn = get(base), get(new)
        if (vb is not None or vn is not None) and str(vb) != str(vn):
            out.append({"field": name, "base": vb, "new": vn, "material": material})
    lb, ln = _load_per_core(base), _load_per_core(new)
    if lb is not None and ln is not None and abs(lb - ln) > LOAD_PER_CORE_DIFF:
        out.append({"field": "load (1-min avg per core)", "base": round(lb, 2), "new": round(ln, 2), "material": True})
    elif (lb is None) != (ln is None):  # one side predates load recording: say so, but it proves nothing
        out.append({"field": "load (1-min avg per core)", "base": None if lb is None else round(lb, 2),
                    "new": None if ln is None else round(ln, 2), "material": False})
    return out


def compare_runs(base: Run, new: Run, opts: Options | None = None) -> Comparison:
    """Match every table the two runs share and compare each matched config (see the module docstring)."""
    opts = opts or Options()
    valid = sorted({f for k in KINDS for f in k.key})
    for f in opts.match_ignore:
        if f not in valid:
            raise BadInputError(f"--match-ignore: unknown key field {f!r}; valid: {', '.join(valid)}")
    rows: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    shared = [k for k in KINDS if k.name in base.tables and k.name in new.tables]
    if not shared:
        raise BadInputError(f"{base.path} and {new.path} have no table in common "
                            f"({', '.join(base.tables)} vs {', '.join(new.tables)})")
    for kind in KINDS:
        tb, tn = base.tables.get(kind.name), new.tables.get(kind.name)
        if tb is None or tn is None:
            for side, t in (("base", tb), ("new", tn)):
                if t is not None:
                    unmatched += [{"kind": kind.name, "side": side, "config": _label(kind, r)} for r in t.rows.values()]
            continue
        pb, pn = _project(tb, opts.match_ignore), _project(tn, opts.match_ignore)
        devices = {k[-1] for k in (*tb.rows, *tn.rows)}
        for pk, kb in pb.items():
            if pk not in pn:
                unmatched.append({"kind": kind.name, "side": "base", "config": _label(kind, tb.rows[kb])})
                continue
            kn = pn[pk]
            pair = _compare_pair(kind, tb.rows[kb], tn.rows[kn], tb.samples.get(kb), tn.samples.get(kn), opts)
            if len(devices) > 1 and "device_name" not in opts.match_ignore:
                pair["config"] += f" @ {kn[-1]}"  # several GPU types: say which one each row is about
            rows.append(pair)
        unmatched += [{"kind": kind.name, "side": "new", "config": _label(kind, tn.rows[kn])}
                      for pk, kn in pn.items() if pk not in pb]
    _adjust_fdr(rows, opts)
    return Comparison(base, new, opts, rows, unmatched, env_diff(base.env, new.env))


# --- rendering -------------------------------------------------------------------------------------------------------


def _is_notable(r: dict[str, Any]) -> bool:
    return r["verdict"] != "unchanged" or r["regression"] or bool([n for n in r["notes"] if "(no samples" not in n
                                                                    and "medians only" not in n and "noisy" not in n])


def _num(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(float(v), spec)


def _change_cell(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "—"
    s = _pct(r["ratio"])
    if r["ci_low"] is not None:
        s += f" [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
    return s


def _verdict_cell(r: dict[str, Any]) -> str:
    v = r["verdict"]
    return {"slower": "🔴 **slower**", "faster": "🟢 faster", "regression": "🔴 **regression**",
            "fixed": "🟢 fixed"}.get(v, v)


def _table(rows: list[dict[str, Any]], conf: float) -> list[str]:
    out = [f"| config | base p50 | new p50 | change [{conf:.0%} CI] | q (p) | verdict | notes |",
           "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] and r["base_p50"] is not None else ""
        base = _num(r["base_p50"], ".4g") + unit if r["base_status"] in (OK,) else r["base_status"]
        new = _num(r["new_p50"], ".4g") + unit if r["new_status"] in (OK,) else r["new_status"]
        if r["kind"] == CHECKS.name:
            base, new = r["base_status"], r["new_status"]
        notes = "; ".join(n.replace("|", "\\|") for n in r["notes"])
        pq = r["q_value"] if r.get("q_value") is not None else r["p_value"]
        p = "—" if pq is None else (f"{pq:.2g}" if pq >= 1e-4 else "<1e-4")
        out.append(f"| {r['config']} | {base} | {new} | {_change_cell(r)} | {p} | {_verdict_cell(r)} | {notes} |")
    return out


def summary_line(c: Comparison) -> str:
    n = c.counts()
    head = f"❌ **{n['regressions']} regression(s)**" if n["regressions"] else "✅ **no regressions**"
    parts = [f"{n['slower']} slower", f"{n['faster']} faster", f"{n['unchanged']} unchanged of {n['matched']} matched"]
    other = n["matched"] - n["slower"] - n["faster"] - n["unchanged"]
    if other:
        parts.append(f"{other} status change(s)")
    if n["unmatched"]:
        parts.append(f"{n['only_in_base']} only in base, {n['only_in_new']} only in new")
    env = " · ⚠️ environments differ" if any(d["material"] for d in c.env_diff) else ""
    return f"{head}: " + ", ".join(parts) + f" (threshold ±{c.opts.threshold:.0%}){env}"


def render_markdown(c: Comparison) -> str:
    """A PR comment: summary line, environment warning, significant changes, the rest folded in ``<details>``."""
    o = c.opts
    out = ["## visionbench compare", "", summary_line(c), "",
           f"base `{c.base.path}` → new `{c.new.path}`", ""]
    material = [d for d in c.env_diff if d["material"]]
    if material:
        out += ["> [!WARNING]", "> The two runs' environments differ, so timings may not be comparable: "
                + "; ".join(f"{d['field']} `{d['base']}` → `{d['new']}`" for d in material), ""]
    noisy = [r for r in c.rows if any(n.endswith("flagged noisy") for n in r["notes"])]
    if noisy:
        out += [f"> [!NOTE]\n> {len(noisy)} of {len(c.rows)} configs were flagged noisy (IQR/median > 10%) in base "
                "or new: the interval only covers the noise *within* each run, so treat their verdicts with care and "
                "rerun on a quiet machine.", ""]
    notable = sorted((r for r in c.rows if _is_notable(r)),
                     key=lambda r: (not r["regression"], -abs((r["ratio"] or 1.0) - 1)))
    rest = [r for r in c.rows if not _is_notable(r)]
    if notable:
        out += [f"### Significant changes ({len(notable)})", "", *_table(notable, o.confidence), ""]
    else:
        out += ["No significant changes.", ""]
    if rest:
        out += [f"<details><summary>No significant change ({len(rest)})</summary>", "",
                *_table(rest, o.confidence), "", "</details>", ""]
    if c.unmatched:
        out += [f"<details><summary>Unmatched configs ({len(c.unmatched)})</summary>", ""]
        out += [f"- only in {u['side']} ({u['kind']}): {u['config']}" for u in c.unmatched]
        out += ["", "</details>", ""]
    if c.env_diff:
        out += ["<details><summary>Environment diff</summary>", "", "| field | base | new |", "|---|---|---|"]
        out += [f"| {d['field']} | {d['base']} | {d['new']} |" for d in c.env_diff]
        out += ["", "</details>", ""]
    ignore = f" Matched ignoring {', '.join(o.match_ignore)}." if o.match_ignore else ""
    test = ("p adjusted by Benjamini–Hochberg over the configs compared with samples (q)" if o.fdr
            else "p (not adjusted for multiple comparisons)")
    out += [f"<sub>change = median(new)/median(base) − 1 of the per-sample latencies; {o.confidence:.0%} percentile "
            f"bootstrap interval ({o.resamples} resamples, seed {o.seed}); significant when the interval excludes 0 "
            f"and the Mann–Whitney {test} < {1 - o.confidence:.2g}; slower/faster needs |change| ≥ {o.threshold:.0%}. "
            f"Peak memory flagged at ±{o.mem_threshold:.0%}. Regressions: slower, ok → failed status, memory growth, "
            f"numerics pass → fail.{ignore}</sub>"]
    return "\n".join(out) + "\n"


_CSV_COLUMNS = ["kind", "config", "verdict", "regression", "ratio", "ci_low", "ci_high", "p_value", "q_value",
                "significant",
                "base_p50", "new_p50", "unit", "n_base", "n_new", "base_status", "new_status", "method", "notes",
                "base_line", "new_line"]


def _records(c: Comparison) -> list[dict[str, Any]]:
    recs = [{k: ("; ".join(r[k]) if k == "notes" else r.get(k)) for k in _CSV_COLUMNS} for r in c.rows]
    recs += [{"kind": u["kind"], "config": u["config"], "verdict": f"only_in_{u['side']}", "regression": False}
             for u in c.unmatched]
    return recs


def render_csv(c: Comparison) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in _records(c):
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in _CSV_COLUMNS})
    return buf.getvalue()


def render_json(c: Comparison) -> str:
    doc = {"base": str(c.base.path), "new": str(c.new.path), "options": {**c.opts.__dict__},
           "summary": c.counts(), "env_diff": c.env_diff, "rows": [{**r} for r in c.rows], "unmatched": c.unmatched}
    return json.dumps(doc, indent=1, default=str) + "\n"


# --- CLI -------------------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="baseline run directory or CSV")
    p.add_argument("new", help="new run directory or CSV")
    p.add_argument("--threshold", type=float, default=0.05, help="minimum |ratio - 1| to call a change (0.05)")
    p.add_argument("--mem-threshold", type=float, default=0.10, help="peak-memory change to flag (0.10)")
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap interval / test level (0.95)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--match-ignore", nargs="+", default=[], metavar="FIELD",
                   help="key fields to ignore when matching, e.g. backend (eager run vs compile run)")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md")
    p.add_argument("--out", help="write the report here instead of stdout")
    p.add_argument("--no-fdr", dest="fdr", action="store_false",
                   help="judge each config by its own p-value (default: Benjamini–Hochberg q over all configs)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 if any config is significantly slower, fails where it passed, or grew in memory")


def main(args: argparse.Namespace) -> int:
    if args.threshold < 0:
        raise BadInputError(f"--threshold must be >= 0, got {args.threshold}")
    if args.mem_threshold < 0:
        raise BadInputError(f"--mem-threshold must be >= 0, got {args.mem_threshold}")
    if not 0 < args.confidence < 1:
        raise BadInputError(f"--confidence must be between 0 and 1, got {args.confidence}")
    if args.resamples < 100:
        raise BadInputError(f"--resamples must be at least 100, got {args.resamples}")
    opts = Options(args.threshold, args.mem_threshold, args.confidence, args.resamples, args.seed,
                   tuple(args.match_ignore), getattr(args, "fdr", True))
    base, new = load_run(args.base), load_run(args.new)
    c = compare_runs(base, new, opts)
    text = {"md": render_markdown, "csv": render_csv, "json": render_json}[args.format](c)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"{summary_line(c)}\nwrote {args.out}")
    else:
        print(text, end="")
    return 1 if args.fail_on_regression and c.regressions else 0
