"""Ahead-of-time compile check of every Triton kernel for a GPU architecture, on a machine without one.

``python -m bench kernels --compile --arch sm_90`` answers, before any GPU time is spent: does each kernel variant
that a CUDA run would launch compile for that GPU, and will it launch there? For each kernel × shape × dtype ×
direction:

1. **Record.** The kernel's Triton path runs on CPU tensors inside :class:`kernels._triton.emulate_gpu` (launchers
   make the choices they make for CUDA tensors: tile sizes, split counts, ``num_warps``, no interpreter
   workarounds) while ``JITFunction.run`` is replaced by a recorder: every ``kernel[grid](...)`` is kept with its
   arguments and nothing runs (outputs hold garbage, which no later launch parameter depends on). In a whole-model
   step (``--models``) on a CPU without native bf16/fp16, the model's own half-precision convolutions and matrix
   products are computed in fp32 and rounded (:class:`_Fp32EagerMath`, column ``eager_math``): same shapes, dtypes and
   strides at a fraction of the reference path's time.
2. **Specialize.** Each recorded launch goes through the JIT's own binder (``create_function_from_signature`` and
   ``JITFunction._pack_args``, as ``JITFunction.run`` does) against the target's backend, so the signature,
   constexprs, 16-byte-divisibility attributes and options equal those of a real launch with these tensors.
3. **Compile** with ``triton.compile`` for the target (ttir → ttgir → llir → ptx → cubin, ptxas included), then
   ``ptxas -v`` on the PTX for registers, spills and stack.
4. **Check resources** against the architecture's limits (:data:`ARCHS`, CUDA C++ Programming Guide, "Technical
   Specifications per Compute Capability"): dynamic shared memory per block (Triton raises ``OutOfResources`` at
   load), registers per block (``too many resources requested for launch``), threads per block. Occupancy = resident
   warps per SM / the maximum, from registers (allocated per warp in units of 256), shared memory (+1 KB reserved per
   block), warps and blocks; ``waves`` = programs / (resident blocks per SM × SMs).

Status per launch: ``ok``; ``compile_error`` (the compiler raised); ``too_many_resources`` (compiles, would not
launch); ``error`` (the launcher itself raised). Spills do not fail a row; the report lists them.

Limits: relies on two private JIT helpers (``create_function_from_signature``, ``_pack_args``) that Triton 3.6 and
3.8 (the versions checked) share; another Triton may fail the whole check with one line. Compilation needs no GPU and
no CUDA driver; ptxas ships inside the Triton wheel. Register counts are ptxas's for the recorded specialization (a
real launch with differently aligned pointers may specialize differently).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels._triton import emulate_gpu
from kernels.registry import KernelSpec

from .check import _differentiable, dtype_name, grad_forward, summarize_statuses

__all__ = ["ARCHS", "AOT_COLUMNS", "GpuArch", "Launch", "record_launches", "compile_launch", "compile_case",
           "compile_model_case", "occupancy", "AotUnavailableError"]


@dataclass(frozen=True)
class GpuArch:
    """Per-SM limits of one compute capability (and the SM count of its reference card, for ``waves``)."""

    name: str
    capability: int
    card: str
    sm_count: int
    smem_per_block: int  # max dynamic shared memory per block (opt-in), bytes
    smem_per_sm: int
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    max_threads_per_block: int = 1024


ARCHS: dict[str, GpuArch] = {
    "sm_80": GpuArch("sm_80", 80, "A100-SXM4", 108, 166912, 167936),
    "sm_89": GpuArch("sm_89", 89, "L40S", 142, 101376, 102400, max_warps_per_sm=48, max_blocks_per_sm=24),
    "sm_90": GpuArch("sm_90", 90, "H100-SXM5", 132, 232448, 233472),
}

AOT_COLUMNS = [
    "kernel", "shape", "dtype", "direction", "launch", "triton_kernel", "status", "message", "arch", "num_warps",
    "num_stages", "programs", "waves", "regs", "spill_store_bytes", "spill_load_bytes", "stack_bytes", "smem_bytes",
    "blocks_per_sm", "occupancy_pct", "compile_s", "constexprs", "triton_version", "eager_math",
]


class AotUnavailableError(RuntimeError):
    """The ahead-of-time check cannot run in this process (no Triton, the interpreter on, an unknown Triton)."""


@dataclass
class Launch:
    """One ``kernel[grid](*args, **kwargs)`` as a launcher issued it."""

    fn: Any  # triton.runtime.jit.JITFunction
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    grid: Any


def require_aot() -> None:
    from kernels._triton import HAS_TRITON, interpret_enabled

    if not HAS_TRITON:
        raise AotUnavailableError("--compile needs Triton (pip install triton; Linux only)")
    if interpret_enabled():
        raise AotUnavailableError("--compile needs TRITON_INTERPRET unset: the interpreter replaces Triton's JIT, "
                                  "which the compile check drives (run it in a shell without TRITON_INTERPRET=1)")
    try:
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except ImportError as e:
        raise AotUnavailableError(f"this Triton ({_triton_version()}) lacks the JIT helpers --compile uses: {e}") \
            from None
    if not hasattr(JITFunction, "_pack_args"):
        raise AotUnavailableError(f"this Triton ({_triton_version()}) has no JITFunction._pack_args; --compile "
                                  "was checked with Triton 3.6 and 3.8")


def _triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except Exception:  # pragma: no cover
        return "none"


@contextlib.contextmanager
def record_launches(sm_count: int = 132) -> Iterator[list[Launch]]:
    """Record every Triton launch in the block instead of running it; CPU tensors get GPU launch parameters."""
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    orig = JITFunction.__dict__["run"]

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        if not warmup:
            launches.append(Launch(self, args, dict(kwargs), grid))
        return None

    JITFunction.run = run  # type: ignore[method-assign]
    try:
        with emulate_gpu(sm_count):
            yield launches
    finally:
        JITFunction.run = orig  # type: ignore[method-assign]


# --- compile ---------------------------------------------------------------------------------------------------------


def _specialize(launch: Launch, backend: Any) -> tuple[dict[str, str], dict[Any, Any], dict[Any, Any], Any]:
    """``(signature, constexprs, attrs, options)`` exactly as ``JITFunction.run`` derives them."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


