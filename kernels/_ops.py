"""The project's ``torch.library`` namespace: every kernel's forward and backward is an operator ``visionbench::*``.

Why operators (not ``autograd.Function`` around Python launchers): Dynamo puts an operator in the graph as one node
(no tracing into launchers that read the environment, device properties or ``data_ptr``), so ``torch.compile``
with ``fullgraph=True``, ``torch.export`` and FakeTensor/meta shape propagation work; ``opcheck`` can test the
schema, fake kernel and autograd registration; FLOP counters can be taught the ops.

How each op is built (:func:`triton_op`): ``torch.library.triton_op`` with the launcher as its body. Its functional
decomposition (AOTAutograd, i.e. Inductor) traces the body, where each launch goes through :func:`traceable`
(``torch.library.wrap_triton``), so Inductor sees the Triton kernels themselves and schedules them with the ops
around. That decomposition is applied only where the body launches compiled Triton kernels (``dispatch_path ==
"triton"``: CUDA). On the CPU the body runs the interpreter (``TRITON_INTERPRET=1``) or the PyTorch reference, which
cannot run on FakeTensors, so there the op stays opaque: AOTAutograd keeps the node, the registered fake gives its
metadata, and the real CPU kernel runs at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ._triton import dispatch_path

NAMESPACE = "visionbench"

__all__ = ["NAMESPACE", "triton_op", "traceable"]


def _first_device(args: Any) -> torch.device | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (list, tuple)):
            dev = _first_device(a)
            if dev is not None:
                return dev
    return None


def triton_op(name: str, *, mutates_args: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Any]:
    """``torch.library.triton_op(f"visionbench::{name}")`` whose Inductor-visible decomposition is limited to the
    compiled-Triton path (see the module docstring). Register the fake with ``.register_fake`` afterwards (the
    body cannot run on CPU FakeTensors)."""
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def dec(fn: Callable[..., Any]) -> Any:
        op = torch.library.triton_op(f"{NAMESPACE}::{name}", fn, mutates_args=mutates_args)
        decompose = op._torch_dispatch_fns[FunctionalTensorMode]

        def routed(mode: Any, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
            dev = _first_device(args)
            if dev is not None and dispatch_path(dev) == "triton" and dev.type == "cuda":
                return decompose(mode, func, types, args, kwargs)
            return mode.__torch_dispatch__(func, types, args, kwargs)  # opaque: fake at trace, CPU kernel at run

        op.register_torch_dispatch(FunctionalTensorMode, routed)
        return op

    return dec


def traceable(kernel: Any) -> Any:
    """``kernel`` for a launch: ``torch.library.wrap_triton(kernel)`` while a dispatcher-level trace is active (the
    decomposition above, ``make_fx``), so the launch is recorded as a ``triton_kernel_wrapper`` node; the plain JIT
    function in eager (wrap_triton's eager dispatch costs ~1 ms per launch) and under the interpreter."""
    if is_in_torch_dispatch_mode():
        return torch.library.wrap_triton(kernel)
    return kernel
