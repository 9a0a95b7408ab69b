"""What this CPU runs natively, and whether a low-precision dtype takes a slow fallback path on it.

Why it matters: PyTorch's CPU bf16/fp16 kernels are fast only where the CPU has the instructions (AVX-512-BF16 or
AMX-BF16 for bf16; AVX-512-FP16 or AMX-FP16 for fp16). Elsewhere a convolution falls back to a reference GEMM
(``slow_conv2d_forward_cpu``): on a 2-core AMD EPYC with AVX2 only, one DeepLabV3+ bf16 forward took 347 s against
1.25 s in fp32. A row measured there is a measurement of the fallback, and a sweep that meets it runs for hours.

* :func:`cpu_isa` — the facts recorded in ``env.json`` and on every row: the instruction set ATen dispatches to
  (``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``), the CPU's relevant flags,
  whether bf16/fp16 are native, and the oneDNN / MKL versions in use.
* :func:`lowp_probe` — a cheap measurement (one small convolution and one matmul, each timed in fp32 and in the
  low-precision dtype, under autocast or with cast weights): the slowdown factor against fp32. Cached per process.
* :func:`fallback_reason` — the one-line reason a CPU config is ``unsupported`` (``None`` when the dtype is fine).
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["cpu_isa", "lowp_probe", "fallback_reason", "LowpProbe", "FALLBACK_FACTOR", "NATIVE_FLAGS"]

# CPU flags (torch.cpu.get_capabilities() names) that make a dtype native in oneDNN/ATen.
NATIVE_FLAGS: dict[str, tuple[str, ...]] = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
_RECORDED_FLAGS = ("avx2", "avx512_f", "avx512_bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                   "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
# /proc/cpuinfo spells some flags differently; used only where torch.cpu.get_capabilities() is missing (torch < 2.5).
_PROC_NAMES = {"avx512_f": "avx512f", "avx512_bw": "avx512bw", "avx512_vnni": "avx512_vnni"}

# A probe op slower than this many times its fp32 time means the dtype runs a fallback path. Native paths measured
# 0.5-1.3x fp32 per model on an AVX-512-BF16 CPU (results/cpu-quick before 2026-12, e.g. efficientnet_b0 1.26x);
# the fallbacks measured 9-70x on the probe ops on an AVX2 EPYC (bench/cpu_isa.py's probe, this machine kind).
FALLBACK_FACTOR = 3.0


@functools.lru_cache(maxsize=1)
def _config_show() -> str:
    try:
        return torch.__config__.show()
    except Exception:  # noqa: BLE001 - a build without the config string: versions stay unknown
        return ""


def _flags() -> dict[str, bool]:
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        caps = get()
        return {f: bool(caps.get(f, False)) for f in _RECORDED_FLAGS}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return {f: _PROC_NAMES.get(f, f) in present for f in _RECORDED_FLAGS}


def _native(dtype: str, capability: str, flags: dict[str, bool]) -> bool:
    """Native when the CPU has the flags *and* dispatch is allowed to use them (``ATEN_CPU_CAPABILITY=avx2`` or a
    ``ONEDNN_MAX_CPU_ISA`` below AVX-512 emulate an older CPU)."""
    if not any(flags.get(f) for f in NATIVE_FLAGS[dtype]):
        return False
    if not capability.upper().startswith("AVX512"):
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return cap in ("", "ALL") or "AMX" in cap or dtype.upper() in cap


@functools.lru_cache(maxsize=1)
def cpu_isa() -> dict[str, Any]:
    """The CPU facts a low-precision or cross-machine comparison depends on (cached per process)."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _flags()
    show = _config_show()
    onednn = re.search(r"MKL-DNN v([\w.]+)", show) or re.search(r"oneDNN v([\w.]+)", show)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", show)
    return {
        "cpu_capability": capability,
        "cpu_flags": sorted(f for f, on in flags.items() if on),
        "cpu_bf16_native": _native("bf16", capability, flags),
        "cpu_fp16_native": _native("fp16", capability, flags),
        "onednn_version": onednn.group(1) if onednn else None,
        "mkl_version": mkl.group(1) if mkl else None,
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "onednn_max_cpu_isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


@dataclass(frozen=True)
class LowpProbe:
    """Slowdown of the low-precision dtype against fp32 on the probe ops (``x`` = times fp32's time)."""

    dtype: str  # "bf16" / "fp16"
    how: str  # "autocast" / "cast"
    conv_x: float
    matmul_x: float

    @property
    def factor(self) -> float:
        return max(self.conv_x, self.matmul_x)

    @property
    def fallback(self) -> bool:
        return self.factor > FALLBACK_FACTOR

    def describe(self) -> str:
        return f"{self.how} {self.dtype} probe: conv2d {self.conv_x:.1f}x, matmul {self.matmul_x:.1f}x fp32's time"


def _ratio(fp32: Any, lowp: Any, rounds: int = 7) -> float:
    """min(lowp time) / min(fp32 time) over ``rounds`` interleaved calls (A, B, A, B ...), so a burst of load on a
    shared machine hits both sides; the minimum filters descheduling, which only ever adds time. Stops early once
    the ratio is clearly a fallback (3 rounds over twice the threshold)."""
    fp32(), lowp()  # first calls: oneDNN primitive creation, not the steady state
    best_a = best_b = float("inf")
    for i in range(rounds):
        for fn, which in ((fp32, 0), (lowp, 1)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if which:
                best_b = min(best_b, dt)
            else:
                best_a = min(best_a, dt)
        if i >= 2 and best_b > 2 * FALLBACK_FACTOR * best_a:
            break
    return best_b / best_a


@functools.cache
def lowp_probe(dtype: str, how: str = "autocast") -> LowpProbe:
    """Time a 3x3 convolution (``[1, 32, 28, 28]``, 32 -> 32 channels, 15 MFLOP) and a ``[128, 256] @ [256, 128]``
    matmul (8 MFLOP) in fp32 and in ``dtype`` (``how``: under CPU autocast, or on cast tensors), interleaved.

    Costs a few ms where the dtype is native and about a second where it falls back (measured on an AVX2 EPYC
    under load: conv 3-180x, matmul 7-250x). Cached per process, keyed by (dtype, how).
    """
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 32, 28, 28, generator=g), torch.randn(32, 32, 3, 3, generator=g)
    a, b = torch.randn(128, 256, generator=g), torch.randn(256, 128, generator=g)
    conv32, mm32 = (lambda: F.conv2d(x, w, padding=1)), (lambda: a @ b)
    if how == "autocast":
        def in_autocast(fn: Any) -> Any:
            def run() -> Any:
                with torch.autocast("cpu", dtype=tdt):
                    return fn()
            return run

        conv_lp, mm_lp = in_autocast(conv32), in_autocast(mm32)
    else:
        xl, wl, al, bl = x.to(tdt), w.to(tdt), a.to(tdt), b.to(tdt)
        conv_lp, mm_lp = (lambda: F.conv2d(xl, wl, padding=1)), (lambda: al @ bl)
    # One thread: the question is which kernel runs, and a multi-threaded fp32 call on a loaded machine can wait
    # for a descheduled worker thread (seen: fp32 matmul 20x slower than itself unloaded), which no kernel explains.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return LowpProbe(dtype, how, _ratio(conv32, conv_lp), _ratio(mm32, mm_lp))
    finally:
        torch.set_num_threads(threads)


def fallback_reason(dtype: str, how: str) -> tuple[str | None, str]:
    """``(reason or None, note)`` for running ``dtype`` (``"bf16"``/``"fp16"``) on this CPU ``how``.

    ``reason`` is set when the probe measures a fallback path: it names the missing instructions and the measured
    slowdown, for an ``unsupported`` row. ``note`` describes the probe either way (for ``precision_note``).
    """
    isa = cpu_isa()
    probe = lowp_probe(dtype, how)
    if not probe.fallback:
        return None, probe.describe()
    missing = " or ".join(f.upper() for f in NATIVE_FLAGS[dtype])
    native = "native" if isa[f"cpu_{dtype}_native"] else f"not native: no {missing}"
    reason = (f"{dtype} on this CPU takes a fallback path ({native}; ATen ISA {isa['cpu_capability']}); "
              f"{probe.describe()} (> {FALLBACK_FACTOR:g}x); --allow-slow-fallback measures it anyway")
    return reason, probe.describe()