_PTXAS_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_store_bytes": re.compile(r"(\d+) bytes spill stores"),
    "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
}


def _ptxas_path(capability: int) -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return str(get_ptxas(capability).path)
    except Exception:  # older/newer layouts: the binary bundled in the wheel
        import os

        import triton

        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_resources(ptx: str, arch: GpuArch) -> dict[str, int]:
    """Registers, spills and stack of the PTX's kernel from ``ptxas -v`` for the architecture."""
    suffix = "a" if arch.capability >= 90 else ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        r = subprocess.run([_ptxas_path(arch.capability), "-v", f"--gpu-name=sm_{arch.capability}{suffix}", f.name,
                            "-o", "/dev/null"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({r.returncode}): {r.stderr.strip()[:300]}")
    out: dict[str, int] = {}
    for key, rx in _PTXAS_RE.items():
        m = rx.search(r.stderr)
        if m:
            out[key] = int(m.group(1))
    return out


def occupancy(arch: GpuArch, regs: int | None, smem: int, num_warps: int) -> tuple[int, float]:
    """``(resident blocks per SM, occupancy %)``; 0 blocks means the block cannot launch at all."""
    threads = 32 * num_warps
    if threads > arch.max_threads_per_block or smem > arch.smem_per_block:
        return 0, 0.0
    limits = [arch.max_blocks_per_sm, arch.max_warps_per_sm // num_warps, arch.smem_per_sm // (smem + 1024)]
    if regs:
        if regs > arch.max_regs_per_thread:
            return 0, 0.0
        per_warp = -(-regs * 32 // 256) * 256
        limits.append(arch.regs_per_sm // (per_warp * num_warps))
    blocks = max(0, min(limits))
    return blocks, 100.0 * blocks * num_warps / arch.max_warps_per_sm


def _programs(grid: Any) -> int | None:
    if callable(grid) or grid is None:
        return None
    n = 1
    for g in tuple(grid):
        n *= int(g)
    return n


def _constexpr_text(fn: Any, constexprs: Mapping[Any, Any]) -> str:
    named = {}
    for path, v in constexprs.items():
        idx = path[0] if isinstance(path, tuple) else path
        name = fn.arg_names[idx] if isinstance(idx, int) and idx < len(fn.arg_names) else str(path)
        named[name] = v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
    return json.dumps(named, sort_keys=True, default=str)


_CACHE: dict[str, dict[str, Any]] = {}


@functools.cache
def _target(capability: int) -> tuple[Any, Any]:
    """Triton's ``GPUTarget`` and compiler backend for a CUDA compute capability (built once per capability)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", capability, 32)
    return target, make_backend(target)


def compile_launch(launch: Launch, arch: GpuArch) -> dict[str, Any]:
    """Compile one recorded launch for ``arch``; the resource/occupancy columns of its row (cached per variant)."""
    import triton
    from triton.compiler import ASTSource

    target, backend = _target(arch.capability)
    fn = launch.fn
    try:
        signature, constexprs, attrs, options = _specialize(launch, backend)
    except Exception as e:  # a Triton whose private binder differs, or arguments the JIT itself would reject
        return {"triton_kernel": fn.__name__, "status": "error",
                "message": f"specializing as the JIT would failed ({_triton_version()}): {type(e).__name__}: {e}"[:300]}
    key = repr((fn.cache_key, arch.name, sorted(signature.items()), sorted(constexprs.items(), key=repr),
                sorted(attrs.items(), key=repr), sorted(options.__dict__.items(), key=repr)))
    base = {"triton_kernel": fn.__name__, "num_warps": options.num_warps, "num_stages": options.num_stages,
            "constexprs": _constexpr_text(fn, constexprs)}
    if key in _CACHE:
        return {**base, **_CACHE[key], "compile_s": 0.0}
    t0 = time.perf_counter()
    try:
        ck = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    except Exception as e:  # the compiler's own errors: CompilationError, PTXASError, MLIR pass failures
        msg = " ".join(str(e).split())[:300]
        res: dict[str, Any] = {"status": "compile_error", "message": f"{type(e).__name__}: {msg}"}
    else:
        smem = int(getattr(ck.metadata, "shared", 0) or 0)
        res = {"status": "ok", "message": "", "smem_bytes": smem, **ptxas_resources(ck.asm["ptx"], arch)}
        blocks, occ = occupancy(arch, res.get("regs"), smem, int(options.num_warps))
        res.update(blocks_per_sm=blocks, occupancy_pct=occ)
        why = []
        if smem > arch.smem_per_block:
            why.append(f"shared memory {smem} B > {arch.smem_per_block} B per block")
        if 32 * options.num_warps > arch.max_threads_per_block:
            why.append(f"{32 * options.num_warps} threads > {arch.max_threads_per_block} per block")
        if res.get("regs") and blocks == 0 and not why:
            why.append(f"{res['regs']} registers × {32 * options.num_warps} threads exceed {arch.regs_per_sm} per SM")
        if why:
            res.update(status="too_many_resources", message="; ".join(why))
    res["compile_s"] = time.perf_counter() - t0
    _CACHE[key] = {k: v for k, v in res.items() if k != "compile_s"}
    return {**base, **res}


def compile_case(spec: KernelSpec, shape_name: str, shape: Mapping[str, Any], dtype: torch.dtype, direction: str,
                 arch: GpuArch, seed: int = 0) -> list[dict[str, Any]]:
    """One row per Triton launch that ``spec.triton_fn`` (forward) or its backward makes on this case."""
    base = {"kernel": spec.name, "shape": shape_name, "dtype": dtype_name(dtype), "direction": direction,
            "arch": arch.name, "triton_version": _triton_version()}
    if dtype not in spec.dtypes and dtype != torch.float64:
        return [{**base, "launch": 0, "status": "unsupported", "message": f"{base['dtype']} is not in spec.dtypes"}]
    try:
        inputs = spec.make_inputs(shape, dtype, "cpu", seed)
        args, kwargs = list(inputs.args), dict(inputs.kwargs)
        grad_idx = _differentiable(inputs)
        if direction == "backward" and not grad_idx:
            return [{**base, "launch": 0, "status": "unsupported", "message": "no differentiable argument"}]
        with record_launches(arch.sm_count) as launches:
            if direction == "forward":
                with torch.no_grad():
                    spec.triton_fn(*args, **kwargs)
                case = list(launches)
            else:
                outs, leaves = grad_forward(spec.triton_fn, args, kwargs, grad_idx)
                n_forward = len(launches)
                torch.autograd.grad(outs, leaves, grad_outputs=[torch.zeros_like(o) for o in outs],
                                    allow_unused=True)
                case = launches[n_forward:]
    except Exception as e:  # the launcher raised before or while launching
        return [{**base, "launch": 0, "status": "error", "message": f"{type(e).__name__}: {str(e)[:300]}"}]
    return _launch_rows(base, case, arch)


def _launch_rows(base: dict[str, Any], case: Sequence[Launch], arch: GpuArch,
                 kernel_of: bool = False) -> list[dict[str, Any]]:
    """Compile each recorded launch; ``kernel_of`` names each row's kernel after the launch's package."""
    if not case:
        return [{**base, "launch": 0, "status": "error", "message": "no Triton kernel was launched"}]
    rows = []
    for i, launch in enumerate(case):
        row = {**base, "launch": i, **compile_launch(launch, arch)}
        if kernel_of:  # kernels.<name>.kernel -> <name>
            parts = str(launch.fn.__module__).split(".")
            row["kernel"] = parts[1] if len(parts) > 2 and parts[0] == "kernels" else parts[-1]
        progs = _programs(launch.grid)
        row["programs"] = progs
        if progs is not None and row.get("blocks_per_sm"):
            row["waves"] = progs / (row["blocks_per_sm"] * arch.sm_count)
        rows.append(row)
    return rows


_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _Fp32EagerMath(TorchDispatchMode):
    """While recording a model step: its own convolutions and matrix products in ``dtype`` computed in fp32 and
    rounded back to ``dtype``.

    On a CPU without native bf16/fp16 (AVX2) PyTorch runs these on reference paths (measured here under load: a 1x1
    convolution 16x and a matmul 41x fp32's time; :mod:`bench.cpu_isa`), which made one half-precision EfficientNet
    or Swin step at the GPU job's batch sizes take minutes. A launch depends on the shapes, dtypes, strides and
    integer arguments of the tensors that reach it, which this keeps: the rounded fp32 result has the native op's
    shape, dtype and memory format; only its values differ by rounding, and the recorded kernels' own outputs are
    zeros anyway. Detection models are not emulated: their box counts (a launch's grid) depend on the values (Faster
    R-CNN at 128 px: 831 boxes native, 829 emulated), and the roi_align launch then goes through the Triton wrapper's
    higher-order op, which adds launch options; on such a CPU their half-precision steps are ``unsupported`` (a native
    bf16 Faster R-CNN step took 336 s here at 224 px, so about an hour at 800 px) — the kernel cases compile
    roi_align in bf16/fp16 at Faster R-CNN's real shapes."""

    OPS = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                     torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default})

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.OPS and any(isinstance(a, torch.Tensor) and a.dtype == self.dtype for a in args):
            def up(a: Any) -> Any:
                return a.float() if isinstance(a, torch.Tensor) and a.dtype == self.dtype else a

            return func(*map(up, args), **kwargs).to(self.dtype)  # preserve_format: the same strides
        return func(*args, **kwargs)


def eager_math_for(model: str, dtype: str) -> str:
    """``"fp32-emulated"`` when :class:`_Fp32EagerMath` applies to this model step on this CPU, else ``"native"``."""
    import models
    from bench.cpu_isa import cpu_isa

    if dtype not in _HALF or cpu_isa()[f"cpu_{dtype}_native"] or models.get_spec(model).task == "detection":
        return "native"
    return "fp32-emulated"


def compile_model_case(model: str, batch_size: int, dtype: str, mode: str, arch: GpuArch,
                       input_size: int = 0) -> list[dict[str, Any]]:
    """One row per Triton launch that ``model`` makes end to end with every kernel switched in — what
    ``run --backends triton --modes MODE`` launches on a GPU, at the model's own shapes (the registry's named shapes
    may not cover them: another batch size changes windows per program, splits and grids). ``input_size`` (square
    side in pixels; 0: the model's own) as ``run --input-size``; the row's ``shape`` then names it (``_224px``).

    The model's step (forward for ``infer``; forward, backward and optimizer step for ``train``) runs on the CPU
    under :func:`record_launches`; kernel outputs are zero-filled (:class:`kernels._triton.poison_outputs`), so the
    layers after a recorded kernel see finite values and later kernels get launched as they would be.
    """
    from bench.config import Config
    from bench.cpu_isa import cpu_isa
    from bench.runner import Unsupported, build_step
    from kernels._triton import poison_outputs

    px = f"_{input_size}px" if input_size else ""
    math = eager_math_for(model, dtype)
    base = {"kernel": "", "shape": f"{model}_b{batch_size}{px}", "dtype": dtype, "direction": mode, "arch": arch.name,
            "triton_version": _triton_version(), "eager_math": math}
    if math == "native" and dtype in _HALF and not cpu_isa()[f"cpu_{dtype}_native"]:
        return [{**base, "launch": 0, "status": "unsupported",
                 "message": f"no native {dtype} on this CPU ({cpu_isa()['cpu_capability']}) and this model's launches "
                            f"depend on its values, so its {dtype} step would run on PyTorch's reference path (hours "
                            f"for a detector at full size); the kernel cases compile its kernels at its real shapes"}]
    emulate = _Fp32EagerMath(_HALF[dtype]) if math == "fp32-emulated" else contextlib.nullcontext()
    try:
        with record_launches(arch.sm_count) as launches, poison_outputs(0.0), emulate:
            step, _ = build_step(Config(model, "triton", mode, "cpu", dtype, batch_size, False, "all",
                                        input_size))
            step()
            case = list(launches)
    except Unsupported as e:
        return [{**base, "launch": 0, "status": "unsupported", "message": str(e)[:300]}]
    except Exception as e:  # the model or a launcher raised before or while launching
        return [{**base, "launch": 0, "status": "error", "message": f"{type(e).__name__}: {str(e)[:300]}"}]
    return _launch_rows(base, case, arch, kernel_of=True)


AOT_STATUSES = ("ok", "compile_error", "too_many_resources", "error", "unsupported")
AOT_FAILURES = ("compile_error", "too_many_resources", "error")  # exit 1: a variant would not compile or launch


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per status (:data:`AOT_STATUSES`), plus how many launches spill registers."""
    counts = summarize_statuses(rows, AOT_STATUSES)
    counts["spilling"] = sum(1 for r in rows if (r.get("spill_store_bytes") or 0) > 0)
    return counts


def print_compile_table(rows: Sequence[Mapping[str, Any]], arch: GpuArch, console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"Ahead-of-time compile for {arch.name} ({arch.card}: {arch.sm_count} SMs, "
                    f"{arch.smem_per_block // 1024} KB shared/block)")
    for col in ("kernel", "shape", "dtype", "dir", "triton kernel", "warps", "regs", "spill B", "smem KB",
                "occ %", "waves", "status", "message"):
        t.add_column(col, overflow="fold")
    style = {"ok": "green", "unsupported": "yellow"}

    def g(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        st = r["status"]
        t.add_row(r["kernel"], r["shape"], r["dtype"], r["direction"][:3], r.get("triton_kernel", "-"),
                  g(r.get("num_warps"), "d"), g(r.get("regs"), "d"), g(r.get("spill_store_bytes"), "d"),
                  g(None if r.get("smem_bytes") is None else r["smem_bytes"] / 1024, ".1f"),
                  g(r.get("occupancy_pct"), ".0f"), g(r.get("waves"), ".2f"),
                  f"[{style.get(st, 'bold red')}]{st}[/]", r.get("message", ""))
    console.print(t)
