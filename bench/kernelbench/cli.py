"""``python -m bench kernels``: numerics check and GPU microbenchmarks of every registered Triton kernel.

    TRITON_INTERPRET=1 python -m bench kernels --check                 # CI: every kernel's small shapes on the CPU
    python -m bench kernels --bench --kernels window_attention --dtypes bf16 --out results/h100   # on a GPU
    python -m bench kernels --compile --arch sm_90 --out results/sm90-compile    # no GPU needed, interpreter off

Exit codes: 0 all good; 1 ``--check`` found a failing/erroring row, ``--bench`` could not time the Triton provider
somewhere (oom/error/compile_error; peers and eager failing do not count), or ``--compile`` found a kernel variant
that does not compile or would not launch on the architecture; 2 bad input, checked before anything runs:
an unknown kernel, shape, dtype, direction or provider (one line naming the valid choices), no ``--check``/``--bench``,
``--bench`` without a CUDA device (we chose 2: the request cannot be served on this machine, which is a usage error,
not a measurement that failed), ``--check`` where Triton cannot run (CPU without ``TRITON_INTERPRET=1``), or
``--compile`` with ``TRITON_INTERPRET=1`` (it drives Triton's JIT, which the interpreter replaces).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.config import validate_choice
from bench.io import BadInputError, RowWriter

from .check import (
    CHECK_COLUMNS,
    DIRECTIONS,
    DTYPES,
    TritonUnavailableError,
    check_case,
    dtype_name,
    is_failure,
    iter_cases,
    require_triton_path,
    summarize_statuses,
)

__all__ = ["add_arguments", "main", "run"]

CHECK_CSV = "kernels_check.csv"
BENCH_CSV = "kernels.csv"
COMPILE_CSV = "kernels_compile.csv"
SAMPLES_JSONL = "kernels_samples.jsonl"
DEFAULT_CHECK_DTYPES = ("fp32", "fp16", "bf16", "fp64")
DEFAULT_BENCH_DTYPES = ("bf16", "fp16", "fp32")
Case = tuple[Any, str, Any, torch.dtype, str]  # (spec, shape name, shape, dtype, direction)
NEEDS_CUDA = ("--bench needs a CUDA device and none is available here (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or use --check on the CPU with TRITON_INTERPRET=1.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``kernels`` subcommand's flags (the lead's ``bench/cli.py`` calls this on its sub-parser)."""
    p.add_argument("--check", action="store_true", help="numerics against float64 and eager (pass/fail, exit 1)")
    p.add_argument("--bench", action="store_true", help="GPU latency, TFLOP/s, GB/s, %% of peak, speedups")
    p.add_argument("--compile", action="store_true",
                   help="compile every kernel variant a CUDA run would launch for --arch, without a GPU: registers, "
                        "spills, shared memory, occupancy (exit 1 if one does not compile or would not launch)")
    p.add_argument("--arch", default="sm_90", help="--compile target: sm_80 sm_89 sm_90 (default sm_90)")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="with --compile: the launches these models make end to end with their kernels switched in "
                        "(what `run --backends triton` launches), instead of the kernels' named shapes")
    p.add_argument("--batch-sizes", nargs="+", type=int, metavar="N", help="with --models (default 1)")
    p.add_argument("--modes", nargs="+", metavar="MODE", help="with --models: infer train (default infer)")
    p.add_argument("--input-size", type=int, default=0, metavar="PX",
                   help="with --models: square input side in pixels, as `run --input-size` (default: each model's own)")
    p.add_argument("--kernels", nargs="+", metavar="NAME", help="default: every registered kernel")
    p.add_argument("--shapes", nargs="+", metavar="NAME", help="named shapes (default: all of the chosen set)")
    p.add_argument("--dtypes", nargs="+", metavar="DTYPE",
                   help=f"{' '.join(DTYPES)} (default: check {' '.join(DEFAULT_CHECK_DTYPES)}; "
                        f"bench {' '.join(DEFAULT_BENCH_DTYPES)})")
    p.add_argument("--directions", nargs="+", metavar="DIR", help="forward backward (default: both)")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="bench providers: triton eager compile and the kernels' peers (default: all)")
    p.add_argument("--out", metavar="DIR", help=f"write DIR/{CHECK_CSV} and DIR/{BENCH_CSV} row by row")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--test-shapes", dest="shape_set", action="store_const", const="test",
                   help="the small odd shapes (default for --check on the CPU)")
    g.add_argument("--real-shapes", dest="shape_set", action="store_const", const="real",
                   help="the real model shapes (default on CUDA and for --bench)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--budget-s", type=float, metavar="S",
                   help="wall-clock budget per mode: cases run in shape-rank order (every kernel's first shape "
                        "first) and none starts after S seconds; the rest are listed in DIR/kernels_<mode>_skipped.txt")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="bench warm-up budget per provider (ms)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="bench measurement budget per provider (ms)")


