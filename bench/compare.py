"""``python -m bench compare BASE NEW``: a noise-aware comparison of two runs, as a PR comment or for machines.

BASE and NEW are run directories (``results.csv`` + ``samples.jsonl`` + ``env.json``, and/or the kernel bench's
``kernels.csv`` / ``kernels_check.csv``) or single CSV files. Rows are matched by their config key
(:data:`bench.config.KEY_FIELDS`; kernels: :data:`KERNEL_KEY`; numerics: :data:`CHECK_KEY`); ``--match-ignore``
drops fields from the key (e.g. ``backend`` to compare an eager run with a compile run; ignoring ``backend`` also
ignores ``compile_mode``, its sub-axis). A config measured in several
repetitions (``run --repeats``, ``bench ab``) is one matched config with several runs. Per matched config:

* ``ratio`` = median(NEW) / median(BASE) latency (> 1: NEW is slower) with an interval and a test
  (:mod:`bench.compare_stats`): with >= 2 runs per side, run-level (hierarchical bootstrap over runs then samples,
  Welch's t on the log per-run medians); with one run per side, the per-sample bootstrap and Mann–Whitney test, which
  cannot see drift between runs (said in the report; CPU configs under 1 ms then need ``--single-run-threshold``).
  *Significant* = the interval excludes 1 and the p-value, adjusted by Benjamini–Hochberg over every config compared
  with samples (``q``; ``--no-fdr``: raw p), < 1 − confidence. Without stored samples (a bare CSV) the fallback is:
  significant when the p20–p80 ranges do not overlap.
* verdict ``slower`` / ``faster`` = significant and ``|ratio − 1| >= --threshold`` (and, run-level, > the between-run
  spread); otherwise ``unchanged``.
* status changes (ok → oom/error/timeout/crashed/unsupported/inaccurate is a
  regression), FLOP changes, peak-memory changes of at
  least ``--mem-threshold`` (growth is a regression), numerics pass → fail/error (a regression).
* ``compile_ms`` (the first call: torch.compile, Triton JIT, cuDNN autotuning) changes of at least
  ``--compile-threshold``, reported (``compile_ratio``) but not a regression; when the two rows ran with different
  compile-cache states (``compile_cache``: cold vs warm) the note says the figures are not comparable instead.
* an environment diff (device, versions, threads, CPU ISA, ...) with a warning when they differ, and a warning when
  the recorded machine state differs (CPU ISA, CPU/GPU clocks, GPU throttle reasons, load: :mod:`bench.machine_state`).

Reading and matching: :mod:`bench.compare_match`; statistics: :mod:`bench.compare_stats`; rendering:
:mod:`bench.compare_render`. Bad input (missing path, missing columns, duplicate keys, torn last line, text in
numeric cells, broken samples file) raises :class:`bench.io.BadInputError` naming the file and line; the CLI prints it
and exits 2. ``--fail-on-regression`` exits 1 when any config regressed.
"""

from __future__ import annotations

import argparse
import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compare_match import CHECK_KEY, CHECKS, KERNEL_KEY, KINDS, MODELS, OK, Run, Table, _Kind, label, load_run, project
from .compare_render import render_csv, render_json, render_markdown, summary_line
from .compare_stats import (
    RUN_LEVEL,
    SAMPLE_LEVEL,
    SINGLE_RUN_THRESHOLD,
    Options,
    adjust_fdr,
    decide,
    latency,
    pct,
    to_float,
)
from .io import BadInputError
from .machine_state import state_warnings

__all__ = ["add_arguments", "main", "compare_runs", "load_run", "render_markdown", "render_csv", "render_json",
           "Options", "Comparison", "KERNEL_KEY", "CHECK_KEY", "summary_line", "Table"]


