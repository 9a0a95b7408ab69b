"""The machine state that explains drift between runs, captured with every measured row, and compared across runs.

:func:`snapshot` is taken right after a config's timing loop (the state the samples ran in, not the idle state):

* CPU: ``cpu_mhz`` (mean current frequency over the cores: ``/sys/.../cpufreq/scaling_cur_freq``, else the ``cpu MHz``
  lines of ``/proc/cpuinfo``), ``loadavg_1m`` (``os.getloadavg``: runnable processes, i.e. other tenants),
  ``cpu_capability`` (``torch.backends.cpu.get_cpu_capability()``: the ISA ATen's kernels dispatch to) and
  ``cpu_isa_flags`` (the AVX-512/AMX flags that decide whether bf16/fp16 run natively).
* GPU (``cuda`` configs): ``gpu_sm_mhz``, ``gpu_mem_mhz``, ``gpu_power_w``, ``gpu_temp_c`` and ``gpu_throttle`` (the
  active clock-event reasons, ``+``-joined; ``none``) from NVML via ``pynvml`` (``pip install 'visionbench[gpu]'``,
  package ``nvidia-ml-py``). Without it, or without a driver, the GPU cells stay empty and ``machine_note`` says why.

:func:`state_warnings` summarizes two runs' rows and returns the differences ``compare`` must warn about: another
ISA, CPU or GPU clocks more than :data:`CLOCK_TOLERANCE` apart, a throttle state on one side only, a very different
load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["snapshot", "MACHINE_COLUMNS", "state_warnings", "cpu_isa_flags", "THROTTLE_BITS", "CLOCK_TOLERANCE"]

MACHINE_COLUMNS = ["cpu_mhz", "loadavg_1m", "cpu_capability", "cpu_isa_flags", "gpu_sm_mhz", "gpu_mem_mhz",
                   "gpu_power_w", "gpu_temp_c", "gpu_throttle", "machine_note"]

# A median clock this far apart between the two sides is reported (turbo and boost states differ by more).
CLOCK_TOLERANCE = 0.05
# Load-average difference (runnable processes) reported as "the machine was busier on one side".
LOAD_TOLERANCE = 1.0

# NVML clock-event ("throttle") reason bits (nvml.h, nvmlClocksEventReason*). gpu_idle and sync_boost are benign.
THROTTLE_BITS = {0x1: "gpu_idle", 0x2: "app_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                 0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
                 0x100: "display_clocks"}
_BENIGN = {"none", "gpu_idle", "sync_boost", "app_clocks_setting", ""}

# /proc/cpuinfo flags that change which CPU kernels exist (bf16/fp16 natively or by emulation, AMX tiles).
_ISA_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_isa_flags(cpuinfo: str | None = None) -> str:
    """The :data:`_ISA_FLAGS` this CPU has, space-separated ("none" = AVX2 or less: bf16 is emulated; "" = unknown)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return " ".join(f for f in _ISA_FLAGS if f in have) or "none"
    return ""


def _cpu_mhz(cpuinfo: str | None = None) -> float | None:
    khz = []
    for f in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            khz.append(float(f.read_text()))
        except (OSError, ValueError):  # a core going offline mid-read: use the others
            continue
    if khz:
        return sum(khz) / len(khz) / 1e3
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return sum(mhz) / len(mhz) if mhz else None  # a VM often reports the nominal clock here: still a record


def _cpu_state() -> dict[str, Any]:
    import torch

    info = _cpuinfo()
    out: dict[str, Any] = {"cpu_mhz": _cpu_mhz(info), "cpu_isa_flags": cpu_isa_flags(info)}
    try:
        out["loadavg_1m"] = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        out["loadavg_1m"] = None
    get_cap = getattr(torch.backends.cpu, "get_cpu_capability", None)
    out["cpu_capability"] = get_cap() if get_cap else None
    return out


def _throttle_names(mask: int) -> str:
    names = [name for bit, name in THROTTLE_BITS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_BITS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return "+".join(names) or "none"


def _gpu_state() -> dict[str, Any]:
    """NVML readings of the current CUDA device; empty GPU cells and a ``machine_note`` when unavailable."""
    try:
        import pynvml
    except ImportError:
        return {"machine_note": "GPU clocks not recorded: pynvml missing (pip install 'visionbench[gpu]')"}
    try:
        import torch

        pynvml.nvmlInit()
        try:
            idx = torch.cuda.current_device()
            uuid = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
            try:  # the UUID names the same GPU under any CUDA_VISIBLE_DEVICES; NVML's index does not
                h = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else pynvml.nvmlDeviceGetHandleByIndex(idx)
            except pynvml.NVMLError:
                h = pynvml.nvmlDeviceGetHandleByIndex(idx)
            reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
            return {"gpu_sm_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                    "gpu_mem_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                    "gpu_power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                    "gpu_temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                    "gpu_throttle": _throttle_names(int(reasons(h)))}
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - no driver, a MIG slice without clock access...: the row still counts
        return {"machine_note": f"GPU clocks not recorded: {type(e).__name__}: {str(e)[:120]}"}


def snapshot(device: str) -> dict[str, Any]:
    """The :data:`MACHINE_COLUMNS` for a row measured on ``device`` ("cpu" or "cuda"); never raises."""
    out: dict[str, Any] = {}
    try:
        out.update(_cpu_state())
    except Exception as e:  # noqa: BLE001 - a record, not a reason to fail the row
        out["machine_note"] = f"CPU state not recorded: {type(e).__name__}: {e}"
    if device == "cuda":
        out.update(_gpu_state())
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _median(vals: Iterable[Any]) -> float | None:
    xs = sorted(x for x in (_num(v) for v in vals) if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def _values(rows: list[dict[str, Any]], col: str) -> set[str]:
    return {str(r[col]) for r in rows if r.get(col) not in (None, "")}


def _throttled(rows: list[dict[str, Any]]) -> set[str]:
    return {n for r in rows for n in str(r.get("gpu_throttle") or "").split("+") if n not in _BENIGN}


def state_warnings(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """What differs between the machine states of two runs' rows (empty when they agree or were not recorded)."""
    out = []
    for col, what in (("cpu_capability", "CPU ISA (ATen dispatch)"), ("cpu_isa_flags", "CPU AVX-512/AMX flags")):
        vb, vn = _values(base, col), _values(new, col)
        if vb and vn and vb != vn:
            out.append(f"{what} differs: `{', '.join(sorted(vb))}` → `{', '.join(sorted(vn))}`")
    for col, what in (("cpu_mhz", "CPU clock"), ("gpu_sm_mhz", "GPU SM clock"), ("gpu_mem_mhz", "GPU memory clock")):
        mb, mn = _median(r.get(col) for r in base), _median(r.get(col) for r in new)
        if mb and mn and abs(mn / mb - 1) > CLOCK_TOLERANCE:
            out.append(f"median {what} {mb:.0f} → {mn:.0f} MHz ({(mn / mb - 1) * 100:+.0f}%)")
    tb, tn = _throttled(base), _throttled(new)
    if tb != tn:
        out.append(f"GPU throttle reasons differ: `{'+'.join(sorted(tb)) or 'none'}` → "
                   f"`{'+'.join(sorted(tn)) or 'none'}`")
    lb, ln = _median(r.get("loadavg_1m") for r in base), _median(r.get("loadavg_1m") for r in new)
    if lb is not None and ln is not None and abs(ln - lb) > LOAD_TOLERANCE:
        out.append(f"median 1-min load average {lb:.1f} → {ln:.1f} (other processes competing for the CPU)")
    return out
