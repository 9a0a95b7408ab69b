"""Where Triton kernels run: the GPU, Triton's CPU interpreter, or nowhere (the PyTorch reference).

``TRITON_INTERPRET=1`` must be in the environment before :mod:`triton` is imported for the interpreter to be used;
the test suite's ``conftest.py`` and the nox ``tests`` session set it.
"""

from __future__ import annotations

import contextlib
import functools
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


def launch_classes() -> list[type]:
    """Triton's function classes whose ``run`` launches a kernel (``JITFunction``; ``InterpretedFunction`` under the
    interpreter), for code that wraps ``run`` to count or record launches. Empty without Triton; a class whose
    ``run`` lives elsewhere in another Triton layout is left out (its launches would go unseen: callers' tests say so).
    """
    classes: list[type] = []
    # No Triton, or one without the interpreter: what was found is all there is.
    with contextlib.suppress(Exception):
        from triton.runtime.jit import JITFunction

        classes.append(JITFunction)
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    return [c for c in classes if "run" in c.__dict__]


def interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def dispatch_path(device: torch.device | str) -> str:
    """The path a kernel takes for tensors on ``device``.

    * ``"triton"``: a CUDA device with Triton installed (and the interpreter off); also CPU tensors inside
      :class:`emulate_gpu`, where launches are recorded, not run.
    * ``"triton-interpret"``: the CPU with ``TRITON_INTERPRET=1``; the Triton kernel runs in the interpreter.
    * ``"reference"``: everything else; the pure-PyTorch reference runs.
    """
    dev = torch.device(device)
    if not HAS_TRITON:
        return "reference"
    if (dev.type == "cuda" or (dev.type == "cpu" and _EMULATED_SMS)) and not interpret_enabled():
        return "triton"
    if dev.type == "cpu" and interpret_enabled():
        return "triton-interpret"
    return "reference"


# --- GPU emulation for the ahead-of-time compile check ------------------------------------------------------------
# Launchers pick tile sizes, split counts and interpreter workarounds from the device. `bench kernels --compile`
# records the launches a CUDA run would make without a GPU: inside `emulate_gpu(sm_count)` CPU tensors get the
# GPU's choices (`gpu_launch`, `sm_count`, no `interpreted` workarounds) while the JIT's `run` is patched to record
# instead of launching. Nothing is computed there; outputs hold garbage.

_EMULATED_SMS: list[int] = []


class emulate_gpu:  # noqa: N801 - a context manager that reads like a function
    """Launchers treat CPU tensors as CUDA tensors of a GPU with ``sm_count`` SMs (needs the interpreter off)."""

    def __init__(self, sm_count: int = 132) -> None:
        self.sm_count = int(sm_count)

    def __enter__(self) -> emulate_gpu:
        if interpret_enabled():
            raise RuntimeError("emulate_gpu needs TRITON_INTERPRET unset: the interpreter replaces the JIT")
        _EMULATED_SMS.append(self.sm_count)
        return self

    def __exit__(self, *exc: object) -> None:
        _EMULATED_SMS.pop()


def gpu_launch(device: torch.device | str) -> bool:
    """Whether a launcher should choose GPU launch parameters for tensors on ``device``."""
    dev = torch.device(device)
    return dev.type == "cuda" or (dev.type == "cpu" and bool(_EMULATED_SMS))


def interpreted(device: torch.device | str) -> bool:
    """Whether kernels on ``device`` run in Triton's CPU interpreter (and need its numerics workarounds)."""
    return torch.device(device).type == "cpu" and interpret_enabled() and not _EMULATED_SMS


@functools.cache
def _cuda_sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()
                                            ).multi_processor_count


def sm_count(device: torch.device | str) -> int:
    """Streaming multiprocessors of ``device`` (the emulated count under :class:`emulate_gpu`; 1 on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return _cuda_sm_count(dev.index)
    return _EMULATED_SMS[-1] if _EMULATED_SMS else 1


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