# --- validation -------------------------------------------------------------------------------------------------------


class _Plan:
    """Validated arguments."""

    def __init__(self, args: argparse.Namespace) -> None:
        import kernels  # noqa: F401 - importing registers every kernel
        from kernels.registry import get_kernel, list_kernels

        self.check = bool(getattr(args, "check", False))
        self.bench = bool(getattr(args, "bench", False))
        self.compile = bool(getattr(args, "compile", False))
        if not (self.check or self.bench or self.compile):
            raise BadInputError("choose what to run: --check (numerics) and/or --bench (GPU timing), or --compile")
        if self.compile and (self.check or self.bench):
            raise BadInputError("--compile runs alone: it needs TRITON_INTERPRET unset and records launches instead "
                                "of running them")
        from .aot import ARCHS

        self.models: list[str] | None = getattr(args, "models", None)
        if self.models:
            import models

            if not self.compile:
                raise BadInputError("--models works with --compile (model sweeps are `python -m bench run`)")
            for m in self.models:
                validate_choice("model", m, models.list_models())
        self.batch_sizes = list(dict.fromkeys(getattr(args, "batch_sizes", None) or [1]))
        if any(b < 1 for b in self.batch_sizes):
            raise BadInputError(f"--batch-sizes must be positive, got {self.batch_sizes}")
        self.modes = list(dict.fromkeys(getattr(args, "modes", None) or ["infer"]))
        self.input_size = int(getattr(args, "input_size", 0) or 0)
        if self.input_size and not self.models:
            raise BadInputError("--input-size works with --compile --models (the kernels' named shapes are fixed)")
        if self.input_size < 0:
            raise BadInputError(f"--input-size must be a positive number of pixels, got {self.input_size}")
        for m in self.modes:
            validate_choice("mode", m, ["infer", "train"])
        arch = getattr(args, "arch", None) or "sm_90"
        validate_choice("arch", arch, list(ARCHS))
        self.arch = ARCHS[arch]
        registered = list_kernels()
        if not registered:
            raise BadInputError("no kernels are registered (each kernels/<name>/__init__.py calls register_kernel)")
        names = getattr(args, "kernels", None) or registered
        for n in names:
            validate_choice("kernel", n, registered)
        self.specs = [get_kernel(n) for n in dict.fromkeys(names)]

        cuda = torch.cuda.is_available()
        self.device = getattr(args, "device", None) or ("cuda" if cuda else "cpu")
        if self.compile:
            self.device = "cpu"  # launches are recorded on CPU tensors that stand in for CUDA ones
        if self.device == "cuda" and not cuda:
            raise BadInputError(NEEDS_CUDA if self.bench else "--device cuda: no CUDA device is available")
        if self.bench and self.device != "cuda":
            raise BadInputError("--bench times GPU kernels: use --device cuda (CPU timings of Triton's interpreter "
                                "would mean nothing)" if cuda else NEEDS_CUDA)

        shape_set = getattr(args, "shape_set", None)
        self.real_shapes = (shape_set == "real") if shape_set else (self.device == "cuda" or not self.check)
        sets = [s.shapes if self.real_shapes else s.test_shapes for s in self.specs]
        valid_shapes = sorted({n for shapes in sets for n in shapes})
        self.shapes = getattr(args, "shapes", None)
        for n in self.shapes or ():
            validate_choice("shape", n, valid_shapes)

        self.dtypes = self._dtypes(getattr(args, "dtypes", None))
        self.directions = list(dict.fromkeys(getattr(args, "directions", None) or DIRECTIONS))
        for d in self.directions:
            validate_choice("direction", d, list(DIRECTIONS))

        from .microbench import provider_names

        valid_providers = list(dict.fromkeys(p for s in self.specs for p in provider_names(s)))
        self.providers = getattr(args, "providers", None)
        for p in self.providers or ():
            validate_choice("provider", p, valid_providers)
        out = getattr(args, "out", None)
        self.out = Path(out) if out else None
        self.seed = int(getattr(args, "seed", 0) or 0)
        self.warmup_ms = float(getattr(args, "warmup_ms", 25.0) or 25.0)
        self.rep_ms = float(getattr(args, "rep_ms", 100.0) or 100.0)
        budget = getattr(args, "budget_s", None)
        if budget is not None and not budget > 0:
            raise BadInputError(f"--budget-s must be a positive number of seconds, got {budget}")
        self.budget_s: float | None = budget
        if self.check:
            try:
                require_triton_path(self.device)
            except TritonUnavailableError as e:
                raise BadInputError(str(e)) from None
        if self.compile:
            from .aot import AotUnavailableError, require_aot

            try:
                require_aot()
            except AotUnavailableError as e:
                raise BadInputError(str(e)) from None

    def cases(self, mode: str) -> list[Case]:
        """The mode's cases, in shape-rank order when a budget may cut the run short."""
        return list(iter_cases(self.specs, self.dtypes[mode], self.directions, self.shapes, self.real_shapes,
                               by_rank=self.budget_s is not None))

    def _dtypes(self, names: Sequence[str] | None) -> dict[str, list[torch.dtype]]:
        for n in names or ():
            validate_choice("dtype", n, list(DTYPES))
        pick = lambda default: [DTYPES[n] for n in dict.fromkeys(names or default)]  # noqa: E731
        if names and self.models and "fp64" in names:
            raise BadInputError("--models runs the model's own dtypes: fp32 fp16 bf16 (fp64 is a kernel-only dtype)")
        return {"check": pick(DEFAULT_CHECK_DTYPES), "bench": pick(DEFAULT_BENCH_DTYPES),
                "compile": pick(DEFAULT_CHECK_DTYPES), "compile_models": pick(("bf16", "fp32"))}


