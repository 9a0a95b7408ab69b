"""Operators ``visionbench::depthwise_conv2d`` and ``visionbench::depthwise_conv2d_backward``.

* ``depthwise_conv2d(x, weight, bias?, stride[2], padding[4], dilation[2]) -> y``: ``x [N, C, H, W]``, ``weight
  [C, 1, kH, kW]``, ``bias [C]``; ``padding = (top, left, bottom, right)`` (asymmetric "same" padding included);
  ``y [N, C, Ho, Wo]`` in x's dtype, channels_last when x is (``is_channels_last``), else contiguous.
* ``depthwise_conv2d_backward(grad, x, weight, stride, padding, dilation, need_x, need_weight, has_bias) ->
  (dx, dw, db)``: ``dx`` like x (layout included), ``dw [C, 1, kH, kW]`` and ``db [C]`` in weight's dtype,
  contiguous; an empty ``[0]`` tensor for each gradient not requested.

Triton launchers where :func:`kernels.dispatch_path` allows, the reference (and its autograd) elsewhere.
Capture-safe on CUDA: no host->device copies, no ``.item()``; the channels_last kernels read the ``[C, kH·kW]``
weight through its strides (no transposed copy per call); allocations are outputs and the weight-gradient partials.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._ops import triton_op
from .._triton import dispatch_path
from .kernel import conv_backward_input, conv_backward_weight, conv_forward
from .reference import ConvGeometry, depthwise_conv2d_reference, is_channels_last

__all__ = ["depthwise_conv2d_op", "depthwise_conv2d_backward_op", "geometry"]


def geometry(x: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int]) -> ConvGeometry:
    """The :class:`ConvGeometry` of the op's arguments (already validated by ``conv_geometry``)."""
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    h, w = int(x.shape[-2]), int(x.shape[-1])
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = padding
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return ConvGeometry(kh, kw, (sh, sw), (pt, pl), (dh, dw), (h, w), (ho, wo), (pb, pr))


def _fmt(x: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def _reference(x: Tensor, weight: Tensor, bias: Tensor | None, geo: ConvGeometry) -> Tensor:
    (pt, pl), (pb, pr) = geo.pad, geo.pad_end
    if (pt, pl) == (pb, pr):
        return depthwise_conv2d_reference(x, weight, bias, geo.stride, geo.pad, geo.dilation)
    y = depthwise_conv2d_reference(F.pad(x, (pl, pr, pt, pb)), weight, bias, geo.stride, 0, geo.dilation)
    return y.contiguous(memory_format=_fmt(x))


@triton_op("depthwise_conv2d")
def depthwise_conv2d_op(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                        dilation: list[int]) -> Tensor:
    geo = geometry(x, weight, stride, padding, dilation)
    if dispatch_path(x.device) == "reference":
        return _reference(x, weight, bias, geo)
    return conv_forward(x, weight, bias, geo)


@depthwise_conv2d_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
      dilation: list[int]) -> Tensor:
    geo = geometry(x, weight, stride, padding, dilation)
    return torch.empty((x.shape[0], x.shape[1], *geo.out_hw), dtype=x.dtype, device=x.device, memory_format=_fmt(x))


@triton_op("depthwise_conv2d_backward")
def depthwise_conv2d_backward_op(grad: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int],
                                 dilation: list[int], need_x: bool, need_weight: bool,
                                 has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    geo = geometry(x, weight, stride, padding, dilation)
    empty = x.new_empty((0,))
    if dispatch_path(x.device) == "reference":
        leaves = [x.detach().requires_grad_(True), weight.detach().requires_grad_(True)]
        b = weight.new_zeros((x.shape[1],), requires_grad=True) if has_bias else None
        with torch.enable_grad():
            y = _reference(leaves[0], leaves[1], b, geo)
            gx, gw, *gb = torch.autograd.grad(y, leaves + ([b] if b is not None else []), grad.to(y.dtype))
        return (gx.contiguous(memory_format=_fmt(x)) if need_x else empty, gw.contiguous() if need_weight else empty,
                gb[0].contiguous() if has_bias else empty)
    channels_last = is_channels_last(x)
    # The kernels take any strides, but read dy coalesced only in x's layout (grad may also be expanded).
    grad = grad.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    gx = conv_backward_input(grad, weight, geo, channels_last) if need_x else empty
    gw = gb = None
    if need_weight or has_bias:
        gw, gb = conv_backward_weight(grad, x, weight, has_bias, geo, channels_last)
    return gx, gw if need_weight and gw is not None else empty, gb if gb is not None else empty


@depthwise_conv2d_backward_op.register_fake
def _(grad: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int],
      need_x: bool, need_weight: bool, has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    empty = x.new_empty((0,))
    gx = torch.empty_like(x, memory_format=_fmt(x)) if need_x else empty
    gw = weight.new_empty(weight.shape) if need_weight else empty
    gb = weight.new_empty((x.shape[1],)) if has_bias else empty
    return gx, gw, gb


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's callback signature
    x, weight, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx, gw, gb = depthwise_conv2d_backward_op(grad, x, weight, *ctx.conv, bool(need_x), bool(need_w),
                                              bool(need_b and ctx.has_bias))
    return gx if need_x else None, gw if need_w else None, gb if need_b and ctx.has_bias else None, None, None, None


depthwise_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
