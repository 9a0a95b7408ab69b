"""The whole GPU job in one command, for a CUDA machine's existing Python with no network (``nox -s bench-gpu``).

    python -m bench.gpu_job OUT_DIR [--budget-s 450] [--dry-run]

Steps, all written under ``OUT_DIR`` and bounded by one wall-clock budget (default 7.5 minutes):

1. ``kernels --check`` on CUDA at the real model shapes, bf16/fp16/fp32, forward and backward -> ``kernels_check.csv``
   (at most 15% of the budget)
2. ``kernels --bench`` for every kernel and provider -> ``kernels.csv`` (at most 40% of the budget: the inductor and
   FlexAttention providers compile per case, several seconds each, so not every shape fits). Both interleave the
   kernels by (shape rank, dtype, direction) — every kernel's first real shape in bf16 forward, then backward, then
   the next dtype, before any kernel's second shape — and list the cases they had no time for in
   ``kernels_check_skipped.txt`` / ``kernels_bench_skipped.txt``.
3. a model sweep -> ``results.csv``: every model at batch 1 and a throughput batch, fp32/tf32/bf16 eager, timed
   back-to-back (consecutive steps, as timm and TorchBench time; :mod:`bench.cuda_timing`); the ``triton`` backend
   for models with a kernel hot path; batch 1 of the classification and segmentation models also captured in a CUDA
   graph (``timer=cudagraph``: the launch-overhead-free figure); bf16 ``channels_last`` for the conv nets;
   ``torch.compile`` (modes ``default`` and ``reduce-overhead``) for four representative models only (a compile of
   every model would not fit the budget), each compile timed from a cold Inductor/Triton cache; resnet50 also with the
   L2 flushed before each step (``timer=flushed``, the cold-cache figure), beside its back-to-back and graph rows.
   Each config runs in its own worker process, as ``run --suite gpu``
   does, so a segfault, a sticky CUDA error or a hung kernel ends that config (``crashed`` / ``timeout``), not the job.
   Configs are ordered by priority and the sweep stops starting new ones when the budget is spent; the ones skipped
   are listed in ``skipped.txt`` (never reported as measured).
4. ``report.md`` (with the kernel sections) and a short summary table printed last.

Without fvcore (not on every GPU image) the GMACs column stays empty and says why; without nox, call this module
directly. With no CUDA device it exits 1 after one sentence saying so (``--dry-run`` works anywhere: it lists the
configs and checks the imports). The exit code is non-zero when a kernel step fails or a model config ends in
``error``, ``timeout`` or ``crashed`` (the sweep's own rule); every step runs and writes its files either way.

``--preflight [--arch sm_90]`` runs on a machine *without* a GPU (``TRITON_INTERPRET`` unset): every launch of this
project's ``@triton.jit`` kernels that this job would make — the kernel cases at their real shapes, and each
``triton``-backend model config end to end at its batch size — is recorded and compiled for the architecture
(:mod:`bench.kernelbench.aot`), into ``OUT/kernels_compile.csv`` and ``OUT/report.md``; exit 1 if one would not compile
or launch. On a CPU without native bf16 the bf16 model steps' own convolutions and matmuls run in fp32, rounded to
bf16 (``eager_math`` column; the launches are the same, tested); Faster R-CNN's box counts depend on the values, so
there its bf16 configs are ``unsupported`` (its kernel cases cover roi_align in bf16 at its real shapes). The Triton
code that inductor and FlexAttention generate (the ``compile`` and FlexAttention providers, the ``compile`` model
configs) is not covered: it only exists once those compile on the GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "model_configs", "check_argv", "job_exit_code"]

# bf16 first: a check cut short by its budget has then covered every kernel in bf16 (``iter_cases`` keeps this order).
CHECK_DTYPES = ("bf16", "fp16", "fp32")

COMPILE_MODELS = ("resnet50", "efficientnet_b0", "vit_b_16", "swin_t")
COMPILE_TRITON_MODELS = ("swin_t", "efficientnet_b0", "fasterrcnn_resnet50_fpn")
# Convolutional families, measured in channels_last as well (cuDNN's NHWC kernels; ViT/Swin/MAE are matmul-bound).
CONV_FAMILIES = ("basic_cnn", "resnet", "efficientnet", "unet", "deeplabv3plus", "yolov5", "simclr")
THROUGHPUT_BATCH = {"fasterrcnn_resnet50_fpn": 4, "vit_l_16": 32, "mae_vit_l_16": 32, "unet": 8, "unet_transposed": 8,
                    "deeplabv3plus_resnet50": 8, "yolov5x": 16, "yolov5l": 16, "swin_b": 32}


def model_configs() -> list:
    """Model configs in priority order (eager bf16/fp32 first, then triton, CUDA-graph batch 1, resnet50 flushed,
    channels_last, tf32, compile, compile-triton)."""
    import models
    from bench.config import COMPILED_BACKENDS, KERNEL_BACKENDS, Config
    from bench.runner import graph_capturable

    specs = {n: models.get_spec(n) for n in models.list_models() if models.get_spec(n).family != "fake"}
    names = list(specs)
    out: list[Config] = []

    def add(backend: str, dtypes: tuple[str, ...], only: tuple[str, ...] | None = None, *,
            batches: tuple[str, ...] = ("one", "throughput"), channels_last: bool = False,
            compile_mode: str = "default", timer: str = "back-to-back") -> None:
        for dt in dtypes:
            for n in names:
                if only is not None and n not in only:
                    continue
                sizes = {"one": 1, "throughput": THROUGHPUT_BATCH.get(n, 64)}
                for b in batches:
                    out.append(Config(n, backend, "infer", "cuda", dt, sizes[b], channels_last,
                                      "all" if backend in KERNEL_BACKENDS else "", 0,
                                      compile_mode if backend in COMPILED_BACKENDS else "", timer))

    add("eager", ("bf16", "fp32"))
    hot = tuple(n for n in names if specs[n].hot_paths)
    add("triton", ("bf16", "fp32"), hot)
    add("eager", ("bf16",), tuple(n for n in names if graph_capturable(n)), batches=("one",), timer="cudagraph")
    add("eager", ("bf16",), ("resnet50",), timer="flushed")  # resnet50: all three regimes side by side
    add("eager", ("bf16",), tuple(n for n in names if specs[n].family in CONV_FAMILIES), channels_last=True)
    add("eager", ("tf32",))
    add("compile", ("bf16",), COMPILE_MODELS)
    add("compile", ("bf16",), COMPILE_MODELS, compile_mode="reduce-overhead")
    add("compile-triton", ("bf16",), COMPILE_TRITON_MODELS)  # our kernels inside the compiled model
    return out



def _kernel_budgets(total_s: float) -> tuple[float, float]:
    """Seconds for ``kernels --check`` and ``kernels --bench``; the model sweep gets the rest (less a 60 s margin)."""
    return 0.15 * total_s, 0.40 * total_s


def check_argv(out: Path, budget_s: float) -> list[str]:
    """The ``kernels --check`` step's arguments."""
    return ["--check", "--device", "cuda", "--real-shapes", "--dtypes", *CHECK_DTYPES, "--out", str(out),
            "--budget-s", f"{budget_s:.0f}"]