# --- output -------------------------------------------------------------------------------------------------------


def _console() -> Any:
    from rich.console import Console

    c = Console()
    if not c.is_terminal:  # CI logs: do not squeeze the table into 80 columns
        c = Console(width=220)
    return c


def _g(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)


_STYLE = {"pass": "green", "ok": "green", "fail": "bold red", "error": "bold red", "unsupported": "yellow"}


def print_check_table(rows: Sequence[dict[str, Any]], console: Any = None) -> None:
    from rich.table import Table

    t = Table(title="Kernel numerics (vs float64; eager = the reference in the same dtype)", show_lines=False)
    for col in ("kernel", "shape", "dtype", "dir", "output", "path", "max_abs", "rel_fro", "eager max_abs",
                "eager rel_fro", "tol max_abs", "tol rel_fro", "status", "message"):
        t.add_column(col, overflow="fold")
    for r in rows:
        st = r["status"]
        t.add_row(r["kernel"], r["shape"], r["dtype"], r["direction"][:3], r["output"], r["path"],
                  _g(r.get("max_abs_err")), _g(r.get("rel_fro_err")), _g(r.get("eager_max_abs_err")),
                  _g(r.get("eager_rel_fro_err")), _g(r.get("tol_max_abs")), _g(r.get("tol_rel_fro")),
                  f"[{_STYLE.get(st, '')}]{st}[/]", r.get("message", ""))
    (console or _console()).print(t)