@dataclass
class Comparison:
    base: Run
    new: Run
    opts: Options
    rows: list[dict[str, Any]]  # one per matched config (all kinds)
    unmatched: list[dict[str, Any]]  # {"kind", "side": "base"|"new", "config"}
    env_diff: list[dict[str, Any]]  # {"field", "base", "new", "material"}
    state_warnings: list[str] = field(default_factory=list)  # machine state differences (bench.machine_state)

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


def _compare_pair(kind: _Kind, bt: Table, nt: Table, kb: tuple[str, ...], kn: tuple[str, ...],
                  opts: Options) -> dict[str, Any]:
    b, n = bt.rows[kb], nt.rows[kn]
    name = label(kind, n)
    diff = {f: (str(b.get(f)), str(n.get(f))) for f in opts.match_ignore if f in kind.key and b.get(f) != n.get(f)}
    if "backend" in diff:
        diff.pop("compile_mode", None)  # implied by the backend (eager "" vs compile "default")
    if diff:
        name += " (" + "; ".join(f"{f}: {x} → {y}" for f, (x, y) in diff.items()) + ")"
    sb, sn = str(b["status"]), str(n["status"])
    ok_status = "pass" if kind is CHECKS else OK
    out: dict[str, Any] = {"kind": kind.name, "config": name, "base_status": sb, "new_status": sn,
                           "base_line": b["_line"], "new_line": n["_line"], "unit": kind.unit, "notes": [],
                           "regression": False, "ratio": None, "ci_low": None, "ci_high": None, "p_value": None,
                           "q_value": None, "mem_growth": False,
                           "base_p50": None, "new_p50": None, "n_base": None, "n_new": None, "method": "",
                           "significant": False, "reps_base": b.get("_reps", 1), "reps_new": n.get("_reps", 1),
                           "spread": None}
    if sb != sn:
        out["verdict"] = "regression" if sb == ok_status else ("fixed" if sn == ok_status else "status changed")
        out["regression"] = sb == ok_status
        msg = str(n.get("message") or n.get("error") or "")[:120] if sn != ok_status else ""
        out["notes"].append(f"status {sb} → {sn}" + (f": {msg}" if msg else ""))
    elif kind is CHECKS or sb != OK:
        out["verdict"] = "unchanged"
    else:
        seed = (opts.seed + zlib.crc32(name.encode())) % 2**32  # independent, reproducible stream per config
        out.update(latency(kind, b, n, bt, nt, kb, kn, opts, seed))
        decide(out, opts)
        if out.get("spread") is not None and out["method"] == RUN_LEVEL:
            out["notes"].append(f"runs {out['reps_base']} vs {out['reps_new']}, between-run spread "
                                f"{out['spread'] * 100:.1f}%" + (" (exceeds the change)" if out.get("within_spread")
                                                                  else ""))
        elif out["method"] == SAMPLE_LEVEL and out["threshold"] > opts.threshold:
            out["notes"].append(f"one run per side, CPU under 1 ms: threshold ±{out['threshold']:.0%}")
    if kind.flops:
        fb, fn = to_float(b.get(kind.flops)), to_float(n.get(kind.flops))
        if fb is not None and fn is not None and abs(fn - fb) > 1e-9 * max(abs(fb), 1e-30):
            out["notes"].append(f"{kind.flops} {fb:.4g} → {fn:.4g} ({pct(fn / fb) if fb else 'new'})")
    if kind.memory:
        mb, mn = to_float(b.get(kind.memory)), to_float(n.get(kind.memory))
        if mb and mn is not None and abs(mn / mb - 1) >= opts.mem_threshold:
            out["notes"].append(f"peak memory {mb:.0f} → {mn:.0f} MB ({pct(mn / mb)})")
            out["mem_growth"] = mn > mb
            out["regression"] = out["regression"] or mn > mb
    if kind.compile and sb == sn == ok_status:
        _compile_note(out, b, n, kind.compile, opts.compile_threshold)
    for side, r in (("base", b), ("new", n)):
        if str(r.get("noisy")).lower() == "true":
            out["notes"].append(f"{side} flagged noisy")
    if out["method"] and out["method"] not in (SAMPLE_LEVEL, RUN_LEVEL):
        out["notes"].append(out["method"])
    return out


