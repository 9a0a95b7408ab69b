"""The kernel bench: is each Triton kernel in :mod:`kernels` right (``--check``), and is it fast (``--bench``)?

* :mod:`.check` — numerics against a float64 reference and against eager PyTorch in the same dtype, with poisoned
  outputs, unmodified inputs and a Triton-launch check; the pass rule is :func:`kernels.testing.passes`.
* :mod:`.microbench` — GPU latency (CUDA events, L2 flushed, plus a warm-L2 figure), achieved TFLOP/s and GB/s from
  each kernel's formulas, % of the device's peak, speedups against eager, ``torch.compile`` and vendor peers.
* :mod:`.peaks` — peak bandwidth and FLOP rates of known GPUs, with a measured copy bandwidth for unknown ones.
* :mod:`.cli` — ``python -m bench kernels`` (``add_arguments`` / ``main``); :mod:`.report` — the markdown section.
"""

from __future__ import annotations

__all__ = ["check", "cli", "microbench", "peaks", "report"]