def print_bench_table(rows: Sequence[dict[str, Any]], console: Any = None) -> None:
    from rich.table import Table

    t = Table(title="Kernel microbenchmarks (p50 with L2 flushed; warm = L2 not flushed)")
    for col in ("kernel", "shape", "dtype", "dir", "provider", "status", "p50 µs", "p20-p80 µs", "warm µs",
                "compile ms", "TFLOP/s", "GB/s", "% peak BW", "floor µs", "× eager", "× compile", "× best peer",
                "message"):
        t.add_column(col, overflow="fold")
    for r in rows:
        st = r["status"]
        t.add_row(r["kernel"], r["shape"], r["dtype"], r["direction"][:3], r["provider"],
                  f"[{_STYLE.get(st, 'red')}]{st}[/]", _g(r.get("p50_us"), ".1f"),
                  f"{_g(r.get('p20_us'), '.1f')}-{_g(r.get('p80_us'), '.1f')}", _g(r.get("warm_p50_us"), ".1f"),
                  _g(r.get("compile_ms"), ".0f"), _g(r.get("tflops"), ".2f"), _g(r.get("gbps"), ".0f"),
                  _g(r.get("pct_peak_bw"), ".1f"), _g(r.get("floor_us"), ".1f"), _g(r.get("speedup_vs_eager"), ".2f"),
                  _g(r.get("speedup_vs_compile"), ".2f"),
                  _g(r.get("speedup_vs_best_peer"), ".2f") + (f" ({r['best_peer']})" if r.get("best_peer") else ""),
                  r.get("message", ""))
    (console or _console()).print(t)


def env_row_columns(device: str) -> tuple[list[str], dict[str, Any]]:
    from bench.env import ENV_COLUMNS, collect_env, env_columns

    cols = env_columns(collect_env(sys.argv), device)
    return [c for c in ENV_COLUMNS if c in cols], cols


def _fresh_writer(plan: _Plan, name: str, columns: list[str], *also: str) -> RowWriter | None:
    """A writer for ``DIR/name``, replacing an earlier run's file (and ``also``), like ``run`` without ``--resume``."""
    if plan.out is None:
        return None
    for n in (name, *also):
        (plan.out / n).unlink(missing_ok=True)
    return RowWriter(plan.out / name, columns)


# --- the modes ------------------------------------------------------------------------------------------------


def skipped_file(mode: str) -> str:
    """``kernels_<mode>_skipped.txt``: the cases ``--budget-s`` left out (as the model sweep's ``skipped.txt``)."""
    return f"kernels_{mode}_skipped.txt"


def _over_budget(plan: _Plan | None, mode: str, start: float, rest: Sequence[Any],
                 label: Callable[[Any], str]) -> bool:
    """True once ``--budget-s`` has passed since ``start``; then lists ``rest`` (the cases never started)."""
    if plan is None or plan.budget_s is None or time.monotonic() - start < plan.budget_s:
        return False
    path = plan.out / skipped_file(mode) if plan.out is not None else None
    if path is not None:
        path.write_text("".join(label(c) + "\n" for c in rest))
    sys.stderr.write(f"--budget-s spent: {len(rest)} {mode} case(s) not started"
                     + (f", listed in {path}" if path else "") + "\n")
    return True


def _label(case: Case) -> str:
    spec, shape_name, _, dtype, direction = case
    return f"{spec.name} {shape_name} {dtype_name(dtype)} {direction}"


def _each_case(cases: Sequence[Any], writer: RowWriter | None, env: dict[str, Any],
               run_case: Callable[..., list[dict[str, Any]]],
               describe: Callable[[Any, list[dict[str, Any]]], str], plan: _Plan | None, mode: str,
               label: Callable[[Any], str] = _label) -> list[dict[str, Any]]:
    """Run every case (until ``--budget-s`` is spent), append its rows with the environment columns as they come,
    and print a progress line each."""
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    for i, case in enumerate(cases, 1):
        if _over_budget(plan, mode, start, cases[i - 1:], label):
            break
        case_rows = run_case(*case)
        for r in case_rows:
            if writer is not None:
                writer.append({**r, **env})
        rows.extend(case_rows)
        sys.stderr.write(f"[{i}/{len(cases)}] {label(case)}: {describe(case, case_rows)}\n")
    return rows


