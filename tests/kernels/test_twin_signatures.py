"""Each public kernel accepts what the call it replaces accepts, with the same result (float64, tiny shapes).

* ``depthwise_conv2d`` / ``DepthwiseConv2d`` / ``depthwise_conv2d_silu`` against ``F.conv2d`` / ``nn.Conv2d``:
  unbatched ``[C, H, W]`` input gives ``[C, Ho, Wo]``, forward and backward, on the reference and the Triton path.
* ``roi_align`` / ``RoIAlign`` against ``torchvision.ops.roi_align`` / ``RoIAlign``: box formats (list or tuple of
  ``[L, 4]``, ``[K, 5]``), empty box sets, ``output_size`` as int, tuple or list, defaults and keywords; and the two
  refuse the same inputs (unbatched input, an empty box list).
* ``window_attention`` against Swin's eager attention (``models.swin.window_attention_eager``, the ``attn_fn`` the
  kernel replaces): biases that broadcast (``[1, H, N, N]``, ``[N, N]``, ``[1, N]``, per window
  ``[B_, H, N, N]``), ``k``/``v`` of another length and ``v`` of another head size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.ops as tvo

import kernels
from bench.kernelbench.check import count_triton_launches
from kernels._triton import HAS_TRITON, interpret_enabled
from kernels.depthwise_conv import (
    DepthwiseConv2d,
    depthwise_conv2d,
    depthwise_conv2d_reference,
    depthwise_conv2d_silu,
    depthwise_conv2d_triton,
)
from kernels.roi_align import RoIAlign
from kernels.testing import error_stats, tolerance
from kernels.window_attention import window_attention_reference, window_attention_triton
from models.swin import window_attention_eager

pytestmark = pytest.mark.triton
needs_interpreter = pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()),
                                       reason="needs Triton's interpreter (TRITON_INTERPRET=1 before triton import)")
F64 = tolerance(torch.float64).rtol_fro
f64 = torch.float64


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and error_stats(a, b).rel_fro <= F64


# --- depthwise convolution: unbatched [C, H, W] like F.conv2d ------------------------------------------------------

_DW_PATHS = [pytest.param(depthwise_conv2d_reference, id="reference"),
             pytest.param(depthwise_conv2d_triton, id="triton", marks=needs_interpreter),
             pytest.param(depthwise_conv2d, id="dispatch")]
# (C, H, W, kernel, stride, padding, dilation, bias): the 2x2 dilated kernel with stride (3, 2), and "same".
_DW_CASES = {"k2_dil2_s3x2_bias": (4, 6, 6, (2, 2), (3, 2), 1, 2, True),
             "k3_same": (3, 5, 7, (3, 3), 1, "same", 1, False)}


@pytest.mark.parametrize("case", list(_DW_CASES))
@pytest.mark.parametrize("fn", _DW_PATHS)
def test_depthwise_unbatched_matches_conv2d_float64(fn: Callable[..., torch.Tensor], case: str) -> None:
    c, h, w, k, stride, padding, dilation, has_bias = _DW_CASES[case]
    x = torch.randn(c, h, w, dtype=f64, requires_grad=True)
    wt = torch.randn(c, 1, *k, dtype=f64, requires_grad=True)
    b = torch.randn(c, dtype=f64, requires_grad=True) if has_bias else None
    args = (stride, padding, dilation)
    y, y0 = fn(x, wt, b, *args), F.conv2d(x, wt, b, *args, groups=c)
    assert y.dim() == 3 and _close(y, y0)
    assert torch.equal(y, fn(x.unsqueeze(0), wt, b, *args)[0])  # exactly the batch-of-one result
    g = torch.randn_like(y0)
    leaves = [t for t in (x, wt, b) if t is not None]
    for a, e in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y0, leaves, g)):
        assert _close(a, e)


@pytest.mark.parametrize("fn", _DW_PATHS[:2])
def test_depthwise_unbatched_gradcheck(fn: Callable[..., torch.Tensor]) -> None:
    x = torch.randn(3, 5, 6, dtype=f64, requires_grad=True)
    w = torch.randn(3, 1, 2, 3, dtype=f64, requires_grad=True)
    b = torch.randn(3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fn(x, w, b, (2, 1), 1, (1, 2)), (x, w, b), fast_mode=True)


def test_depthwise_module_and_fused_silu_take_unbatched_input() -> None:
    conv = nn.Conv2d(4, 4, 2, stride=(3, 2), padding=1, dilation=2, groups=4).double()
    dw = DepthwiseConv2d(4, kernel_size=2, stride=(3, 2), padding=1, dilation=2).double()
    dw.load_state_dict(conv.state_dict())
    x = torch.randn(4, 6, 6, dtype=f64, requires_grad=True)
    y, y0 = dw(x), conv(x)
    assert y.shape == y0.shape == (4, 2, 3) and _close(y, y0)
    g = torch.randn_like(y0)
    ours = torch.autograd.grad(y, [x, dw.weight, dw.bias], g)
    for a, e in zip(ours, torch.autograd.grad(y0, [x, conv.weight, conv.bias], g)):
        assert _close(a, e)
    with torch.no_grad():  # the fused inference launch, where Triton runs
        assert _close(depthwise_conv2d_silu(x, conv.weight, conv.bias, (3, 2), 1, 2), F.silu(y0))
    # What F.conv2d refuses, we refuse: neither 2-D nor 5-D input is a convolution input.
    for bad in (x[0], x[None, None]):
        with pytest.raises(RuntimeError):
            conv(bad)
        with pytest.raises(ValueError, match=r"\[N, C, H, W\] or \[C, H, W\]"):
            dw(bad)


# --- roi_align: torchvision's call forms ----------------------------------------------------------------------------

_BOXES = [torch.tensor([[0.0, 0.0, 4.0, 5.0], [1.0, 1.5, 6.0, 7.0]], dtype=f64),
          torch.tensor([[2.0, 2.0, 5.5, 5.0]], dtype=f64)]
_BOX_FORMS: dict[str, Any] = {
    "list": _BOXES,
    "tuple": tuple(_BOXES),
    "rois_k5": torch.tensor([[0, 0.0, 0.0, 4.0, 5.0], [1, 1.0, 1.5, 6.0, 7.0]], dtype=f64),
    "empty_image": [_BOXES[0], torch.zeros(0, 4, dtype=f64)],
    "empty_all": [torch.zeros(0, 4, dtype=f64), torch.zeros(0, 4, dtype=f64)],
    "empty_k5": torch.zeros(0, 5, dtype=f64),
}
# Positional and keyword forms of the remaining arguments, defaults left out in the first.
_ROI_ARGS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((2,), {}),
    (((2, 3),), {"spatial_scale": 0.5}),
    (([3, 2], 0.5, 2, True), {}),
    ((), {"output_size": 3, "sampling_ratio": 0, "aligned": True}),
]


@pytest.mark.parametrize("form", list(_BOX_FORMS))
def test_roi_align_accepts_torchvision_call_forms(form: str) -> None:
    x = torch.randn(2, 3, 8, 9, dtype=f64)
    boxes = _BOX_FORMS[form]
    for args, kw in _ROI_ARGS:
        ours, theirs = kernels.roi_align(x, boxes, *args, **kw), tvo.roi_align(x, boxes, *args, **kw)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_roi_align_module_and_refusals_match_torchvision() -> None:
    x = torch.randn(2, 3, 8, 9, dtype=torch.float32)
    boxes = [b.float() for b in _BOXES]
    for args, kw in [((2, 0.5, 2), {}), ((), {"output_size": (2, 3), "spatial_scale": 1.0, "sampling_ratio": -1,
                                              "aligned": True})]:
        ours, theirs = RoIAlign(*args, **kw), tvo.RoIAlign(*args, **kw)
        torch.testing.assert_close(ours(x, boxes), theirs(x, boxes))
    for bad_x, bad_boxes in ((x[0], _BOX_FORMS["rois_k5"].float()), (x, [])):  # unbatched input, empty list
        with pytest.raises((RuntimeError, ValueError)):
            tvo.roi_align(bad_x, bad_boxes, 2)
        with pytest.raises((RuntimeError, ValueError)):
            kernels.roi_align(bad_x, bad_boxes, 2)


# --- window attention: what Swin's eager attention takes ------------------------------------------------------------

_B, _H, _N, _D, _NW = 4, 2, 9, 8, 2
# name -> (k/v length, v head size, bias shape, mask?); the eager mask view needs k of length N.
_WA_CASES: dict[str, tuple[int, int, tuple[int, ...], bool]] = {
    "bias_1HNN": (_N, _D, (1, _H, _N, _N), True),
    "bias_NN": (_N, _D, (_N, _N), True),
    "bias_key": (_N, _D, (1, _N), False),  # per key position ([H, 1, 1] would have a zero gradient)
    "bias_per_window": (_N, _D, (_B, _H, _N, _N), True),
    "kv_other_length": (5, _D, (_H, _N, 5), False),
    "v_other_head_size": (_N, 4, (_H, _N, _N), True),
}
_KERNEL_CASES = {"bias_1HNN", "bias_NN", "bias_key"}  # one bias for all windows: the Triton kernel runs them


def _wa_inputs(case: str) -> list[torch.Tensor | None]:
    m, dv, bias_shape, has_mask = _WA_CASES[case]
    q = torch.randn(_B, _H, _N, _D, dtype=f64)
    k = torch.randn(_B, _H, m, _D, dtype=f64)
    v = torch.randn(_B, _H, m, dv, dtype=f64)
    bias = torch.randn(bias_shape, dtype=f64)
    mask = torch.where(torch.rand(_NW, _N, _N) < 0.3, -100.0, 0.0).double() if has_mask else None
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, bias, mask)]


@pytest.mark.parametrize("case", list(_WA_CASES))
@pytest.mark.parametrize("path", ["dispatch", "reference"])
def test_window_attention_accepts_what_swin_eager_accepts(path: str, case: str) -> None:
    args = _wa_inputs(case)
    fn = kernels.window_attention if path == "dispatch" else window_attention_reference
    with count_triton_launches() as launches:
        out = fn(*args, scale=0.3)
    expected = window_attention_eager(*args, scale=0.3)  # type: ignore[arg-type]
    assert _close(out, expected)
    if path == "dispatch" and interpret_enabled():
        assert (launches[0] > 0) == (case in _KERNEL_CASES)  # the others take the reference
    leaves = [t for t in args if t is not None]
    g = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(expected, leaves, g)):
        assert _close(a, e)


@needs_interpreter
def test_window_attention_triton_takes_a_shared_broadcast_bias() -> None:
    for case in sorted(_KERNEL_CASES):
        args = _wa_inputs(case)
        out = window_attention_triton(*args, scale=0.3)
        expected = window_attention_eager(*args, scale=0.3)  # type: ignore[arg-type]
        assert _close(out, expected)
        g = torch.randn_like(expected)
        (gb,), (gb0,) = torch.autograd.grad(out, [args[3]], g), torch.autograd.grad(expected, [args[3]], g)
        assert gb.shape == args[3].shape and _close(gb, gb0)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"bias must be \[H, N, N\]"):  # per window: the reference only
        window_attention_triton(*_wa_inputs("bias_per_window"), scale=0.3)
