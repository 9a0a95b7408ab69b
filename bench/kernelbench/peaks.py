"""Peak memory bandwidth and dense FLOP rates of known GPUs, and a measured copy bandwidth for the others.

The figures are the vendor's datasheet numbers for *dense* math (the "with sparsity" figures halved), in GB/s
(10^9 bytes/s) and TFLOP/s (10^12 FLOP/s):

=============== ======== ======= ======= ======= =========
GPU             HBM GB/s   fp64    fp32    tf32  bf16/fp16
=============== ======== ======= ======= ======= =========
H100 SXM5          3,350    34      67    494.5    989.4
H100 PCIe          2,000    26      51    378      756
H100 NVL           3,900    30      60    417.5    835
H200 SXM           4,800    34      67    494.5    989.4
H200 NVL           4,800    30      60    417.5    835
A100 SXM4 40GB     1,555     9.7    19.5  156      312
A100 SXM4 80GB     2,039     9.7    19.5  156      312
A100 PCIe 40GB     1,555     9.7    19.5  156      312
A100 PCIe 80GB     1,935     9.7    19.5  156      312
L4                   300      —      30.3   60      121
=============== ======== ======= ======= ======= =========

``fp32`` is the CUDA-core (non-tensor) rate and ``fp64`` the non-tensor FP64 rate: our kernels accumulate in fp32
on the CUDA cores, so that is the roof they are held to for fp32 inputs (a ``tl.dot`` on fp32 inputs may use TF32
tensor cores; the ``tf32`` entry is there for reference). The L4 datasheet gives no FP64 figure, so none is
used. Datasheet bandwidth is not achievable; a device-to-device
copy typically reaches 85-93% of it, which is why the measured copy bandwidth is recorded beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

__all__ = ["GpuPeak", "DevicePeak", "KNOWN_GPUS", "lookup_gpu", "device_peak", "measure_copy_bandwidth"]


@dataclass(frozen=True)
class GpuPeak:
    """Datasheet peaks of one GPU model: ``hbm_gbps`` in GB/s, ``tflops`` per math type in dense TFLOP/s."""

    name: str
    hbm_gbps: float
    tflops: dict[str, float] = field(default_factory=dict)


def _hopper(name: str, gbps: float, fp64: float, fp32: float, tf32: float, half: float) -> GpuPeak:
    return GpuPeak(name, gbps, {"fp64": fp64, "fp32": fp32, "tf32": tf32, "bf16": half, "fp16": half})


_AMPERE_A100 = {"fp64": 9.7, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}

KNOWN_GPUS: dict[str, GpuPeak] = {
    "H100 SXM": _hopper("H100 SXM", 3350, 34, 67, 494.5, 989.4),
    "H100 PCIe": _hopper("H100 PCIe", 2000, 26, 51, 378, 756),
    "H100 NVL": _hopper("H100 NVL", 3900, 30, 60, 417.5, 835),
    "H200 SXM": _hopper("H200 SXM", 4800, 34, 67, 494.5, 989.4),
    "H200 NVL": _hopper("H200 NVL", 4800, 30, 60, 417.5, 835),
    "A100 SXM4 40GB": GpuPeak("A100 SXM4 40GB", 1555, dict(_AMPERE_A100)),
    "A100 SXM4 80GB": GpuPeak("A100 SXM4 80GB", 2039, dict(_AMPERE_A100)),
    "A100 PCIe 40GB": GpuPeak("A100 PCIe 40GB", 1555, dict(_AMPERE_A100)),
    "A100 PCIe 80GB": GpuPeak("A100 PCIe 80GB", 1935, dict(_AMPERE_A100)),
    "L4": GpuPeak("L4", 300, {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
}


def lookup_gpu(device_name: str, memory_gib: float | None = None) -> GpuPeak | None:
    """The table entry for a ``torch.cuda.get_device_name()`` string, or None for a GPU not in the table.

    Names seen in the wild: ``"NVIDIA H100 80GB HBM3"`` (SXM), ``"NVIDIA H100 PCIe"``, ``"NVIDIA H100 NVL"``,
    ``"NVIDIA H200"``, ``"NVIDIA A100-SXM4-40GB"``, ``"NVIDIA A100 80GB PCIe"``, ``"NVIDIA L4"``. For an A100 whose
    name does not state its memory, ``memory_gib`` decides 40 vs 80 GB.
    """
    n = device_name.upper().replace("-", " ").replace("_", " ")
    for gen in ("H100", "H200"):
        if re.search(rf"\b{gen}\b", n):
            if "NVL" in n:
                return KNOWN_GPUS[f"{gen} NVL"]
            if "PCIE" in n:
                return KNOWN_GPUS.get(f"{gen} PCIe")  # no H200 PCIe exists; None rather than a wrong guess
            return KNOWN_GPUS[f"{gen} SXM"]
    if re.search(r"\bA100\b", n):
        form = "PCIe" if "PCIE" in n else "SXM4"
        if "80GB" in n or "40GB" in n:
            size = "80GB" if "80GB" in n else "40GB"
        elif memory_gib is not None:
            size = "80GB" if memory_gib > 48 else "40GB"
        else:
            return None
        return KNOWN_GPUS[f"A100 {form} {size}"]
    if re.search(r"\bL4\b", n):
        return KNOWN_GPUS["L4"]
    return None


@dataclass(frozen=True)
class DevicePeak:
    """The roofline of the device a benchmark runs on.

    ``gbps``: peak bandwidth used for "% of peak" (datasheet, or measured copy bandwidth for an unknown GPU);
    ``tflops``: dense peaks per math type (empty when unknown); ``copy_gbps``: measured device-to-device copy rate;
    ``source``: where ``gbps``/``tflops`` come from.
    """

    device_name: str
    gbps: float
    tflops: dict[str, float]
    copy_gbps: float | None
    source: str

    def tflops_for(self, dtype_name: str) -> float | None:
        return self.tflops.get(dtype_name)


def measure_copy_bandwidth(device: torch.device | str = "cuda", nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s: ``2 * nbytes / median time`` (each byte read once, written once).

    The buffer (1 GiB by default, less if memory is short) is far larger than any L2, so this is an HBM figure.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        raise RuntimeError("measure_copy_bandwidth needs a CUDA device")
    free, _ = torch.cuda.mem_get_info(dev)
    nbytes = int(min(nbytes, free // 4))
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    from triton.testing import do_bench

    times = sorted(do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="all"))
    median_ms = times[len(times) // 2]
    src = dst = None  # free the 2 GiB before the benchmarks allocate
    torch.cuda.empty_cache()
    return 2 * nbytes / (median_ms * 1e-3) / 1e9


def device_peak(device: torch.device | str = "cuda", measure: bool = True) -> DevicePeak:
    """The peaks of ``device``: the table entry if known, else the measured copy bandwidth (no FLOP peaks)."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev)
    mem_gib = torch.cuda.get_device_properties(dev).total_memory / 2**30
    copy = measure_copy_bandwidth(dev) if measure else None
    known = lookup_gpu(name, mem_gib)
    if known is not None:
        return DevicePeak(name, known.hbm_gbps, dict(known.tflops), copy, f"datasheet: {known.name}")
    if copy is None:
        raise RuntimeError(f"{name!r} is not in the peak table and measure=False")
    return DevicePeak(name, copy, {}, copy, "measured device-to-device copy (GPU not in the table)")
