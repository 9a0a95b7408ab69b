"""The ``visionbench::`` operators: ``torch.library.opcheck`` (schema, autograd registration, fake tensor, AOT
dispatch static and dynamic) for every forward and backward op, on the CPU.

Under ``TRITON_INTERPRET=1`` (the test default) the ops run the Triton kernels in the interpreter, so the shapes are
the smallest registry test shapes; the fake kernels must reproduce the kernels' strides (window attention's output
is a permuted view), which ``test_faketensor`` checks against the real outputs.
"""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import kernels
from kernels.depthwise_conv import TEST_SHAPES as DW_SHAPES
from kernels.depthwise_conv import make_inputs as dw_inputs
from kernels.depthwise_conv.reference import conv_geometry, is_channels_last
from kernels.roi_align import TEST_SHAPES as RA_SHAPES
from kernels.roi_align import make_inputs as ra_inputs
from kernels.window_attention import TEST_SHAPES as WA_SHAPES
from kernels.window_attention import make_inputs as wa_inputs

OPS = torch.ops.visionbench
pytestmark = pytest.mark.triton
# These checks are about the ops' registration; the interpreter's int32 overflow checks of the same launches (registry
# test shapes, fp32/fp16/bf16, forward and backward) are test_kernel_numerics' own. Not for the multi-level op below,
# whose FPN inputs are this file's.
_NO_OVERFLOW_CHECKS = pytest.mark.usefixtures("no_interpreter_overflow_checks")


def _grad_like(t: torch.Tensor, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g).to(t.dtype)


def _leaf(t: torch.Tensor | None, grad: bool) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(grad)


@_NO_OVERFLOW_CHECKS
@pytest.mark.parametrize(("shape", "dtype"), [("n16_nw1", torch.float32)])
def test_window_attention_ops(shape: str, dtype: torch.dtype) -> None:
    q, k, v, bias, mask = wa_inputs(WA_SHAPES[shape], dtype, "cpu", 0).args
    scale = q.shape[-1] ** -0.5
    fwd = [_leaf(q, True), _leaf(k, True), _leaf(v, True), _leaf(bias, True), mask, scale]
    opcheck(OPS.window_attention, fwd)
    out = OPS.window_attention(q, k, v, bias, mask, scale)
    assert out.stride() == kernels.window_attention(q, k, v, bias, mask).stride()
    opcheck(OPS.window_attention_backward, (_grad_like(q), q, k, v, bias, mask, scale, True, mask is not None))


@_NO_OVERFLOW_CHECKS
@pytest.mark.parametrize(("shape", "dtype"), [("k3x5_c5_s2x1_nonsquare_nchw_bias", torch.float32),
                                              ("k7_c3_s1_nhwc", torch.bfloat16)])
def test_depthwise_conv2d_ops(shape: str, dtype: torch.dtype) -> None:
    ki = dw_inputs(DW_SHAPES[shape], dtype, "cpu", 0)
    x, w, b = ki.args
    geo = conv_geometry(x, w, b, **ki.kwargs)
    conv = (list(geo.stride), [*geo.pad, *geo.pad_end], list(geo.dilation))
    opcheck(OPS.depthwise_conv2d, (_leaf(x, True), _leaf(w, True), _leaf(b, True), *conv))
    y = OPS.depthwise_conv2d(x, w, b, *conv)
    assert is_channels_last(y) == is_channels_last(x)
    opcheck(OPS.depthwise_conv2d_backward, (_grad_like(y), x, w, *conv, True, True, b is not None))


@_NO_OVERFLOW_CHECKS
@pytest.mark.parametrize(("shape", "dtype"), [("c17_adaptive_nhwc", torch.bfloat16)])
def test_roi_align_ops(shape: str, dtype: torch.dtype) -> None:
    ki = ra_inputs(RA_SHAPES[shape], dtype, "cpu", 0)
    x, rois, size = ki.args
    size = [size, size] if isinstance(size, int) else list(size)
    kw = ki.kwargs
    args = (size, kw["spatial_scale"], kw["sampling_ratio"], kw["aligned"])
    opcheck(OPS.roi_align, (_leaf(x, True), rois, *args))
    out = OPS.roi_align(x, rois, *args)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    opcheck(OPS.roi_align_backward, (_grad_like(out), rois, list(x.shape), cl, x.dtype, *args))


def _fpn(dtype: torch.dtype, channels_last: bool) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    feats = [torch.randn(2, 4, s, s + 1, generator=g).to(dtype).contiguous(memory_format=fmt) for s in (12, 6)]
    xy = torch.rand(6, 2, generator=g) * 30
    wh = torch.rand(6, 2, generator=g) * 18 + 1
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 1, 0.0])[:, None], xy, xy + wh], dim=1)
    return feats, rois, torch.tensor([0, 1, 1, 0, 2, 1])  # level 2 is out of range: output 0


@pytest.mark.parametrize(("dtype", "channels_last"), [(torch.float16, True)])
def test_roi_align_multilevel_ops(dtype: torch.dtype, channels_last: bool) -> None:
    feats, rois, levels = _fpn(dtype, channels_last)
    args = ([0.5, 0.25], [3, 3], 2, False)
    opcheck(OPS.roi_align_multilevel, ([_leaf(f, True) for f in feats], rois, levels, *args))
    out = OPS.roi_align_multilevel(feats, rois, levels, *args)
    shapes = [int(d) for f in feats for d in f.shape]
    grads = OPS.roi_align_multilevel_backward(_grad_like(out), rois, levels, args[0], shapes, channels_last, dtype,
                                              *args[1:])
    assert [g.shape for g in grads] == [f.shape for f in feats]
    assert len({g.untyped_storage().data_ptr() for g in grads}) == len(grads)  # outputs may not share storage
    opcheck(OPS.roi_align_multilevel_backward, (_grad_like(out), rois, levels, args[0], shapes, channels_last,
                                                dtype, *args[1:]))