def _print_counts(console: Any, counts: dict[str, int], path: Path | None) -> None:
    console.print(" · ".join(f"{k}: {v}" for k, v in counts.items()) + (f" · rows in {path}" if path else ""))


def run_check(plan: _Plan) -> tuple[int, list[dict[str, Any]]]:
    cases = plan.cases("check")
    env_cols, env = env_row_columns(plan.device)
    writer = _fresh_writer(plan, CHECK_CSV, CHECK_COLUMNS + env_cols, skipped_file("check"))

    def describe(case: Case, case_rows: list[dict[str, Any]]) -> str:
        worst = max((r["status"] for r in case_rows), key=["pass", "unsupported", "fail", "error"].index)
        return f"{worst} ({case_rows[0]['elapsed_s']:.1f}s)"

    rows = _each_case(cases, writer, env, lambda *c: check_case(*c, plan.device, plan.seed), describe,
                      plan, "check")
    console = _console()
    print_check_table(rows, console)
    _print_counts(console, summarize_statuses(rows), plan.out / CHECK_CSV if plan.out else None)
    return (1 if any(is_failure(r) for r in rows) else 0), rows


def write_bench_rows(rows: Sequence[dict[str, Any]], writer: RowWriter, samples_path: Path,
                     env: dict[str, Any]) -> None:
    """Append a case's provider rows to ``kernels.csv`` and each timed row's raw samples to ``samples_path``
    (keyed like the CSV row: kernel, shape, dtype, direction, provider, device name), for ``bench compare``."""
    from bench.io import append_jsonl

    for r in rows:
        writer.append({**r, **env})
        if r.get("status") == "ok" and r.get("samples_us"):
            append_jsonl(samples_path, {**{k: r.get(k) for k in ("kernel", "shape", "dtype", "direction",
                                                                  "provider")},
                                        "device_name": env.get("device_name"), "samples_us": list(r["samples_us"])})


def run_bench(plan: _Plan) -> tuple[int, list[dict[str, Any]]]:
    from .microbench import BENCH_COLUMNS, bench_case, cuda_context_ok, provider_names
    from .peaks import device_peak

    peak = device_peak(plan.device)
    sys.stderr.write(f"device {peak.device_name}: peak {peak.gbps:.0f} GB/s ({peak.source}); "
                     f"measured copy {peak.copy_gbps or float('nan'):.0f} GB/s\n")
    env_cols, env = env_row_columns(plan.device)
    writer = _fresh_writer(plan, BENCH_CSV, BENCH_COLUMNS + env_cols, SAMPLES_JSONL, skipped_file("bench"))
    rows: list[dict[str, Any]] = []
    cases = plan.cases("bench")
    dead = False
    start = time.monotonic()
    for i, (spec, shape_name, shape, dtype, direction) in enumerate(cases, 1):
        if _over_budget(plan, "bench", start, cases[i - 1:], _label):
            break
        provs = [p for p in provider_names(spec) if plan.providers is None or p in plan.providers]
        if not provs:
            continue
        if dead:
            case_rows = [{"kernel": spec.name, "shape": shape_name, "dtype": dtype_name(dtype), "direction": direction,
                          "provider": p, "status": "error",
                          "message": "skipped: the CUDA context is unusable after an earlier error"} for p in provs]
        else:
            case_rows = bench_case(spec, shape_name, shape, dtype, direction, provs, plan.device, peak,
                                   plan.warmup_ms, plan.rep_ms, plan.seed)
            dead = not cuda_context_ok()
        if writer is not None:
            write_bench_rows(case_rows, writer, plan.out / SAMPLES_JSONL, env)
        rows.extend(case_rows)
        sys.stderr.write(f"[{i}/{len(cases)}] {spec.name} {shape_name} {direction}: "
                         + ", ".join(f"{r['provider']} {r['status']}" for r in case_rows) + "\n")
    print_bench_table(rows, _console())
    bad = [r for r in rows if r["provider"] == "triton" and r["status"] not in ("ok", "unsupported")]
    return (1 if bad else 0), rows