def _compile_note(out: dict[str, Any], b: dict[str, Any], n: dict[str, Any], col: str, threshold: float) -> None:
    """Report a first-call (compile) time change, unless the two rows' compile caches differ in state."""
    cb, cn = to_float(b.get(col)), to_float(n.get(col))
    if not cb or cn is None:
        return
    out["compile_ratio"] = cn / cb
    state = [str(r.get("compile_cache") or "").split(":")[0] for r in (b, n)]
    if state[0] and state[1] and state[0] != state[1]:
        out["notes"].append(f"{col} not comparable: compile cache {state[0]} → {state[1]}")
    elif abs(cn / cb - 1) >= threshold:
        out["notes"].append(f"{col} {cb:.0f} → {cn:.0f} ({pct(cn / cb)})")


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
    if "backend" in opts.match_ignore and "compile_mode" not in opts.match_ignore:
        # the compile mode is a sub-axis of the compiled backends: eager ("") pairs with compile ("default")
        opts = dataclasses.replace(opts, match_ignore=(*opts.match_ignore, "compile_mode"))
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
                    unmatched += [{"kind": kind.name, "side": side, "config": label(kind, r)} for r in t.rows.values()]
            continue
        pb, pn = project(tb, opts.match_ignore), project(tn, opts.match_ignore)
        devices = {k[-1] for k in (*tb.rows, *tn.rows)}
        for pk, kb in pb.items():
            if pk not in pn:
                unmatched.append({"kind": kind.name, "side": "base", "config": label(kind, tb.rows[kb])})
                continue
            kn = pn[pk]
            pair = _compare_pair(kind, tb, tn, kb, kn, opts)
            if len(devices) > 1 and "device_name" not in opts.match_ignore:
                pair["config"] += f" @ {kn[-1]}"  # several GPU types: say which one each row is about
            rows.append(pair)
        unmatched += [{"kind": kind.name, "side": "new", "config": label(kind, tn.rows[kn])}
                      for pk, kn in pn.items() if pk not in pb]
    adjust_fdr(rows, opts)
    states = []
    if MODELS.name in base.tables and MODELS.name in new.tables:
        states = state_warnings(*[[r for reps in t.tables[MODELS.name].reps.values() for r in reps]
                                  for t in (base, new)])
    return Comparison(base, new, opts, rows, unmatched, env_diff(base.env, new.env), states)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="baseline run directory or CSV")
    p.add_argument("new", help="new run directory or CSV")
    p.add_argument("--threshold", type=float, default=0.05, help="minimum |ratio - 1| to call a change (0.05)")
    p.add_argument("--single-run-threshold", type=float, default=SINGLE_RUN_THRESHOLD,
                   help="minimum |ratio - 1| for a CPU config under 1 ms measured in one run per side, where drift "
                        f"between runs is not covered ({SINGLE_RUN_THRESHOLD})")
    p.add_argument("--mem-threshold", type=float, default=0.10, help="peak-memory change to flag (0.10)")
    p.add_argument("--compile-threshold", type=float, default=0.25,
                   help="compile_ms (first call) change to report, not a regression (0.25)")
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap interval / test level (0.95)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--match-ignore", nargs="+", default=[], metavar="FIELD",
                   help="key fields to ignore when matching, e.g. backend (eager run vs compile run)")
    p.add_argument("--pool-runs", action="store_true",
                   help="treat a config's repetitions as one run (per-sample statistics, drift not covered): the "
                        "comparison without run-level statistics, e.g. to measure what they change")
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
                   tuple(args.match_ignore), getattr(args, "fdr", True),
                   getattr(args, "single_run_threshold", SINGLE_RUN_THRESHOLD), getattr(args, "pool_runs", False),
                   getattr(args, "compile_threshold", 0.25))
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
