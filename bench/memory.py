"""Peak memory of one step.

* CUDA: ``torch.cuda.empty_cache()`` (blocks cached from earlier work -- a timer's L2-flush buffer, a previous
  config -- would otherwise stay in the reserved figure), then ``torch.cuda.reset_peak_memory_stats()`` right before
  the step, then ``max_memory_allocated()`` (and ``max_memory_reserved()``) after it, minus nothing: the figure
  includes the model's weights and inputs already on the device, which is what a user needs to know to size a batch.
* CPU: PyTorch has no CPU allocator statistics, so we count it ourselves: a ``TorchDispatchMode`` sees every tensor
  an operator returns during the step, adds the bytes of each new storage when it appears and subtracts them when
  the storage is freed (a weakref finalizer). The peak of that running sum is the step's peak *additional* memory
  (activations, gradients, temporaries the operators return); weights and inputs that existed before are not counted.
  It grows linearly with batch size (tested). Scratch buffers that a kernel allocates and frees inside one operator
  are invisible to it.
* CPU, beside it: :func:`rss_bytes` before and after the step gives ``rss_growth_mb``, the process' resident-set
  growth (the allocator's caching, freed-but-kept pages and weights first touched included). The two are different
  quantities on purpose: the tracker says what the step's tensors need, RSS what the process took from the OS.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["MemoryStats", "measure_peak_memory", "CpuPeakTracker", "rss_bytes"]


@dataclass
class MemoryStats:
    peak_mb: float
    reserved_mb: float | None
    method: str


class CpuPeakTracker(TorchDispatchMode):
    """Tracks live bytes of storages created by operators inside the mode; ``peak`` is the maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # views and in-place ops return existing storage
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                try:
                    st = t.untyped_storage()
                except Exception:  # sparse/opaque tensors have no storage to count
                    continue
                if st in self._seen:
                    continue
                self._seen.add(st)
                nbytes = st.nbytes()
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                weakref.finalize(st, self._free, nbytes)
        return out


def measure_peak_memory(step: Callable[[], Any], device: torch.device) -> MemoryStats:
    """Run ``step()`` once and report its peak memory (see the module docstring for the method per device)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return MemoryStats(torch.cuda.max_memory_allocated(device) / 2**20,
                           torch.cuda.max_memory_reserved(device) / 2**20, "cuda.max_memory_allocated")
    tracker = CpuPeakTracker()
    with tracker:
        result = step()
    del result
    return MemoryStats(tracker.peak / 2**20, None, "cpu-dispatch-storage-tracker")


def rss_bytes() -> int | None:
    """This process' resident set size now (Linux ``/proc/self/statm``); None where that file does not exist."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
