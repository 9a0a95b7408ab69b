"""Kernel registry: one entry per folder in ``kernels/``, used by the tests, ``bench kernels`` and the model switch.

A kernel folder ``kernels/<name>/`` holds ``kernel.py`` (the ``@triton.jit`` kernels and their launchers),
``reference.py`` (pure PyTorch, forward and backward by autograd), ``op.py`` (the ``autograd.Function``, the
functional API that dispatches, and the drop-in module) and ``__init__.py``, which calls :func:`register_kernel`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["KernelSpec", "KernelInputs", "register_kernel", "get_kernel", "list_kernels", "patch_model"]


@dataclass
class KernelInputs:
    """Arguments for one kernel call: ``fn(*args, **kwargs)``. ``grad_args`` indexes the differentiable args."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    grad_args: tuple[int, ...] = ()


@dataclass(frozen=True)
class KernelSpec:
    """What the kernel bench and the tests need to know about one kernel.

    Attributes:
        name: registry key (= folder name), e.g. ``"window_attention"``.
        fn: public function; dispatches by device (see :func:`kernels._triton.dispatch_path`).
        triton_fn: the Triton path only (autograd-aware); raises if Triton cannot run on the inputs.
        reference: pure-PyTorch reference with ``fn``'s signature (eager provider, fallback, test oracle).
        make_inputs: ``make_inputs(shape, dtype, device, seed) -> KernelInputs`` for a shape dict.
        shapes: named shapes from real models (GPU benchmark), e.g. ``{"swin_t_stage1_b64": {...}}``.
        test_shapes: small odd shapes that the CPU interpreter runs in seconds (tests and CI ``--check``).
        flops: ``flops(shape) -> int`` forward FLOPs (multiply-add = 2).
        min_bytes: ``min_bytes(shape, dtype) -> int``: each forward input read once, each output written once.
        min_bytes_backward: the same for the backward (grad_out and saved inputs read, input grads written).
        peers: vendor/library providers with ``fn``'s signature (e.g. ``torchvision.ops.roi_align``).
        patch_model: ``patch_model(model) -> int`` switches every site of this hot path in ``model`` to the
            Triton path and returns how many sites it switched.
        dtypes: dtypes the kernel supports.
        deterministic: whether two runs on the same inputs give the same bits (False for atomic-add backwards,
            whose summation order varies on a GPU; the checker then compares the two poisoned runs by tolerance).
    """

    name: str
    fn: Callable[..., Any]
    triton_fn: Callable[..., Any]
    reference: Callable[..., Any]
    make_inputs: Callable[[Mapping[str, Any], torch.dtype, torch.device | str, int], KernelInputs]
    shapes: Mapping[str, Mapping[str, Any]]
    test_shapes: Mapping[str, Mapping[str, Any]]
    flops: Callable[[Mapping[str, Any]], int]
    min_bytes: Callable[[Mapping[str, Any], torch.dtype], int]
    min_bytes_backward: Callable[[Mapping[str, Any], torch.dtype], int] | None = None
    peers: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    patch_model: Callable[[nn.Module], int] | None = None
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
    deterministic: bool = True
    description: str = ""


_REGISTRY: dict[str, KernelSpec] = {}


def register_kernel(spec: KernelSpec) -> KernelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"kernel {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_kernel(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_kernel(name: str) -> KernelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise KeyError(f"unknown kernel {name!r}{did}; valid kernels: {', '.join(sorted(_REGISTRY))}") from None


def list_kernels() -> list[str]:
    return sorted(_REGISTRY)


def patch_model(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, int]:
    """Switch ``model``'s hot paths to our Triton kernels; returns ``{kernel: sites switched}``."""
    counts: dict[str, int] = {}
    for name in names if names is not None else list_kernels():
        spec = get_kernel(name)
        if spec.patch_model is not None:
            counts[name] = spec.patch_model(model)
    return counts