def compile_model_cases(cases: Sequence[tuple[str, int, str, str]], arch: Any, writer: RowWriter | None,
                        env: dict[str, Any], plan: _Plan | None = None, input_size: int = 0) -> list[dict[str, Any]]:
    """Compile what each ``(model, batch size, dtype, mode)`` launches end to end (``--compile --models`` and
    ``gpu_job --preflight``), rows appended to ``writer`` as they come; ``input_size`` (pixels, 0: each model's own)
    as ``run --input-size``."""
    from collections import Counter

    from .aot import compile_model_case

    def count(_: Any, rs: list[dict[str, Any]]) -> str:
        seen = Counter((r.get("triton_kernel", "-"), r["status"]) for r in rs)
        return ", ".join(f"{n}× {k} {st}" for (k, st), n in seen.items())

    px = f" {input_size}px" if input_size else ""
    return _each_case(cases, writer, env, lambda *c: compile_model_case(*c, arch, input_size=input_size), count,
                      plan, "compile", label=lambda c: f"{c[0]} b{c[1]}{px} {c[2]} {c[3]}")


def run_compile(plan: _Plan) -> tuple[int, list[dict[str, Any]]]:
    from .aot import AOT_COLUMNS, AOT_FAILURES, compile_case, print_compile_table, summarize

    env_cols, env = env_row_columns("cpu")
    writer = _fresh_writer(plan, COMPILE_CSV, AOT_COLUMNS + env_cols, skipped_file("compile"))
    if plan.models:
        dtypes = [dtype_name(d) for d in plan.dtypes["compile_models"]]
        cases = [(m, b, dt, mode) for m in plan.models for b in plan.batch_sizes for dt in dtypes
                 for mode in plan.modes]
        rows = compile_model_cases(cases, plan.arch, writer, env, plan, input_size=plan.input_size)
    else:
        rows = _each_case(plan.cases("compile"), writer, env, lambda *c: compile_case(*c, plan.arch, plan.seed),
                          lambda _, rs: ", ".join(f"{r.get('triton_kernel', '?')} {r['status']}" for r in rs),
                          plan, "compile")
    console = _console()
    print_compile_table(rows, plan.arch, console)
    _print_counts(console, summarize(rows), plan.out / COMPILE_CSV if plan.out else None)
    return (1 if any(r["status"] in AOT_FAILURES for r in rows) else 0), rows


def main(args: argparse.Namespace) -> int:
    """Run ``--check`` and/or ``--bench`` as the flags say; returns the exit code (see the module docstring)."""
    try:
        plan = _Plan(args)
    except BadInputError as e:
        sys.stderr.write(f"bench kernels: error: {e}\n")
        return 2
    code = 0
    if plan.out is not None:  # the run's environment beside its CSVs, as for model sweeps (the report reads it)
        import json

        from bench.env import collect_env

        plan.out.mkdir(parents=True, exist_ok=True)
        (plan.out / "env.json").write_text(json.dumps(collect_env(sys.argv), indent=2) + "\n")
    if plan.check:
        code = max(code, run_check(plan)[0])
    if plan.bench:
        code = max(code, run_bench(plan)[0])
    if plan.compile:
        code = max(code, run_compile(plan)[0])
    if plan.out is not None:
        from bench.report import write_report

        try:
            sys.stderr.write(f"report: {write_report(plan.out)}\n")
        except BadInputError as e:  # e.g. a budget spent before the first case: no rows to report on
            sys.stderr.write(f"no report: {e}\n")
    return code


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` with :func:`add_arguments` and run :func:`main` (for tests and ``python -m``)."""
    p = argparse.ArgumentParser(prog="python -m bench.kernelbench.cli", description=__doc__.splitlines()[0])
    add_arguments(p)
    return main(p.parse_args(list(argv)))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
