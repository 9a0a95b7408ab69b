"""Public API of the depthwise convolution: dispatching functional (over the ``visionbench::depthwise_conv2d``
operator, :mod:`.ops`), drop-in module, model switch.

    >>> y = depthwise_conv2d(x, weight, bias, stride=2, padding=1)     # == F.conv2d(..., groups=C)
    >>> conv = DepthwiseConv2d(96, kernel_size=3, stride=2, padding=1)  # an nn.Conv2d with groups=96
    >>> patch_model(model)                                              # -> number of convs switched
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .._triton import HAS_TRITON, dispatch_path
from .ops import depthwise_conv2d_op
from .reference import IntPair, Padding, accepts_unbatched, conv_geometry, depthwise_conv2d_reference

__all__ = [
    "DepthwiseConv2d",
    "depthwise_conv2d",
    "depthwise_conv2d_triton",
    "is_depthwise_conv",
    "patch_model",
]


def autocast_args(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under autocast, cast like ``F.conv2d`` (a lower-precision op): everything to the autocast dtype."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    return x, weight, bias


@accepts_unbatched
def depthwise_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """The Triton path only (autograd-aware); raises ``RuntimeError`` where Triton cannot run on ``x``'s device."""
    path = dispatch_path(x.device)
    if not HAS_TRITON or path == "reference":
        raise RuntimeError(
            f"depthwise_conv2d: the Triton kernel cannot run on {x.device} (triton installed: {HAS_TRITON}); it needs "
            "a CUDA device, or the CPU with TRITON_INTERPRET=1 set before triton is imported"
        )
    x, weight, bias = autocast_args(x, weight, bias)
    geo = conv_geometry(x, weight, bias, stride, padding, dilation)
    return depthwise_conv2d_op(x, weight, bias, list(geo.stride), [*geo.pad, *geo.pad_end], list(geo.dilation))


@accepts_unbatched
def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """Depthwise 2-D convolution, ``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``.

    ``y[n, c, i, j] = b[c] + sum_{kh, kw} w[c, 0, kh, kw] * x[n, c, i*sh - ph + kh*dh, j*sw - pw + kw*dw]``
    (zero outside the input).

    Args:
        x: ``[N, C, H, W]``, NCHW or channels_last, or unbatched ``[C, H, W]`` (as ``F.conv2d``); fp32, fp16, bf16
            (fp64 works too).
        weight: ``[C, 1, kH, kW]``, same dtype and device.
        bias: ``[C]`` or None.
        stride, dilation: int or ``(h, w)``.
        padding: int, ``(h, w)``, ``"valid"`` or ``"same"`` (stride 1).
    Returns:
        ``[N, C, Ho, Wo]`` (``[C, Ho, Wo]`` for unbatched ``x``) in ``x``'s dtype and memory format (channels_last
        in, channels_last out; otherwise NCHW), ``Ho = (H + 2*ph - dh*(kH-1) - 1) // sh + 1``. Accumulation in fp32.

    Runs the Triton kernel on CUDA and in the Triton interpreter on the CPU (``TRITON_INTERPRET=1``), the
    pure-PyTorch reference elsewhere (see :func:`kernels.dispatch_path`). Differentiable in ``x``, ``weight`` and
    ``bias``; the weight gradient is a deterministic two-stage fp32 reduction.
    """
    if dispatch_path(x.device) == "reference":
        x, weight, bias = autocast_args(x, weight, bias)
        return depthwise_conv2d_reference(x, weight, bias, stride, padding, dilation)
    return depthwise_conv2d_triton(x, weight, bias, stride, padding, dilation)


def is_depthwise_conv(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` (not a subclass: its forward may differ), ``groups == in == out``, zero padding."""
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels
            and module.padding_mode == "zeros")


class DepthwiseConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d(C, C, k, groups=C)`` whose forward is :func:`depthwise_conv2d`.

    Same constructor as ``nn.Conv2d`` (``out_channels`` and ``groups`` default to ``in_channels`` and must equal it;
    ``padding_mode`` must be ``"zeros"``), same parameters, so state dicts are interchangeable.
    ``[N, C, H, W] -> [N, C, Ho, Wo]``, or unbatched ``[C, H, W] -> [C, Ho, Wo]``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: IntPair = 3,
                 stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int | None = None,
                 bias: bool = True, padding_mode: str = "zeros", device: Any = None, dtype: Any = None) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        groups = in_channels if groups is None else groups
        if not in_channels == out_channels == groups:
            raise ValueError(f"DepthwiseConv2d needs in_channels == out_channels == groups, got {in_channels}, "
                             f"{out_channels}, {groups}")
        if padding_mode != "zeros":
            raise ValueError(f"DepthwiseConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,  # type: ignore[arg-type]
                         padding_mode, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)  # type: ignore[arg-type]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DepthwiseConv2d:
        """A module computing ``conv``: same hyper-parameters, device, dtype and training mode. It takes over
        ``conv``'s ``weight``/``bias`` Parameter objects (no copy), so optimizers built before the swap still see
        the parameters that are trained."""
        if not is_depthwise_conv(conv):
            raise ValueError(f"not a depthwise nn.Conv2d with zero padding: {conv}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                  conv.dilation, conv.groups, conv.bias is not None, device="meta")
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        new.train(conv.training)
        return new


def patch_model(model: nn.Module) -> int:
    """Replace, in place, every depthwise ``nn.Conv2d`` below ``model`` (see :func:`is_depthwise_conv`) with a
    :class:`DepthwiseConv2d` holding the same parameters; returns how many sites were switched. A module shared
    by several parents stays shared. ``model`` itself is not replaced (patch its parent)."""
    swapped: dict[int, DepthwiseConv2d] = {}
    count = 0
    for parent in list(model.modules()):
        # ``_modules`` rather than ``named_children()``, which yields a module registered twice only once.
        for name, child in list(parent._modules.items()):
            if is_depthwise_conv(child):
                if id(child) not in swapped:
                    swapped[id(child)] = DepthwiseConv2d.from_conv(child)  # type: ignore[arg-type]
                setattr(parent, name, swapped[id(child)])
                count += 1
    return count
