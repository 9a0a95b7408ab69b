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


# --- Output allocation with optional poisoning -------------------------------------------------------------------
# Every launcher allocates the buffers its kernel writes through `empty_output`. Normally that is `torch.empty`;
# under `poison_outputs(v)` (used by `bench kernels --check`) the buffer is pre-filled with `v`, so an element the
# kernel forgot to write shows up as NaN (or as a second, different poison value) instead of stale memory.

_POISON: list[float] = []


class poison_outputs:  # noqa: N801 - used as a context manager, reads like a function
    """Context manager: buffers from :func:`empty_output` are filled with ``value`` (NaN by default)."""

    def __init__(self, value: float = float("nan")) -> None:
        self.value = value

    def __enter__(self) -> poison_outputs:
        _POISON.append(self.value)
        return self

    def __exit__(self, *exc: object) -> None:
        _POISON.pop()


def empty_output(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device | str,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` for kernel outputs, poisoned when :class:`poison_outputs` is active."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _POISON:
        out.fill_(_POISON[-1])
    return out
