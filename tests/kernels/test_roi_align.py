"""ROI Align kernel (``kernels/roi_align``): torchvision's exact semantics, forward and input gradient.

The registry-driven checker (``bench kernels --check``) runs every ``test_shapes`` entry x dtype x direction with one
seed against the float64 reference and eager. Here: the reference against ``torchvision.ops.roi_align`` itself,
the kernel against torchvision in float64 over several seeds (forward and gradient, both box formats), the pass rule
in fp32/fp16/bf16 with NaN-poisoned outputs, degenerate / outside / NaN / inf boxes, empty inputs, both backward
kernels, float64 ``gradcheck``, the multi-level (FPN) op against per-level torchvision, dispatch, the registry entry
and its formulas, and the Faster R-CNN switch. Pass rule and tolerances: :mod:`kernels.testing`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
import torch
import torchvision.ops as tvo

import kernels  # noqa: F401  (registers the kernel)
from bench.kernelbench.check import count_triton_launches
from kernels._triton import HAS_TRITON, dispatch_path, interpret_enabled, poison_outputs
from kernels.registry import get_kernel
from kernels.roi_align import make_boxes, make_inputs, patch_model, torchvision_roi_align
from kernels.roi_align.kernel import launch_config, roi_align_backward, roi_align_forward, single_input
from kernels.roi_align.op import roi_align, roi_align_multilevel, roi_align_multilevel_triton, roi_align_triton
from kernels.roi_align.reference import roi_align_multilevel_reference, roi_align_reference
from kernels.testing import error_stats, passes

OP = sys.modules["kernels.roi_align.op"]  # `kernels.roi_align` is bound to the function, not the sub-package
SPEC = get_kernel("roi_align")
needs_interp = [pytest.mark.triton, pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()),
                                                        reason="needs Triton's interpreter (TRITON_INTERPRET=1)")]


def interp(fn: Any) -> Any:
    for m in needs_interp:
        fn = m(fn)
    return fn


def _fwd_bwd(fn: Any, x: torch.Tensor, boxes: Any, g: torch.Tensor | None, *args: Any,
             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, d(out . g)/dx)`` on a fresh leaf copy of ``x`` (same strides)."""
    leaf = x.detach().clone().requires_grad_(g is not None)
    out = fn(leaf, boxes, *args, **kwargs)
    if g is None:
        return out.detach(), None
    (grad,) = torch.autograd.grad(out, leaf, g)
    return out.detach(), grad


