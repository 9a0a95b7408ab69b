"""Pure-PyTorch depthwise convolution: the eager provider, the CPU fallback and the test oracle.

Written as an explicit sum over the kernel taps (not ``F.conv2d``), so it is an oracle independent of the
cuDNN/ATen convolutions it is compared with, and it spells out the semantics the Triton kernels implement::

    y[n, c, i, j] = b[c] + sum_{kh, kw} w[c, 0, kh, kw] * xpad[n, c, i*SH + kh*DH, j*SW + kw*DW]

where ``xpad`` is ``x`` zero-padded by ``(top, bottom, left, right)``. Half-precision inputs are accumulated in
fp32 (as the kernels do) and rounded once at the end; fp64 stays fp64. Differentiable by autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

__all__ = ["ConvGeometry", "IntPair", "Padding", "accepts_unbatched", "conv_geometry", "depthwise_conv2d_reference",
           "is_channels_last"]

IntPair = int | Sequence[int]
Padding = int | Sequence[int] | str
_Fn = TypeVar("_Fn", bound=Callable[..., torch.Tensor])


def accepts_unbatched(fn: _Fn) -> _Fn:
    """Let a batched ``fn(x [N, C, H, W], ...) -> [N, C, Ho, Wo]`` also take an unbatched ``x [C, H, W]`` and return
    ``[C, Ho, Wo]``, as ``F.conv2d`` / ``nn.Conv2d`` do: ``fn(x.unsqueeze(0), ...).squeeze(0)``. Both are views,
    so autograd (forward and backward) goes through ``fn``'s batched path unchanged."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            return fn(x.unsqueeze(0), *args, **kwargs).squeeze(0)
        return fn(x, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved convolution parameters: kernel ``(kh, kw)``, stride, top/left padding, dilation and the input and
    output spatial sizes. Bottom/right padding is implied by ``out_hw`` (asymmetric "same" padding needs nothing
    else), and is kept in ``pad_end`` for the reference."""

    kh: int
    kw: int
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    pad_end: tuple[int, int]

    def constexprs(self) -> dict[str, int]:
        """The kernels' compile-time parameters."""
        return {"KH": self.kh, "KW": self.kw, "SH": self.stride[0], "SW": self.stride[1], "PH": self.pad[0],
                "PW": self.pad[1], "DH": self.dilation[0], "DW": self.dilation[1]}


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is laid out NHWC (and not also plain-contiguous, as for ``C == 1`` or ``H == W == 1``)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(e) for e in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"depthwise_conv2d: {name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def conv_geometry(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: IntPair,
                  padding: Padding, dilation: IntPair) -> ConvGeometry:
    """Check the arguments as ``F.conv2d(groups=C)`` would and resolve them.

    ``x [N, C, H, W]`` (the public functions take ``[C, H, W]`` too, through :func:`accepts_unbatched`),
    ``weight [C, 1, kH, kW]``, ``bias [C]`` or None. ``padding`` is an int, a pair, or
    ``"valid"`` / ``"same"`` (stride 1 only; for an odd total ``d*(k-1)`` the extra row/column goes to the
    bottom/right, as in PyTorch). Output size ``Ho = (H + top + bottom - DH*(kH-1) - 1) // SH + 1``.
    """
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv2d: expected x of shape [N, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"depthwise_conv2d: expected weight of shape [{c}, 1, kH, kW] for x with {c} channels, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"depthwise_conv2d: expected bias of shape [{c}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"depthwise_conv2d: {name} is {t.dtype} on {t.device} but x is {x.dtype} on {x.device}")
    kh, kw = weight.shape[-2:]
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1:
        raise ValueError(f"depthwise_conv2d: stride and dilation must be >= 1, got {stride!r}, {dilation!r}")
    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError("depthwise_conv2d: padding='same' is not supported for strided convolutions")
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pt, pl = th // 2, tw // 2
            pb, pr = th - pt, tw - pl
        else:
            raise ValueError(f"depthwise_conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        pt, pl = _pair(padding, "padding")
        pb, pr = pt, pl
    if min(pt, pl) < 0:
        raise ValueError(f"depthwise_conv2d: padding must be >= 0, got {padding!r}")
    h, w = x.shape[-2:]
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"depthwise_conv2d: input {h}x{w} (padded {h + pt + pb}x{w + pl + pr}) is smaller than "
                         f"the dilated kernel {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}")
    return ConvGeometry(kh, kw, (sh, sw), (pt, pl), (dh, dw), (h, w), (ho, wo), (pb, pr))


@accepts_unbatched
def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                               stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` as a sum of ``kH*kW`` shifted slices.

    Args:
        x: ``[N, C, H, W]``, any memory format, or unbatched ``[C, H, W]``; fp16/bf16/fp32/fp64.
        weight: ``[C, 1, kH, kW]``, same dtype.
        bias: ``[C]`` or None.
    Returns:
        ``[N, C, Ho, Wo]`` (``[C, Ho, Wo]`` for unbatched ``x``) in ``x``'s dtype, channels_last if ``x`` is
        channels_last.
    """
    geo = conv_geometry(x, weight, bias, stride, padding, dilation)
    c = x.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    (pt, pl), (pb, pr) = geo.pad, geo.pad_end
    (sh, sw), (dh, dw), (ho, wo) = geo.stride, geo.dilation, geo.out_hw
    xp = F.pad(x.to(acc), (pl, pr, pt, pb))
    w = weight.to(acc).reshape(c, geo.kh, geo.kw)
    y = None
    for i in range(geo.kh):
        for j in range(geo.kw):
            patch = xp[:, :, i * dh: i * dh + (ho - 1) * sh + 1: sh, j * dw: j * dw + (wo - 1) * sw + 1: sw]
            term = patch * w[:, i, j].reshape(1, c, 1, 1)
            y = term if y is None else y + term
    assert y is not None  # kH, kW >= 1
    if bias is not None:
        y = y + bias.to(acc).reshape(1, c, 1, 1)
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return y.to(x.dtype).contiguous(memory_format=fmt)
