"""Where Triton kernels run: the GPU, Triton's CPU interpreter, or nowhere (the PyTorch reference).

``TRITON_INTERPRET=1`` must be in the environment before :mod:`triton` is imported for the interpreter to be used;
the test suite's ``conftest.py`` and the nox ``tests`` session set it.
"""

from __future__ import annotations

import os

import torch

try:  # Triton is Linux-only; without it every kernel falls back to its reference.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only on machines without triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False

PATHS = ("triton", "triton-interpret", "reference")


def interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def dispatch_path(device: torch.device | str) -> str:
    """The path a kernel takes for tensors on ``device``.

    * ``"triton"``: a CUDA device with Triton installed (and the interpreter off).
    * ``"triton-interpret"``: the CPU with ``TRITON_INTERPRET=1``; the Triton kernel runs in the interpreter.
    * ``"reference"``: everything else; the pure-PyTorch reference runs.
    """
    dev = torch.device(device)
    if not HAS_TRITON:
        return "reference"
    if dev.type == "cuda" and not interpret_enabled():
        return "triton"
    if dev.type == "cpu" and interpret_enabled():
        return "triton-interpret"
    return "reference"


def uses_triton(device: torch.device | str) -> bool:
    return dispatch_path(device) != "reference"