def _tv(x: torch.Tensor, rois: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tvo.roi_align(x, rois.to(x.dtype), *args, **kwargs)


def _random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A random odd-sized float64 case with partly/wholly outside and degenerate boxes."""
    g = torch.Generator().manual_seed(seed)

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (), generator=g))

    N, C, H, W, K = ri(1, 4), ri(1, 6), ri(1, 14), ri(1, 14), ri(1, 9)
    scale = [1.0, 0.5, 0.3, 0.25][seed % 4]
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    if seed % 3 == 0:
        x = x.contiguous(memory_format=torch.channels_last)
    size = torch.tensor([W, H], dtype=torch.float64) / scale
    xy = torch.rand(K, 2, generator=g, dtype=torch.float64) * size * 1.4 - 0.2 * size
    wh = torch.rand(K, 2, generator=g, dtype=torch.float64) * size * 1.2
    wh[0, seed % 2] = 0.0  # zero width or height
    b = torch.randint(0, N, (K, 1), generator=g).to(torch.float64)
    rois = torch.cat([b, xy, xy + wh], dim=1)
    kw = {"output_size": (ri(1, 6), ri(1, 6)), "spatial_scale": scale, "sampling_ratio": [-1, 0, 1, 2, 3][seed % 5],
          "aligned": bool(seed % 2)}
    return x, rois, kw


# --- the reference is torchvision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_reference_equals_torchvision_forward_and_gradient(dtype: torch.dtype, tol: float) -> None:
    for seed in range(60):
        x, rois, kw = _random_case(seed)
        x, rois = x.to(dtype), rois.to(dtype)
        g = torch.randn(rois.shape[0], x.shape[1], *kw["output_size"], dtype=dtype)
        ours, gx = _fwd_bwd(roi_align_reference, x, rois, g, **kw)
        ref, gr = _fwd_bwd(tvo.roi_align, x, rois, g, **kw)
        assert ours.dtype == dtype and ours.shape == ref.shape and ours.is_contiguous()
        torch.testing.assert_close(ours, ref, rtol=0, atol=tol, msg=f"seed {seed} {kw}")
        torch.testing.assert_close(gx, gr, rtol=0, atol=tol, msg=f"seed {seed} {kw}")


# --- the kernel against torchvision and float64 ------------------------------------------------------------------


@interp
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("shape_name", list(SPEC.test_shapes))
def test_kernel_equals_torchvision_float64(shape_name: str, seed: int) -> None:
    ki = make_inputs(SPEC.test_shapes[shape_name], torch.float64, "cpu", seed)
    x, rois, out_size = ki.args
    g = torch.randn(rois.shape[0], x.shape[1], *out_size, dtype=torch.float64)
    with poison_outputs():
        ours, gx = _fwd_bwd(roi_align_triton, x, rois, g, out_size, **ki.kwargs)
    ref, gr = _fwd_bwd(tvo.roi_align, x, rois, g, out_size, **ki.kwargs)
    assert ref.abs().sum() > 0 and gr.abs().sum() > 0  # the case is not trivially zero
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gr, rtol=0, atol=1e-12)
    assert gx.stride() == x.stride()  # the gradient keeps the input's memory format


@interp
@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape_name", ["c3_sr2_unaligned", "c17_adaptive_nhwc"])
def test_kernel_pass_rule_in_each_dtype(shape_name: str, dtype: torch.dtype, seed: int) -> None:
    ki = make_inputs(SPEC.test_shapes[shape_name], dtype, "cpu", seed)
    x, rois, out_size = ki.args
    x_before, rois_before = x.clone(), rois.clone()
    g = torch.randn(rois.shape[0], x.shape[1], *out_size).to(dtype)
    with poison_outputs():  # an unwritten output element would stay NaN
        out, gx = _fwd_bwd(roi_align_triton, x, rois, g, out_size, **ki.kwargs)
    eager, ge = _fwd_bwd(roi_align_reference, x, rois, g, out_size, **ki.kwargs)
    ref64, g64 = _fwd_bwd(roi_align_reference, x.double(), rois.double(), g.double(), out_size, **ki.kwargs)
    assert out.dtype == gx.dtype == dtype and out.shape == ref64.shape
    for got, want, base in ((out, ref64, eager), (gx, g64, ge)):
        stats = error_stats(got, want)
        assert stats.nonfinite == 0 and passes(stats, error_stats(base, want), dtype), stats
    assert torch.equal(x, x_before) and torch.equal(rois, rois_before)  # inputs untouched
    if dtype == torch.float32:  # and torchvision itself, at its own fp32 tolerance
        ref, gr = _fwd_bwd(tvo.roi_align, x, rois, g, out_size, **ki.kwargs)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(gx, gr)


@interp
def test_box_formats_list_equals_tensor_and_torchvision() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 11, 9, generator=g)
    boxes = [torch.tensor([[1.0, 2.0, 7.5, 9.0], [0.0, 0.0, 3.0, 3.0]]), torch.zeros(0, 4),
             torch.tensor([[2.5, 1.0, 8.0, 10.5], [4.0, 4.0, 4.0, 8.0], [-3.0, 5.0, 2.0, 14.0]])]
    rois = torch.cat([torch.tensor([[0.0], [0.0], [2.0], [2.0], [2.0]]), torch.cat(boxes)], dim=1)
    for kw in ({"sampling_ratio": 2, "aligned": False}, {"sampling_ratio": -1, "aligned": True}):
        from_list = roi_align_triton(x, boxes, (3, 2), 1.0, **kw)
        from_tensor = roi_align_triton(x, rois, (3, 2), 1.0, **kw)
        assert torch.equal(from_list, from_tensor)
        torch.testing.assert_close(from_list, tvo.roi_align(x, boxes, (3, 2), 1.0, **kw))
        torch.testing.assert_close(roi_align_reference(x, boxes, (3, 2), 1.0, **kw), from_tensor)
    assert roi_align_triton(x, rois, 2).shape == (5, 4, 2, 2)  # an int output_size is square


@interp
def test_empty_boxes_give_empty_output_and_zero_gradient() -> None:
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
        for fn in (roi_align_triton, roi_align_reference):
            out = fn(x, boxes, (2, 3), 0.5, 2)
            assert out.shape == (0, 3, 2, 3) == tvo.roi_align(x.detach(), boxes, (2, 3), 0.5, 2).shape
            (gx,) = torch.autograd.grad(out, x, torch.zeros_like(out))
            assert gx.shape == x.shape and not gx.any()


@interp
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_outside_degenerate_and_edge_boxes(sampling_ratio: int, aligned: bool) -> None:
    H, W = 7, 9
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    rois = torch.tensor([
        [0, 2.0, 1.0, 2.0, 5.0],      # zero width (aligned + adaptive: no samples -> 0)
        [1, 1.0, 3.0, 6.0, 3.0],      # zero height
        [0, W + 2.0, 1.0, W + 6.0, 4.0],  # wholly right of the map -> 0
        [1, -8.0, -8.0, -2.5, -3.0],  # wholly above-left -> 0
        [0, -3.0, -2.0, 4.0, 5.0],    # partly outside (top-left)
        [1, 5.0, 4.0, W + 3.0, H + 3.0],  # partly outside (bottom-right): edge clamping + zero taps
        [0, 0.0, 0.0, W - 1.0, H - 1.0],  # samples on the last row/column
        [1, 0.0, 0.0, float(W), float(H)],  # the whole map
        [0, 3.0, 2.0, 3.4, 2.3],      # sub-pixel box (legacy mode clamps its size to 1)
    ], dtype=torch.float64)
    g = torch.randn(rois.shape[0], 3, 2, 3, dtype=torch.float64)
    ours, gx = _fwd_bwd(roi_align_triton, x, rois, g, (2, 3), 1.0, sampling_ratio, aligned)
    ref, gr = _fwd_bwd(tvo.roi_align, x, rois, g, (2, 3), 1.0, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gr, rtol=0, atol=1e-12)
    assert not ours[2:4].any()  # wholly outside
    if aligned and sampling_ratio <= 0:
        assert not ours[0].any() and not ours[1].any()


@interp
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on masked-off NaN lanes
def test_nan_inf_and_bad_batch_index_boxes_give_zeros_without_hanging() -> None:
    x = torch.randn(2, 3, 6, 6)
    rois = torch.tensor([[0, float("nan"), 1.0, 3.0, 4.0], [1, 0.0, 0.0, float("inf"), 4.0],
                         [5, 1.0, 1.0, 4.0, 4.0], [-1, 1.0, 1.0, 4.0, 4.0], [1, 1.0, 1.0, 4.0, 4.0]])
    for sr in (-1, 2):  # adaptive: non-finite sizes get no samples (no ~2^32-sample loop); fixed: invalid samples
        out = roi_align_triton(x, rois, 2, 1.0, sr)
        assert torch.isfinite(out).all() and not out[:4].any() and out[4].abs().sum() > 0
        torch.testing.assert_close(out, roi_align_reference(x, rois, 2, 1.0, sr))
    # torchvision agrees where it is defined: finite boxes with valid batch indices (torchvision 0.29.1's CPU kernel
    # reads out of bounds -- segfaults -- on NaN coordinates, so it is not called on them)
    torch.testing.assert_close(roi_align_triton(x, rois[4:], 2, 1.0, 2), tvo.roi_align(x, rois[4:], 2, 1.0, 2))


@interp
def test_noncontiguous_input_and_many_rois_per_image() -> None:
    g = torch.Generator().manual_seed(6)
    base = torch.randn(2, 6, 9, 16, generator=g)
    x = base[:, ::2, :, 1::2]  # neither NCHW- nor channels_last-contiguous
    shape = {"N": 2, "H": 9, "W": 8, "K": 40, "box_min": 1.0, "box_max": 8.0, "empty_images": [1]}
    rois = make_boxes(shape, g).float()
    out = roi_align_triton(x, rois, (3, 3), 1.0, -1, True)
    torch.testing.assert_close(out, tvo.roi_align(x.contiguous(), rois, (3, 3), 1.0, -1, True))


@interp
def test_prereduced_and_per_tap_backward_agree() -> None:
    ki = make_inputs(SPEC.test_shapes["c5_large_boxes"], torch.float32, "cpu", 7)
    x, rois, out_size = ki.args
    g = torch.randn(rois.shape[0], x.shape[1], *out_size)
    xx, cl = single_input(x)
    args = (g, rois, [xx.shape], cl, x.dtype, out_size, ki.kwargs["spatial_scale"], ki.kwargs["sampling_ratio"],
            ki.kwargs["aligned"])
    (pre,) = roi_align_backward(*args, prereduce=True)
    (taps,) = roi_align_backward(*args, prereduce=False)
    (ref,) = torch.autograd.grad(tvo.roi_align(x.requires_grad_(), rois, out_size, **ki.kwargs), x, g)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(pre, ref)
    torch.testing.assert_close(taps, ref)


@interp
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_launch_config_through_the_interpreter(channels_last: bool) -> None:
    # The interpreter normally runs wide channel blocks; the GPU's (16-channel forward, 8-channel backward tiles)
    # must give the same results: C = 19 spans 2 / 3 channel blocks with a partial last one.
    assert launch_config("fwd", 19, 7, 7, False)["BLOCK_C"] == 16
    assert launch_config("bwd", 19, 7, 7, False)["BLOCK_C"] == 8
    assert launch_config("fwd", 19, 7, 7, True)["BLOCK_C"] == 32
    shape = {"N": 2, "C": 19, "H": 12, "W": 10, "K": 4, "output_size": [3, 4], "sampling_ratio": -1, "aligned": True,
             "spatial_scale": 0.5, "box_min": 4.0, "box_max": 24.0, "outside": 1, "channels_last": channels_last}
    ki = make_inputs(shape, torch.float64, "cpu", 13)
    x, rois, out_size = ki.args
    kw = ki.kwargs
    g = torch.randn(rois.shape[0], 19, *out_size, dtype=torch.float64)
    xx, cl = single_input(x)
    with poison_outputs():
        out = roi_align_forward(xx, rois, out_size, kw["spatial_scale"], kw["sampling_ratio"], kw["aligned"],
                                interpreter=False)
    (gx,) = roi_align_backward(g, rois, [xx.shape], cl, x.dtype, out_size, kw["spatial_scale"], kw["sampling_ratio"],
                               kw["aligned"], interpreter=False)
    ref, gr = _fwd_bwd(tvo.roi_align, x, rois, g, out_size, **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gr, rtol=0, atol=1e-12)


@interp
def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 1.0, 4.0, 4.5], [1, -1.0, 2.0, 3.0, 6.5], [1, 2.0, 0.0, 5.5, 3.0]],
                        dtype=torch.float64)
    for sr, aligned in ((-1, True), (2, False)):
        assert torch.autograd.gradcheck(roi_align_triton, (x, rois, (2, 3), 1.0, sr, aligned), fast_mode=True)


# --- multi-level (FPN) -------------------------------------------------------------------------------------------


def _fpn_case(dtype: torch.dtype, channels_last: bool, seed: int) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                            list[float], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes, scales = [(16, 20), (8, 10), (4, 5)], [1 / 4, 1 / 8, 1 / 16]
    feats = [torch.randn(2, 5, h, w, generator=g).to(dtype) for h, w in sizes]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    K = 10
    xy = torch.rand(K, 2, generator=g) * 70 - 5
    wh = torch.rand(K, 2, generator=g) * 40
    rois = torch.cat([torch.randint(0, 2, (K, 1), generator=g).float(), xy, xy + wh], dim=1)
    levels = torch.randint(0, 3, (K,), generator=g)
    levels[0] = 3  # out of range: torchvision's MultiScaleRoIAlign leaves such a row at zero
    return feats, rois.to(torch.float64 if dtype == torch.float64 else torch.float32), scales, levels


def _per_level_torchvision(feats: list[torch.Tensor], rois: torch.Tensor, scales: list[float],
                           levels: torch.Tensor) -> torch.Tensor:
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], 3, 2)
    for lvl, (f, s) in enumerate(zip(feats, scales)):
        idx = torch.where(levels == lvl)[0]
        out = out.index_put((idx,), tvo.roi_align(f, rois[idx].to(f.dtype), (3, 2), s, 2, False))
    return out


@interp
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_multilevel_matches_per_level_torchvision(dtype: torch.dtype, channels_last: bool) -> None:
    feats, rois, scales, levels = _fpn_case(dtype, channels_last, seed=9)
    leaves = [f.detach().clone().requires_grad_() for f in feats]
    with count_triton_launches() as launches:
        out = roi_align_multilevel_triton(leaves, rois, scales, levels, (3, 2), 2, False)
    assert launches[0] == 1  # every level in one launch
    gout = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(out, leaves, gout)
    assert all(gr.stride() == f.stride() and gr.dtype == dtype for gr, f in zip(grads, feats))
    assert not out[0].any()
    f64 = [f.detach().double().requires_grad_() for f in feats]
    ref = _per_level_torchvision(f64, rois.double(), scales, levels)
    ref_grads = torch.autograd.grad(ref, f64, gout.double())
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    else:  # bf16 against float64, judged relative to the eager reference in bf16 (kernels.testing's rule)
        e_leaves = [f.detach().clone().requires_grad_() for f in feats]
        eager = roi_align_multilevel_reference(e_leaves, rois, scales, levels, (3, 2), 2, False)
        eager_grads = torch.autograd.grad(eager, e_leaves, gout)
        for got, want, base in ((out, ref, eager), *zip(grads, ref_grads, eager_grads)):
            stats = error_stats(got, want)
            assert stats.nonfinite == 0 and passes(stats, error_stats(base, want), dtype), stats


@interp
def test_multilevel_mixed_layouts_and_reference() -> None:
    feats, rois, scales, levels = _fpn_case(torch.float32, False, seed=10)
    mixed = [feats[0].contiguous(memory_format=torch.channels_last), feats[1], feats[2]]
    expected = _per_level_torchvision(feats, rois, scales, levels)
    torch.testing.assert_close(roi_align_multilevel_triton(mixed, rois, scales, levels, (3, 2), 2, False), expected)
    torch.testing.assert_close(roi_align_multilevel_reference(mixed, rois, scales, levels, (3, 2), 2, False),
                               expected)
    with pytest.raises(ValueError, match="levels"):
        roi_align_multilevel(feats, rois, scales, levels[:-1], (3, 2), 2, False)
    with pytest.raises(ValueError, match="scale"):
        roi_align_multilevel(feats, rois, scales[:2], levels, (3, 2), 2, False)


# --- dispatch, validation, registry ------------------------------------------------------------------------------


@interp
def test_dispatch_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1, 3, 6, 7)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 4.0]])
    assert dispatch_path(x.device) == "triton-interpret"
    with count_triton_launches() as launches:
        out = kernels.roi_align(x.requires_grad_(), rois, 2, 1.0, 2)
    assert launches[0] == 1 and "visionbench_roi_align" in type(out.grad_fn).__name__
    monkeypatch.setattr(OP, "dispatch_path", lambda device: "reference")
    with count_triton_launches() as launches:
        ref = kernels.roi_align(x, rois, 2, 1.0, 2)
        ref_ml = roi_align_multilevel([x], rois, [1.0], torch.zeros(1, dtype=torch.int64), 2, 2, False)
    assert launches[0] == 0 and "visionbench_roi_align" not in type(ref.grad_fn).__name__
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ref_ml, ref)
    with pytest.raises(RuntimeError, match="cannot run"):
        roi_align_triton(x, rois, 2)


@interp
@pytest.mark.parametrize("args, err", [
    ((torch.randn(1, 2, 4, 4), torch.zeros(3, 4), 2), ValueError),  # Tensor boxes must be [K, 5]
    ((torch.randn(1, 2, 4, 4), [torch.zeros(3, 5)], 2), ValueError),  # list entries must be [L, 4]
    ((torch.randn(1, 2, 4, 4), torch.zeros(3, 5, dtype=torch.int64), 2), TypeError),  # float boxes
    ((torch.randn(2, 4, 4), torch.zeros(3, 5), 2), ValueError),  # input must be 4-d
    ((torch.randn(1, 2, 4, 4).to(torch.int32), torch.zeros(3, 5), 2), TypeError),  # unsupported dtype
])
def test_input_validation(args: tuple[Any, ...], err: type[Exception]) -> None:
    with pytest.raises(err):
        roi_align_triton(*args)


def test_registry_entry_formulas_and_inputs() -> None:
    assert SPEC.fn is kernels.roi_align is roi_align and SPEC.reference is roi_align_reference
    assert SPEC.triton_fn is roi_align_triton and SPEC.patch_model is patch_model
    assert set(SPEC.peers) == {"torchvision"} and SPEC.deterministic is False  # atomics in the backward
    p4 = SPEC.shapes["frcnn_box_p4"]
    # 1024 ROIs x 256 channels x 49 bins x (2x2 samples x 4 taps x 2 FLOP + 1 division)
    assert SPEC.flops(p4) == 1024 * 256 * 49 * 33 == 423_886_848
    # bf16: map 2*256*50*68*2 B + ROIs 1024*5*4 B + output 1024*256*49*2 B
    assert SPEC.min_bytes(p4, torch.bfloat16) == 3_481_600 + 20_480 + 25_690_112
    assert SPEC.min_bytes_backward(p4, torch.float32) == 2 * 3_481_600 + 20_480 + 2 * 25_690_112
    # adaptive: the grid is estimated from the geometric-mean box side (sqrt(4 * 40) * 0.25 = 3.2 px -> 2x2 for 2x2)
    assert SPEC.flops(SPEC.test_shapes["c17_adaptive_nhwc"]) == 5 * 17 * 4 * (8 * 4 + 1)
    for name, shape in SPEC.shapes.items():  # FPN level sizes of an 800x1088 input and the level rule
        lvl = round(-math.log2(shape["spatial_scale"]))
        assert (shape["H"], shape["W"]) == (800 >> lvl, 1088 >> lvl), name
        rois = make_boxes({**shape, "clip": False}, torch.Generator().manual_seed(0))
        side = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        k = torch.floor(4 + torch.log2(side / 224) + 1e-6).clamp(2, 5)
        assert (k == lvl).all(), name
    for shape in SPEC.test_shapes.values():
        a, b = make_inputs(shape, torch.bfloat16, "cpu", 0), make_inputs(shape, torch.bfloat16, "cpu", 0)
        assert all(torch.equal(u, v) for u, v in zip(a.args[:2], b.args[:2])) and a.grad_args == (0,)
        assert a.args[1].dtype == torch.float32 and a.args[0].dtype == torch.bfloat16  # boxes stay fp32
        assert not torch.equal(a.args[1], make_inputs(shape, torch.bfloat16, "cpu", 1).args[1])
        assert a.args[0].is_contiguous(memory_format=torch.channels_last) == shape.get("channels_last", False)
        used = set(a.args[1][:, 0].long().tolist())
        assert not used & set(shape.get("empty_images", ())) and used <= set(range(shape["N"]))


def test_make_boxes_outside_and_degenerate() -> None:
    shape = {"N": 1, "H": 10, "W": 12, "K": 6, "spatial_scale": 0.5, "box_min": 2.0, "box_max": 6.0, "outside": 2,
             "degenerate": 2}
    r = make_boxes(shape, torch.Generator().manual_seed(0))
    assert r[1, 1] > 24.0 + 4.0  # wholly outside: past the image's right edge (12 / 0.5 = 24) by > 2 map px
    assert r[0, 3] > 24.0 > r[0, 1]  # partly outside: straddles the right edge
    assert r[2, 1] == r[2, 3] and r[3, 2] == r[3, 4]  # zero width, then zero height


def test_torchvision_peer_matches_reference() -> None:
    ki = make_inputs(SPEC.test_shapes["c3_sr2_unaligned"], torch.float32, "cpu", 0)
    x, rois, out_size = ki.args
    torch.testing.assert_close(torchvision_roi_align(x, rois, out_size, **ki.kwargs),
                               roi_align_reference(x, rois, out_size, **ki.kwargs))
    xb = x.to(torch.bfloat16)  # torchvision has no bf16 kernel: the peer runs it in fp32, like autocast
    torch.testing.assert_close(torchvision_roi_align(xb, rois, out_size, **ki.kwargs),
                               roi_align_reference(xb, rois, out_size, **ki.kwargs))


# --- the model switch ------------------------------------------------------------------------------------------------


class _Pooler(torch.nn.Module):
    hot_path = "roi_align"

    def __init__(self) -> None:
        super().__init__()
        self.roi_align_fn, self.multilevel_fn = tvo.roi_align, None


def test_patch_model_counts_sites() -> None:
    model = torch.nn.Sequential(_Pooler(), torch.nn.Conv2d(1, 1, 1), torch.nn.Sequential(_Pooler()))
    assert patch_model(model) == 2
    assert all(m.roi_align_fn is roi_align and m.multilevel_fn is roi_align_multilevel
               for m in model.modules() if isinstance(m, _Pooler))
    assert patch_model(torch.nn.Linear(2, 2)) == 0


@interp
@pytest.mark.slow
def test_faster_rcnn_triton_box_features_match_eager() -> None:
    models = pytest.importorskip("models")
    from models.faster_rcnn import MultiScaleRoIAlign

    torch.manual_seed(0)
    model = models.create("fasterrcnn_resnet50_fpn", kernels="triton").eval()
    pools = [m for m in model.modules() if isinstance(m, MultiScaleRoIAlign)]
    assert len(pools) == 1 and pools[0].multilevel_fn is roi_align_multilevel and pools[0].roi_align_fn is roi_align
    pool, eager_pool = pools[0], MultiScaleRoIAlign()  # the pooler has no weights: a fresh one is the eager path
    assert eager_pool.multilevel_fn is None and eager_pool.roi_align_fn is tvo.roi_align
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        x = model.preprocess(images)
        features = model.backbone(x)
        proposals, _ = model.rpn(list(features.values()), x.shape[-2:], (64, 64))
    proposals = [p[:5] for p in proposals]  # a few per image keep the interpreter quick (C = 256)
    proposals[1] = torch.cat([proposals[1], torch.tensor([[0.0, 0.0, 64.0, 64.0], [3.0, 5.0, 40.0, 60.0]])])
    feats = {k: v.detach().requires_grad_() for k, v in features.items()}
    with count_triton_launches() as launches:
        pooled = pool(feats, proposals, (64, 64))
    assert launches[0] == 1  # all FPN levels in one launch
    pooled_eager = eager_pool(feats, proposals, (64, 64))
    assert pooled.shape == (sum(len(p) for p in proposals), 256, 7, 7)
    torch.testing.assert_close(pooled, pooled_eager)
    g = torch.randn_like(pooled)
    grads = torch.autograd.grad(pooled, list(feats.values()), g, allow_unused=True)
    grads_eager = torch.autograd.grad(pooled_eager, list(feats.values()), g, allow_unused=True)
    for a, b in zip(grads, grads_eager):  # None: a map no ROI reads (e.g. "pool"); a level without ROIs may be 0
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b)
    assert any(a is not None and a.any() for a in grads)
    with torch.no_grad():  # and the box head's outputs on them
        head = model.roi_heads
        torch.testing.assert_close(head.box_predictor(head.box_head(pooled)),
                                   head.box_predictor(head.box_head(pooled_eager)))


# --- GPU (skipped on CPU machines) ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape_name", list(SPEC.shapes))
def test_gpu_real_shapes_match_torchvision(shape_name: str, dtype: torch.dtype) -> None:
    ki = make_inputs(SPEC.shapes[shape_name], dtype, "cuda", 0)
    x, rois, out_size = ki.args
    g = torch.randn(rois.shape[0], x.shape[1], *out_size, device="cuda").to(dtype)
    out, gx = _fwd_bwd(roi_align_triton, x, rois, g, out_size, **ki.kwargs)
    ref, gr = _fwd_bwd(tvo.roi_align, x.float(), rois, g.float(), out_size, **ki.kwargs)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(out.float(), ref, **tol)
    torch.testing.assert_close(gx.float(), gr, **tol)
    xx, cl = single_input(x)
    (taps,) = roi_align_backward(g, rois, [xx.shape], cl, dtype, out_size, ki.kwargs["spatial_scale"],
                                 ki.kwargs["sampling_ratio"], ki.kwargs["aligned"], prereduce=False)
    torch.testing.assert_close(taps.float(), gr, **tol)


@pytest.mark.gpu
def test_gpu_multilevel_matches_per_level_torchvision() -> None:
    feats, rois, scales, levels = _fpn_case(torch.float32, False, seed=12)
    feats, rois, levels = [f.cuda() for f in feats], rois.cuda(), levels.cuda()
    torch.testing.assert_close(roi_align_multilevel_triton(feats, rois, scales, levels, (3, 2), 2, False),
                               _per_level_torchvision(feats, rois, scales, levels))


@interp
def test_batch_index_equal_to_n_gives_zeros() -> None:
    # b == N is the first invalid index (b < N is the bound). x is a view of the first 2 of 3 images, so a kernel
    # that admitted b == N would read the third image's real, non-zero values rather than fault.
    base = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    x = base[:2]
    rois = torch.tensor([[2, 1.0, 1.0, 4.0, 4.0], [1, 1.0, 1.0, 4.0, 4.0]], dtype=torch.float64)
    out = roi_align_triton(x, rois, 2, 1.0, 2)
    assert not out[0].any()
    torch.testing.assert_close(out[1:], tvo.roi_align(x, rois[1:], 2, 1.0, 2), rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(roi_align_triton(xg, rois, 2, 1.0, 2), xg, torch.ones(2, 2, 2, 2, dtype=torch.float64))
    (gr,) = torch.autograd.grad(tvo.roi_align(xg, rois[1:], 2, 1.0, 2), xg, torch.ones(1, 2, 2, 2, dtype=torch.float64))
    torch.testing.assert_close(gx, gr, rtol=0, atol=1e-12)
