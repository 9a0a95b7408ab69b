"""ROI Align: the ``visionbench::roi_align*`` operators (:mod:`.ops`) behind the dispatching functional API, and a
drop-in module.

``roi_align`` has exactly ``torchvision.ops.roi_align``'s signature and semantics; ``roi_align_multilevel`` is the
pooling step of ``MultiScaleRoIAlign`` (all FPN levels in one launch). Both are differentiable with respect to the
feature maps (not the boxes, as in torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.utils import _pair

from kernels._triton import HAS_TRITON, dispatch_path

from .ops import roi_align_multilevel_op, roi_align_op
from .reference import as_rois, roi_align_multilevel_reference, roi_align_reference

__all__ = ["RoIAlign", "roi_align", "roi_align_triton", "roi_align_multilevel", "roi_align_multilevel_triton",
           "patch_model"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _require_triton(device: torch.device) -> None:
    if not HAS_TRITON:
        raise RuntimeError("roi_align's Triton path needs triton, which is not installed")
    if dispatch_path(device) == "reference":
        raise RuntimeError(
            f"roi_align's Triton path cannot run on {device}: it needs a CUDA device, or the CPU with "
            "TRITON_INTERPRET=1 set before triton is imported")


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"roi_align supports {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")


def roi_align_triton(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """:func:`roi_align` forced onto the Triton kernel (raises if Triton cannot run on ``input.device``)."""
    _require_triton(input.device)
    _check_dtype(input.dtype)
    rois = as_rois(boxes)
    return roi_align_op(input, rois, list(_pair(output_size)), float(spatial_scale), int(sampling_ratio),
                        bool(aligned))


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """ROI Align (Mask R-CNN), ``torchvision.ops.roi_align``'s contract; dispatches Triton / interpreter / reference.

    For ROI ``k`` and bin ``(ph, pw)``: the mean over a ``gh x gw`` grid of bilinear samples of
    ``input[rois[k, 0]]`` inside the bin, ``gh = sampling_ratio`` (or ``ceil(roi_h / oh)`` if ``<= 0``); samples
    outside ``[-1, H] x [-1, W]`` are 0 but count. See ``kernels/roi_align/reference.py`` for every rule.

    Args:
        input: ``[N, C, H, W]`` float32/float16/bfloat16 (float64 too), NCHW or channels_last memory.
        boxes: ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) or a list of ``Tensor[L_i, 4]`` (one per image), any
            float dtype (coordinates are used in float32, float64 for float64 input).
        output_size: ``oh`` or ``(oh, ow)``.
        spatial_scale: box coordinates times this give map coordinates.
        sampling_ratio: samples per bin and axis; ``<= 0`` is adaptive (per ROI and axis).
        aligned: half-pixel shift without clamping the ROI size to >= 1.

    Returns:
        ``[K, C, oh, ow]`` in ``input.dtype``; empty boxes give ``[0, C, oh, ow]``.
    """
    if dispatch_path(input.device) == "reference":
        return roi_align_reference(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_triton(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def _check_multilevel(features: Sequence[Tensor], rois: Tensor, spatial_scales: Sequence[float],
                      levels: Tensor) -> None:
    if len(features) == 0 or len(features) != len(spatial_scales):
        raise ValueError(f"need one scale per feature map, got {len(features)} maps and {len(spatial_scales)} scales")
    if rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError(f"rois must be Tensor[K, 5], got shape {tuple(rois.shape)}")
    if levels.shape != (rois.shape[0],) or levels.is_floating_point():
        raise ValueError(f"levels must be an integer Tensor[K] (K={rois.shape[0]}), got {levels.dtype} "
                         f"{tuple(levels.shape)}")


def roi_align_multilevel_triton(
    features: Sequence[Tensor],
    rois: Tensor,
    spatial_scales: Sequence[float],
    levels: Tensor,
    output_size: int | tuple[int, int],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """:func:`roi_align_multilevel` forced onto the Triton kernel (one launch for all levels)."""
    _check_multilevel(features, rois, spatial_scales, levels)
    _require_triton(features[0].device)
    _check_dtype(features[0].dtype)
    return roi_align_multilevel_op(list(features), rois, levels.to(features[0].device),
                                   [float(s) for s in spatial_scales], list(_pair(output_size)), int(sampling_ratio),
                                   bool(aligned))


def roi_align_multilevel(
    features: Sequence[Tensor],
    rois: Tensor,
    spatial_scales: Sequence[float],
    levels: Tensor,
    output_size: int | tuple[int, int],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Multi-level ROI Align: ROI ``k`` pooled from ``features[levels[k]]`` at ``spatial_scales[levels[k]]``.

    The pooling step of torchvision's ``MultiScaleRoIAlign`` after FPN level assignment, without its per-level
    Python loop and ``torch.where`` syncs (one kernel launch for all levels). ROIs with an out-of-range level get 0.

    Args:
        features: ``L`` maps ``[N, C, H_l, W_l]`` (same dtype, device, N and C).
        rois: ``[K, 5]`` (batch index, x1, y1, x2, y2) in image coordinates.
        spatial_scales: ``L`` floats (``1 / stride_l``).
        levels: ``[K]`` integer level per ROI.
        output_size, sampling_ratio, aligned: as in :func:`roi_align`.

    Returns:
        ``[K, C, oh, ow]`` in the features' dtype.
    """
    if dispatch_path(features[0].device) == "reference":
        _check_multilevel(features, rois, spatial_scales, levels)
        return roi_align_multilevel_reference(features, rois, spatial_scales, levels, output_size, sampling_ratio,
                                              aligned)
    return roi_align_multilevel_triton(features, rois, spatial_scales, levels, output_size, sampling_ratio, aligned)


class RoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.RoIAlign`` running :func:`roi_align`: ``[N, C, H, W]`` -> ``[K, C, oh, ow]``."""

    hot_path = "roi_align"

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


def patch_model(model: nn.Module) -> int:
    """Route every ROI-pooling site of ``model`` through our kernels; returns the number of sites switched.

    A site is a module whose class declares ``hot_path = "roi_align"`` and has ``roi_align_fn`` /
    ``multilevel_fn`` attributes (the Faster R-CNN pooler): it gets ``roi_align_fn = kernels.roi_align`` and
    ``multilevel_fn = roi_align_multilevel`` (all FPN levels in one launch).
    """
    n = 0
    for m in model.modules():
        if getattr(type(m), "hot_path", None) == "roi_align" and hasattr(m, "roi_align_fn"):
            m.roi_align_fn = roi_align
            m.multilevel_fn = roi_align_multilevel
            n += 1
    return n
