"""``python -m bench`` / ``visionbench``: run, models, report, kernels, compare, merge.

Bad input (unknown model, dtype, device, backend, suite; non-positive batch; a malformed file) prints one line naming
the bad value and the valid choices, and exits with code 2 before anything is measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from .io import BadInputError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _bool_list(values: list[str]) -> list[bool]:
    out = []
    for v in values:
        if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise BadInputError(f"--channels-last takes true/false, got {v!r}")
        out.append(v.lower() in ("true", "1", "yes"))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="visionbench", description="Benchmark vision models and Triton kernels.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="sweep models x batch sizes x dtypes x devices x modes x backends")
    r.add_argument("--suite", help="named sweep from bench/suites.toml (explicit flags override it)")
    r.add_argument("--models", nargs="+")
    r.add_argument("--batch-sizes", nargs="+", type=int)
    r.add_argument("--dtypes", nargs="+", help="fp32 tf32 fp16 bf16 (autocast) fp16-pure bf16-pure (model cast)")
    r.add_argument("--devices", nargs="+", help="cpu cuda")
    r.add_argument("--modes", nargs="+", help="infer train")
    r.add_argument("--backends", nargs="+", help="eager compile triton compile-triton")
    r.add_argument("--kernels", nargs="+", help="with --backends triton / compile-triton: 'all' or kernel names, "
                                                 "one at a time")
    r.add_argument("--channels-last", nargs="*", default=None,
                   help="no value = true; or a list such as 'false true' to sweep both")
    r.add_argument("--input-size", type=int, help="square input side instead of each model's default")
    r.add_argument("--compile-mode", nargs="+", dest="compile_modes",
                   help="torch.compile modes for the compiled backends, swept: default reduce-overhead max-autotune "
                        "max-autotune-no-cudagraphs (part of the config key)")
    r.add_argument("--timer", nargs="+", dest="timers",
                   help="timing regimes, swept: back-to-back (default: consecutive steps, events around short loops), "
                        "flushed (L2 flushed before each call, do_bench), cudagraph (the warm step captured, replays "
                        "timed); CUDA only except back-to-back")
    r.add_argument("--compile-cache", choices=["cold", "warm"],
                   help="cold (default): fresh Inductor/Triton cache dirs per compiled config, so compile_ms is a "
                        "first compile; warm: the shared caches (a rerun hits them)")
    r.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="turn cuDNN autotuning off on CUDA (on by default, as timm runs; recorded per row)")
    r.add_argument("--out", help="output directory (default results/<timestamp>-<suite>)")
    r.add_argument("--resume", action="store_true", help="skip configs already in OUT/results.csv")
    r.add_argument("--repeats", type=int, default=1, metavar="K",
                   help="K independent repetitions per config (fresh build; with --isolate a fresh process), "
                        "round-robin over the configs; compare then tests at the level of runs (1)")
    r.add_argument("--isolate", action="store_true", default=None, help="one fresh worker process per config")
    r.add_argument("--timeout-s", type=float, help="per-config time limit (status 'timeout')")
    r.add_argument("--budget-s", type=float,
                   help="time budget for the whole sweep: configs run cheapest-first per model (every model's first "
                        "config before any model's second); none starts after S seconds; the rest -> OUT/skipped.txt")
    r.add_argument("--max-config-s", type=float,
                   help="cap per config: a first call over S s ends it as 'timeout'; else fewer samples (>= 3) are "
                        "taken to fit and the row is flagged reduced_samples")
    r.add_argument("--allow-slow-fallback", action="store_true",
                   help="measure CPU fp16/bf16 configs even where the probe finds a slow fallback path (else "
                        "'unsupported' with the reason)")
    r.add_argument("--min-time-s", type=float)
    r.add_argument("--warmup-s", type=float)
    r.add_argument("--min-samples", type=int, help="fewest samples per config (5; at least 3: p20/p50/p80)")
    r.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    r.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    r.add_argument("--no-accuracy", action="store_true",
                   help="skip the accuracy gate (outputs vs the float64 model after timing; bench/accuracy.py)")
    r.add_argument("--profile", action="store_true", help="record a torch.profiler trace per config in OUT/traces")
    r.add_argument("--dry-run", action="store_true", help="list the configs and check imports; measure nothing")
    r.add_argument("--no-progress", action="store_true")
    _add_distributed_flags(r)

    m = sub.add_parser("models", help="list registered models with params and GFLOPs")
    m.add_argument("--format", choices=["table", "json"], default="table")
    m.add_argument("--no-flops", action="store_true", help="skip the FLOP count (fast)")

    rep = sub.add_parser("report", help="regenerate DIR/report.md from DIR/results.csv")
    rep.add_argument("dir")

    k = sub.add_parser("kernels", help="kernel numerics (--check), microbenchmarks (--bench), AOT compile (--compile)")
    try:
        from .kernelbench.cli import add_arguments as add_kernel_args
    except ImportError:
        add_kernel_args = None
    if add_kernel_args is not None:
        add_kernel_args(k)

    try:
        from .compare import add_arguments as add_compare_args
    except ImportError:
        add_compare_args = None
    if add_compare_args is not None:
        add_compare_args(sub.add_parser("compare", help="noise-aware comparison of two runs"))
    from .ab import add_arguments as add_ab_args

    add_ab_args(sub.add_parser("ab", help="A/B two git revisions on this machine: worktrees, ABBA runs, compare"))
    try:
        from .merge import add_arguments as add_merge_args
    except ImportError:
        add_merge_args = None
    if add_merge_args is not None:
        add_merge_args(sub.add_parser("merge", help="merge shard directories into one run"))
    return p


def _add_distributed_flags(r: argparse.ArgumentParser) -> None:
    try:
        from .distributed import add_run_arguments
    except ImportError:
        return
    add_run_arguments(r)


def _resolve_run(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any], str]:
    from .config import expand, load_suites, validate_choice

    suite: dict[str, Any] = {}
    suite_name = args.suite or "custom"
    if args.suite:
        suites = load_suites()
        validate_choice("suite", args.suite, sorted(suites))
        suite = suites[args.suite]
    import models as registry

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag is not None else suite.get(key, default)

    model_names = pick(args.models, "models", None)
    if model_names in (None, ["all"], "all"):
        if args.models is None and not args.suite:
            raise BadInputError("run needs --models NAME... (or 'all') or --suite NAME")
        model_names = registry.list_models()
    cl = _bool_list(args.channels_last) if args.channels_last else ([True] if args.channels_last == [] else None)
    configs = expand(
        models=model_names,
        batch_sizes=pick(args.batch_sizes, "batch_sizes", [1]),
        dtypes=pick(args.dtypes, "dtypes", ["fp32"]),
        devices=pick(args.devices, "devices", ["cpu"]),
        modes=pick(args.modes, "modes", ["infer"]),
        backends=pick(args.backends, "backends", ["eager"]),
        channels_last=cl if cl is not None else [bool(x) for x in suite.get("channels_last", [False])],
        kernels=pick(args.kernels, "kernels", ["all"]),
        input_size=args.input_size if args.input_size is not None else int(suite.get("input_size", 0)),
        model_batch_sizes=None if args.batch_sizes else suite.get("model_batch_sizes"),
        model_input_size=suite.get("model_input_size"),
        compile_modes=pick(args.compile_modes, "compile_modes", ["default"]),
        timers=pick(args.timers, "timers", ["back-to-back"]),
    )
    return configs, suite, suite_name


def cmd_run(args: argparse.Namespace) -> int:
    from .progress import console, summary_table
    from .report import write_report
    from .runner import RunOptions
    from .sweep import FAILED_STATUSES, run_sweep

    configs, suite, suite_name = _resolve_run(args)
    if args.threads is not None and args.threads <= 0:
        raise BadInputError(f"--threads must be positive, got {args.threads}")
    min_samples = args.min_samples if args.min_samples is not None else int(suite.get("min_samples", 5))
    if min_samples < 3:
        raise BadInputError(f"--min-samples must be at least 3 (p20, p50 and p80 need three), got {min_samples}")
    if args.repeats < 1:
        raise BadInputError(f"--repeats must be a positive integer, got {args.repeats}")
    budget_s = args.budget_s if args.budget_s is not None else float(suite.get("budget_s", 0))
    max_config_s = args.max_config_s if args.max_config_s is not None else float(suite.get("max_config_s", 0))
    for flag, v in (("--budget-s", budget_s), ("--max-config-s", max_config_s)):
        if v < 0:
            raise BadInputError(f"{flag} must be >= 0 (0 = no limit), got {v:g}")
    if budget_s:
        from .config import cheapest_first

        configs = cheapest_first(configs)
    shard = getattr(args, "shard", None)
    sweep_configs = configs  # the whole sweep, recorded in sweep.json even when this run is one shard of it
    if shard is not None:  # an empty --shard '' is a bad spec, not "no shard"
        from .distributed import select_shard

        configs = select_shard(configs, shard)
    if args.dry_run:
        from .dryrun import dry_run

        return dry_run(configs)
    out = Path(args.out or f"results/{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{suite_name}")
    opts = RunOptions(
        warmup_s=args.warmup_s if args.warmup_s is not None else float(suite.get("warmup_s", 0.2)),
        min_time_s=args.min_time_s if args.min_time_s is not None else float(suite.get("min_time_s", 1.0)),
        min_samples=min_samples,
        timeout_s=args.timeout_s if args.timeout_s is not None else float(suite.get("timeout_s", 0)),
        threads=args.threads, count_flops=not args.no_flops, check_accuracy=not args.no_accuracy,
        profile_dir=str(out / "traces") if args.profile else None,
        allow_slow_fallback=args.allow_slow_fallback, max_config_s=max_config_s,
        compile_cache=args.compile_cache or str(suite.get("compile_cache", "cold")),
        cudnn_benchmark=not args.no_cudnn_benchmark,
    )
    isolate = args.isolate if args.isolate is not None else bool(suite.get("isolate", False))
    ray_address = getattr(args, "ray", None)
    if ray_address is not None:
        from .distributed import run_on_ray

        if budget_s:
            raise BadInputError("--budget-s applies to local sweeps; with --ray, bound each task with --timeout-s")

        rows = run_on_ray(configs, out, opts, address=ray_address, resume=args.resume, argv=sys.argv,
                          progress=not args.no_progress, cpus_per_task=getattr(args, "ray_cpus_per_task", 1),
                          sweep_configs=sweep_configs, shard=shard, repeats=args.repeats)
    else:
        rows = run_sweep(configs, out, opts, isolate=isolate, resume=args.resume, progress=not args.no_progress,
                         argv=sys.argv, sweep_configs=sweep_configs, shard=shard, budget_s=budget_s,
                         repeats=args.repeats)
    report = write_report(out)
    console.print(summary_table(rows))
    console.print(f"wrote {out / 'results.csv'}, {report}, {out / 'env.json'}")
    skipped = out / "skipped.txt"
    if budget_s and skipped.exists():
        n = len(skipped.read_text().splitlines())
        console.print(f"[yellow]--budget-s {budget_s:g} spent: {n} config(s) not started, listed in {skipped}[/]")
    failed = [r for r in rows if r.get("status") in FAILED_STATUSES]
    if failed:
        console.print(f"[red]{len(failed)} config(s) failed[/] ({', '.join(sorted({r['status'] for r in failed}))})")
        return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .modelinfo import model_table

    rows = model_table(count=not args.no_flops)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="registered models (GFLOPs: torch.utils.flop_counter, multiply-add = 2, per sample)")
    for col in ("name", "family", "task", "params (M)", "GFLOPs", "GMACs (fvcore)", "input", "hot paths"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["family"], r["task"], f"{r['params'] / 1e6:.2f}",
                  "—" if r["gflops"] is None else f"{r['gflops']:.2f}",
                  "—" if r["gmacs"] is None else f"{r['gmacs']:.2f}", "x".join(map(str, r["input_shape"])),
                  ",".join(r["hot_paths"]) or "—")
    Console(width=160).print(t)
    return 0


def main(argv: list[str] | None = None) -> int:
    from models import UnknownModelError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "report":
            from .report import write_report

            print(write_report(args.dir))
            return 0
        if args.command == "kernels":
            from .kernelbench.cli import main as kernels_main

            return kernels_main(args)
        if args.command == "compare":
            from .compare import main as compare_main

            return compare_main(args)
        if args.command == "ab":
            from .ab import main as ab_main

            return ab_main(args)
        if args.command == "merge":
            from .merge import main as merge_main

            return merge_main(args)
    except BadInputError as e:
        sys.stderr.write(f"visionbench: error: {e}\n")
        return 2
    except UnknownModelError as e:
        sys.stderr.write(f"visionbench: error: {e}\n")
        return 2
    return 2