def job_exit_code(step_codes: dict[str, int], model_rows: list[dict]) -> int:
    """The worst kernel-step exit code, and 1 if a model config ended in a failed status (``FAILED_STATUSES``)."""
    from bench.sweep import FAILED_STATUSES

    failed = any(r.get("status") in FAILED_STATUSES for r in model_rows)
    return max([*step_codes.values(), 1 if failed else 0])


def preflight(configs: list, out: Path, arch: str) -> int:
    """Compile this job's Triton launches for ``arch`` without a GPU: kernel cases, then triton-backend models."""
    from bench.config import KERNEL_BACKENDS
    from bench.io import RowWriter
    from bench.kernelbench.aot import AOT_COLUMNS, AOT_FAILURES, ARCHS, summarize
    from bench.kernelbench.cli import COMPILE_CSV, compile_model_cases, env_row_columns
    from bench.kernelbench.cli import run as kernels_run
    from bench.report import write_report

    code = kernels_run(["--compile", "--arch", arch, "--real-shapes", "--dtypes", "fp32", "fp16", "bf16",
                        "--out", str(out)])
    if code == 2:  # bad input (e.g. TRITON_INTERPRET=1): already said in one line
        return 2
    env_cols, env = env_row_columns("cpu")
    writer = RowWriter(out / COMPILE_CSV, AOT_COLUMNS + env_cols)  # appends to the kernel cases' file
    # compile-triton launches the same kernels with the same launch parameters as triton (the op bodies).
    cases = list(dict.fromkeys((c.model, c.batch_size, c.dtype, c.mode) for c in configs
                               if c.backend in KERNEL_BACKENDS))
    rows = compile_model_cases(cases, ARCHS[arch], writer, env)
    write_report(out)
    counts = summarize(rows)
    print("triton-backend model configs: " + " · ".join(f"{k}: {v}" for k, v in counts.items()))
    return max(code, 1 if any(r["status"] in AOT_FAILURES for r in rows) else 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_job", description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="results/gpu")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget for the whole job")
    p.add_argument("--dry-run", action="store_true", help="list configs, check imports, measure nothing")
    p.add_argument("--preflight", action="store_true",
                   help="no GPU needed: compile every Triton launch this job would make for --arch (see the doc)")
    p.add_argument("--arch", default="sm_90", help="--preflight target (sm_80, sm_89, sm_90)")
    args = p.parse_args(argv)
    t_start = time.monotonic()
    try:  # nox's bench-gpu runs in whatever interpreter is current: say plainly if it has no torch
        import torch
    except ImportError:
        print(f"bench-gpu needs PyTorch in the current interpreter ({sys.executable}), and torch is not importable.",
              file=sys.stderr)
        return 1
    configs = model_configs()
    if args.preflight:
        return preflight(configs, Path(args.out), args.arch)
    if args.dry_run:
        from bench.dryrun import dry_run
        from kernels import list_kernels

        check_s, bench_s = _kernel_budgets(args.budget_s)
        print(f"kernels: {', '.join(list_kernels())} (checked at real shapes fwd+bwd for up to {check_s:.0f} s; "
              f"benched vs all providers for up to {bench_s:.0f} s; model sweep until {args.budget_s - 60:.0f} s)")
        return dry_run(configs)
    if not torch.cuda.is_available():
        print("bench-gpu needs a CUDA device, and torch.cuda.is_available() is False on this machine.", file=sys.stderr)
        return 1

    from bench.kernelbench.cli import run as kernels_run
    from bench.progress import console, summary_table
    from bench.report import write_report
    from bench.runner import RunOptions
    from bench.sweep import FAILED_STATUSES, run_sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes = {}
    check_s, bench_s = _kernel_budgets(args.budget_s)
    codes["check"] = kernels_run(check_argv(out, check_s))
    codes["bench"] = kernels_run(["--bench", "--device", "cuda", "--out", str(out), "--warmup-ms", "10",
                                  "--rep-ms", "40", "--budget-s", f"{bench_s:.0f}"])
    opts = RunOptions(warmup_s=0.1, min_time_s=0.2, timeout_s=90.0)
    done = run_sweep(configs, out, opts, isolate=True, resume=True, progress=True, argv=sys.argv,
                     deadline=t_start + args.budget_s - 60.0)
    skipped = (out / "skipped.txt").read_text().splitlines() if (out / "skipped.txt").exists() else []
    write_report(out)
    console.print(summary_table(done, title=f"GPU model sweep ({len(done)} configs, {len(skipped)} skipped for time)"))
    from bench.kernelbench.cli import skipped_file

    n_kskip = sum(len((out / skipped_file(m)).read_text().splitlines()) for m in ("check", "bench")
                  if (out / skipped_file(m)).exists())
    n_failed = sum(r.get("status") in FAILED_STATUSES for r in done)
    console.print(f"kernels --check exit {codes['check']}, kernels --bench exit {codes['bench']} ({n_kskip} kernel "
                  f"cases skipped for time); {n_failed} model config(s) failed; "
                  f"{time.monotonic() - t_start:.0f} s total; outputs in {out}")
    return job_exit_code(codes, done)


if __name__ == "__main__":
    sys.exit(main())
