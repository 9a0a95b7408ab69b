"""ROI Align (Mask R-CNN's RoIAlign, torchvision semantics): Triton kernel, reference and registry entry.

Public: :func:`roi_align` (``torchvision.ops.roi_align``'s signature), :func:`roi_align_multilevel` (FPN pooling in
one launch), :class:`RoIAlign`, :func:`patch_model` (Faster R-CNN's pooler).

Shape dicts (``shapes`` / ``test_shapes``) have keys ``N, C, H, W`` (feature map), ``K`` (ROIs over all images),
``output_size`` (int or ``[oh, ow]``), ``sampling_ratio``, ``aligned``, ``spatial_scale``, ``box_min``/``box_max``
(box side range in image coordinates, log-uniform), ``outside`` (boxes pushed partly / wholly off the map,
alternating), ``degenerate`` (zero-width / zero-height boxes, alternating), ``empty_images`` (images that get no ROI),
``clip`` (clip boxes to the image, as RPN proposals are) and ``channels_last``.

Conventions:
    * FLOPs count the bilinear taps: per output element and sample 4 taps x (multiply + add) = 8 FLOPs, plus one
      division for the average: ``K * C * oh * ow * (8 * gh * gw + 1)``. Weight computation is per (ROI, bin,
      sample) and shared by all channels, so it is not counted. For adaptive sampling ``gh x gw`` is estimated from
      the geometric-mean box side of the shape (the real grid is data dependent).
    * ``min_bytes``: the feature map read once + the ROIs (fp32, float64 for float64) + the output written once.
      (Every tap goes through L1/L2; the map is the DRAM floor, not the taps' traffic.)
    * ``min_bytes_backward``: grad_out read once + ROIs + the input gradient written once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from kernels.registry import KernelInputs, KernelSpec, register_kernel

from .op import RoIAlign, patch_model, roi_align, roi_align_multilevel, roi_align_multilevel_triton, roi_align_triton
from .reference import as_rois, roi_align_multilevel_reference, roi_align_reference

__all__ = [
    "RoIAlign",
    "as_rois",
    "make_inputs",
    "patch_model",
    "roi_align",
    "roi_align_multilevel",
    "roi_align_multilevel_reference",
    "roi_align_multilevel_triton",
    "roi_align_reference",
    "roi_align_triton",
    "torchvision_roi_align",
]


def _output_size(shape: Mapping[str, Any]) -> tuple[int, int]:
    o = shape["output_size"]
    return (int(o), int(o)) if isinstance(o, int) else (int(o[0]), int(o[1]))


def make_boxes(shape: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
    """``[K, 5]`` float64 ROIs in image coordinates for a shape dict (see the module docstring)."""
    N, H, W, K = shape["N"], shape["H"], shape["W"], shape["K"]
    scale = float(shape.get("spatial_scale", 1.0))
    img_h, img_w = H / scale, W / scale
    lo, hi = math.log(shape.get("box_min", 1.0)), math.log(shape.get("box_max", max(img_h, img_w)))
    sides = torch.exp(lo + (hi - lo) * torch.rand(K, 2, generator=generator, dtype=torch.float64))  # (w, h)
    centers = torch.rand(K, 2, generator=generator, dtype=torch.float64) * torch.tensor([img_w, img_h])
    n_out = min(K, int(shape.get("outside", 0)))
    for i in range(n_out):
        if i % 2 == 0:  # partly outside: straddle the right/bottom or left/top edge
            centers[i] = torch.tensor([img_w, img_h]) if i % 4 == 0 else torch.zeros(2, dtype=torch.float64)
        else:  # wholly outside: past the right edge by at least 2 map pixels plus half the box
            centers[i, 0] = img_w + 2.0 / scale + sides[i, 0]
    x1y1 = centers - sides / 2
    x2y2 = centers + sides / 2
    if shape.get("clip", False):  # proposals clipped to the image, as a detector's RPN emits them
        size = torch.tensor([img_w, img_h], dtype=torch.float64)
        x1y1 = torch.minimum(x1y1.clamp(min=0), size)
        x2y2 = torch.minimum(x2y2.clamp(min=0), size)
    n_deg = min(K - n_out, int(shape.get("degenerate", 0)))
    for j in range(n_deg):
        i = n_out + j
        x2y2[i, j % 2] = x1y1[i, j % 2]  # zero width, then zero height
    allowed = [i for i in range(N) if i not in set(shape.get("empty_images", ()))]
    b = torch.tensor(allowed, dtype=torch.float64)[torch.randint(0, len(allowed), (K,), generator=generator)]
    return torch.cat([b[:, None], x1y1, x2y2], dim=1)


def make_inputs(shape: Mapping[str, Any], dtype: torch.dtype, device: torch.device | str, seed: int) -> KernelInputs:
    """Seeded inputs: ``(input [N, C, H, W], rois [K, 5], (oh, ow))`` + scale/sampling/aligned kwargs.

    ROIs are float32 (float64 for float64 input): our API accepts any float box dtype and uses the coordinates in
    fp32, so half-precision runs do not round the boxes.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape["N"], shape["C"], shape["H"], shape["W"], generator=g).to(device=device, dtype=dtype)
    if shape.get("channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    box_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rois = make_boxes(shape, g).to(device=device, dtype=box_dtype)
    kwargs = {"spatial_scale": float(shape.get("spatial_scale", 1.0)),
              "sampling_ratio": int(shape.get("sampling_ratio", -1)), "aligned": bool(shape.get("aligned", False))}
    return KernelInputs(args=(x, rois, _output_size(shape)), kwargs=kwargs, grad_args=(0,))


def _grid(shape: Mapping[str, Any]) -> tuple[int, int]:
    sr = int(shape.get("sampling_ratio", -1))
    if sr > 0:
        return sr, sr
    oh, ow = _output_size(shape)
    side = math.sqrt(shape.get("box_min", 1.0) * shape.get("box_max", 1.0)) * float(shape.get("spatial_scale", 1.0))
    return max(1, math.ceil(side / oh)), max(1, math.ceil(side / ow))


def flops(shape: Mapping[str, Any]) -> int:
    """``K * C * oh * ow * (8 * gh * gw + 1)`` (4 bilinear taps x mul+add per sample, one division per output)."""
    oh, ow = _output_size(shape)
    gh, gw = _grid(shape)
    return shape["K"] * shape["C"] * oh * ow * (8 * gh * gw + 1)


def _esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _roi_bytes(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    return shape["K"] * 5 * (8 if dtype == torch.float64 else 4)


def min_bytes(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    """Feature map read once + ROIs + output written once."""
    oh, ow = _output_size(shape)
    e = _esize(dtype)
    fmap = shape["N"] * shape["C"] * shape["H"] * shape["W"] * e
    return fmap + _roi_bytes(shape, dtype) + shape["K"] * shape["C"] * oh * ow * e


def min_bytes_backward(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    """grad_out read once + ROIs + the input gradient written once (same total as the forward)."""
    return min_bytes(shape, dtype)


def torchvision_roi_align(input: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor], output_size: Any,
                          spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """Peer: ``torchvision.ops.roi_align`` (the vendor kernel) with boxes cast to the input dtype, as it requires.

    torchvision has no bfloat16 kernel; like its autocast wrapper we run bfloat16 in float32 and cast back.
    """
    from torchvision.ops import roi_align as tv_roi_align

    if input.dtype == torch.bfloat16:
        return torchvision_roi_align(input.float(), boxes, output_size, spatial_scale, sampling_ratio,
                                     aligned).to(torch.bfloat16)
    rois = as_rois(boxes).to(input.dtype)
    return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _frcnn(level: int, H: int, W: int, box: tuple[float, float], channels_last: bool = False) -> dict[str, Any]:
    # Faster R-CNN box head: 2 images x 512 ROIs, 256 channels, 7x7, sampling 2, torchvision's aligned=False.
    # Box sides follow the FPN level rule k = floor(4 + log2(sqrt(area) / 224)) for this level.
    return {"N": 2, "C": 256, "H": H, "W": W, "K": 1024, "output_size": 7, "sampling_ratio": 2, "aligned": False,
            "spatial_scale": 2.0 ** -level, "box_min": box[0], "box_max": box[1], "channels_last": channels_last,
            "clip": True}


# FPN level maps of an 800x1088 input: P2..P5 (strides 4..32).
SHAPES: dict[str, dict[str, Any]] = {
    "frcnn_box_p2": _frcnn(2, 200, 272, (32.0, 111.0)),
    "frcnn_box_p3": _frcnn(3, 100, 136, (113.0, 223.0)),
    "frcnn_box_p4": _frcnn(4, 50, 68, (225.0, 447.0)),
    "frcnn_box_p5": _frcnn(5, 25, 34, (449.0, 800.0)),
    "frcnn_box_p2_nhwc": _frcnn(2, 200, 272, (32.0, 111.0), channels_last=True),
    "frcnn_box_p4_nhwc": _frcnn(4, 50, 68, (225.0, 447.0), channels_last=True),
}

TEST_SHAPES: dict[str, dict[str, Any]] = {
    # C=3, fixed 2x2 grid, legacy alignment, non-square bins, partly/wholly outside and zero-size boxes.
    "c3_sr2_unaligned": {"N": 2, "C": 3, "H": 13, "W": 11, "K": 7, "output_size": [3, 5], "sampling_ratio": 2,
                         "aligned": False, "spatial_scale": 0.5, "box_min": 2.0, "box_max": 20.0, "outside": 2,
                         "degenerate": 2},
    # C=17, adaptive grid, aligned, an image (1) without ROIs.
    "c17_adaptive_aligned": {"N": 3, "C": 17, "H": 9, "W": 14, "K": 9, "output_size": [4, 3], "sampling_ratio": -1,
                             "aligned": True, "spatial_scale": 1.0, "box_min": 1.0, "box_max": 12.0, "outside": 3,
                             "degenerate": 2, "empty_images": [1]},
    # channels_last memory, adaptive (sampling_ratio=0), legacy alignment, stride-4 map.
    "c17_adaptive_nhwc": {"N": 2, "C": 17, "H": 10, "W": 7, "K": 5, "output_size": 2, "sampling_ratio": 0,
                          "aligned": False, "spatial_scale": 0.25, "box_min": 4.0, "box_max": 40.0, "outside": 2,
                          "degenerate": 1, "channels_last": True},
    # Many ROIs on one image, 1x1 grid, aligned (sub-pixel boxes: aligned keeps their size below 1).
    "c3_many_rois_sr1": {"N": 1, "C": 3, "H": 6, "W": 7, "K": 24, "output_size": 2, "sampling_ratio": 1,
                         "aligned": True, "spatial_scale": 1.0, "box_min": 0.5, "box_max": 8.0, "degenerate": 2},
    # Large boxes: adaptive grids up to 7x7 and footprints spanning several 16x16 backward windows.
    "c5_large_boxes": {"N": 1, "C": 5, "H": 30, "W": 33, "K": 3, "output_size": 4, "sampling_ratio": -1,
                       "aligned": False, "spatial_scale": 1.0, "box_min": 16.0, "box_max": 26.0, "outside": 1},
}

_SPEC = register_kernel(
    KernelSpec(
        name="roi_align",
        fn=roi_align,
        triton_fn=roi_align_triton,
        reference=roi_align_reference,
        make_inputs=make_inputs,
        shapes=SHAPES,
        test_shapes=TEST_SHAPES,
        flops=flops,
        min_bytes=min_bytes,
        min_bytes_backward=min_bytes_backward,
        peers={"torchvision": torchvision_roi_align},
        patch_model=patch_model,
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        # The backward accumulates with atomics: on a GPU two runs may differ in the last bits (the interpreter runs
        # programs in order, so it is deterministic there).
        deterministic=False,
        description="ROI Align with torchvision semantics (adaptive sampling, aligned), fwd gather + "
                    "pre-reduced atomic bwd; multi-level FPN pooling in one launch",
    )
)
