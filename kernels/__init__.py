"""Triton kernels for the hot paths of vision models, each with a pure-PyTorch reference.

Public functions (each dispatches: Triton on CUDA, the Triton interpreter on the CPU under ``TRITON_INTERPRET=1``,
the reference otherwise; :func:`dispatch_path` says which):

* ``kernels.window_attention(q, k, v, bias=None, mask=None, scale=None)``
* ``kernels.depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1)``
* ``kernels.roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)``
"""

from __future__ import annotations

import importlib
import pkgutil

from ._triton import HAS_TRITON, dispatch_path, interpret_enabled
from .registry import KernelInputs, KernelSpec, get_kernel, list_kernels, patch_model, register_kernel

__all__ = [
    "HAS_TRITON",
    "KernelInputs",
    "KernelSpec",
    "dispatch_path",
    "get_kernel",
    "interpret_enabled",
    "list_kernels",
    "patch_model",
    "register_kernel",
]

# Every sub-package is one kernel; importing it registers it.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.ispkg and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

# FLOP formulas for the visionbench:: operators the sub-packages registered.
from ._flops import register as _register_flops  # noqa: E402

_register_flops()

# Public functions. ``kernels/window_attention/`` is also the sub-package's name, so bind the function over the
# module attribute that the import above set.
_PUBLIC = {"window_attention": "window_attention", "depthwise_conv2d": "depthwise_conv", "roi_align": "roi_align"}
for _fn_name, _key in _PUBLIC.items():
    if _key in list_kernels():
        globals()[_fn_name] = get_kernel(_key).fn
        __all__.append(_fn_name)
