"""Pure-PyTorch ROI Align with ``torchvision.ops.roi_align``'s exact semantics (our own vectorized implementation).

This is the eager provider, the CPU fallback and the test oracle. It works in float64 and is differentiable with
respect to ``input`` by autograd (boxes are treated as constants, as in torchvision).

Semantics (those of torchvision's C++/CUDA kernels). For ROI ``k`` with batch index ``b = int(rois[k, 0])``::

    off   = 0.5 if aligned else 0
    x1    = rois[k, 1] * spatial_scale - off         (product in float64, rounded to the compute dtype)
    roi_w = x2 - x1, clamped to >= 1 unless aligned   (likewise y)
    bin_w = roi_w / ow
    gw    = sampling_ratio if sampling_ratio > 0 else ceil(roi_w / ow)        (per ROI and axis: adaptive)
    x(pw, ix) = (x1 + pw * bin_w) + ((ix + 0.5) * bin_w) / gw,  ix in [0, gw)
    out[k, c, ph, pw] = sum_{iy, ix} bilinear(input[b, c], y(ph, iy), x(pw, ix)) / max(gh * gw, 1)

``bilinear`` returns 0 for a sample outside ``[-1, H] x [-1, W]`` (it still counts in the average), clamps
coordinates below 0 to 0, and at the last row/column uses that row/column alone (``y_low = y_high = H - 1``).

The compute dtype is float64 for float64 inputs and float32 otherwise (fp16/bf16 inputs are upcast, the output is
rounded back), matching the Triton kernel's "coordinates and accumulation in fp32" contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

__all__ = ["as_rois", "roi_align_reference", "roi_align_multilevel_reference", "roi_geometry"]

# Gather budget per chunk of ROIs (elements of the [chunk, OH, GH, OW, GW, C] tap tensors), so the reference stays
# usable as an eager provider at real sizes without materializing gigabytes at once.
_CHUNK_ELEMS = 1 << 25


def as_rois(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    """``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) from either torchvision box format.

    A list of ``Tensor[L_i, 4]`` becomes rows ``(i, x1, y1, x2, y2)`` in list order, like torchvision's
    ``convert_boxes_to_roi_format``.
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(f"boxes tensor must be Tensor[K, 5], got shape {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if len(boxes) == 0:
        raise ValueError("boxes list is empty; pass one (possibly empty) Tensor[L, 4] per image")
    for b in boxes:
        if b.dim() != 2 or b.size(1) != 4:
            raise ValueError(f"each tensor in the boxes list must be Tensor[L, 4], got shape {tuple(b.shape)}")
    cat = torch.cat(list(boxes), dim=0)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, cat], dim=1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# Adaptive grids above this per axis (or NaN/inf) get no samples: torchvision's float->int cast is undefined there
# (x86 yields INT_MIN, i.e. zero iterations and output 0), and the Triton kernel must not loop ~2^32 times.
MAX_GRID = 32768.0


def _adaptive_grid(q: Tensor) -> Tensor:
    """``ceil(roi_size / pooled)`` per ROI as int64; <= 0, NaN or > MAX_GRID -> 0 samples."""
    ok = (q > 0) & (q <= MAX_GRID)
    return torch.ceil(torch.where(ok, q, torch.zeros_like(q))).to(torch.int64)


def roi_geometry(
    rois: Tensor, spatial_scale: float, output_size: tuple[int, int], sampling_ratio: int, aligned: bool,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """Per-ROI sampling geometry in ``dtype`` (all ``[K]``): start, bin size, grid size and sample count.

    Returns ``dict(y1, x1, bin_h, bin_w, gh, gw, count)``; ``gh``/``gw`` are int64 and clamped at 0 (a negative
    adaptive grid means no samples, exactly as torchvision's loops that run zero times; see ``MAX_GRID``).
    """
    oh, ow = output_size
    r = rois.detach().to(torch.float64)
    off = 0.5 if aligned else 0.0
    # torchvision multiplies the box (its dtype) by a double scale, then rounds to the compute type.
    x1 = (r[:, 1] * spatial_scale - off).to(dtype)
    y1 = (r[:, 2] * spatial_scale - off).to(dtype)
    x2 = (r[:, 3] * spatial_scale - off).to(dtype)
    y2 = (r[:, 4] * spatial_scale - off).to(dtype)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / oh, roi_w / ow
    if sampling_ratio > 0:
        gh = torch.full_like(x1, sampling_ratio, dtype=torch.int64)
        gw = gh.clone()
    else:
        gh, gw = _adaptive_grid(roi_h / oh), _adaptive_grid(roi_w / ow)
    count = (gh * gw).clamp(min=1).to(dtype)
    return {"y1": y1, "x1": x1, "bin_h": bin_h, "bin_w": bin_w, "gh": gh, "gw": gw, "count": count}


def _axis_taps(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, gmax: int, size: int):
    """Bilinear taps along one axis for every (ROI, bin, sample): ``[K, pooled, gmax]`` each.

    Returns ``(low, high, w_low, w_high, valid)``; ``valid`` folds in the ``[-1, size]`` range test and the adaptive
    grid mask (sample index < this ROI's grid). Coordinates are evaluated in torchvision's operation order.
    """
    dt = start.dtype
    p = torch.arange(pooled, device=start.device, dtype=dt)
    i = torch.arange(gmax, device=start.device, dtype=dt)
    g = grid.clamp(min=1).to(dt)
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]) + (
        (i[None, None, :] + 0.5) * bin_size[:, None, None]
    ) / g[:, None, None]
    in_grid = torch.arange(gmax, device=start.device)[None, None, :] < grid[:, None, None]
    valid = (pos >= -1.0) & (pos <= size) & in_grid  # NaN fails every comparison -> invalid
    pos = torch.where(valid, pos, torch.zeros_like(pos)).clamp(min=0.0)
    low = pos.to(torch.int64)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    pos = torch.where(edge, low.to(dt), pos)
    w_high = pos - low.to(dt)
    w_low = 1.0 - w_high
    return low, high, w_low, w_high, valid


def _roi_align_chunk(flat: Tensor, rois: Tensor, H: int, W: int, output_size: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int, aligned: bool) -> Tensor:
    """ROI Align of one chunk of ROIs; ``flat`` is the input as ``[N * H * W, C]`` in the compute dtype."""
    oh, ow = output_size
    dt = flat.dtype
    geo = roi_geometry(rois, spatial_scale, output_size, sampling_ratio, aligned, dt)
    K = rois.shape[0]
    gh_max = int(geo["gh"].max()) if K else 0
    gw_max = int(geo["gw"].max()) if K else 0
    C = flat.shape[1]
    if gh_max == 0 or gw_max == 0:  # no ROI has a sample; keep the graph connected for autograd
        return flat.new_zeros(K, C, oh, ow) + flat[:0].sum()
    yl, yh, wyl, wyh, vy = _axis_taps(geo["y1"], geo["bin_h"], geo["gh"], oh, gh_max, H)  # [K, oh, GH]
    xl, xh, wxl, wxh, vx = _axis_taps(geo["x1"], geo["bin_w"], geo["gw"], ow, gw_max, W)  # [K, ow, GW]
    b = rois[:, 0].detach().to(torch.int64)  # truncation toward zero, as the C++ int cast
    b_ok = (b >= 0) & (b < flat.shape[0] // (H * W))
    b = torch.where(b_ok, b, torch.zeros_like(b))

    # Broadcast to [K, oh, GH, ow, GW]: y axes at dims 1-2, x axes at dims 3-4.
    def yv(t: Tensor) -> Tensor:
        return t[:, :, :, None, None]

    def xv(t: Tensor) -> Tensor:
        return t[:, None, None, :, :]

    base = b[:, None, None, None, None] * (H * W)
    valid = yv(vy) & xv(vx) & b_ok[:, None, None, None, None]

    def tap(yi: Tensor, xi: Tensor) -> Tensor:
        idx = base + yv(yi) * W + xv(xi)
        return flat.index_select(0, idx.reshape(-1)).view(*idx.shape, C)  # [K, oh, GH, ow, GW, C]

    w1, w2 = yv(wyl) * xv(wxl), yv(wyl) * xv(wxh)
    w3, w4 = yv(wyh) * xv(wxl), yv(wyh) * xv(wxh)
    val = (w1[..., None] * tap(yl, xl) + w2[..., None] * tap(yl, xh)
           + w3[..., None] * tap(yh, xl) + w4[..., None] * tap(yh, xh))
    val = torch.where(valid[..., None], val, torch.zeros((), dtype=dt, device=val.device))
    out = val.sum(dim=(2, 4)) / geo["count"][:, None, None, None]  # [K, oh, ow, C]
    return out.permute(0, 3, 1, 2)


def roi_align_reference(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """ROI Align (average pooling of bilinear samples), ``torchvision.ops.roi_align``'s contract.

    Args:
        input: ``[N, C, H, W]`` feature map (any memory format), float16/bfloat16/float32/float64.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` or a list of ``Tensor[L_i, 4]`` per image.
        output_size: ``(oh, ow)`` bins (an int means square).
        spatial_scale: maps box coordinates to ``input`` coordinates (e.g. ``1/16`` for a stride-16 map).
        sampling_ratio: samples per bin and axis if ``> 0``; else adaptive ``ceil(roi_size / pooled_size)``.
        aligned: shift boxes by -0.5 pixel and do not clamp the ROI size (Detectron2's alignment).

    Returns:
        ``[K, C, oh, ow]`` in ``input.dtype`` (contiguous).
    """
    rois = as_rois(boxes)
    oh, ow = _pair(output_size)
    N, C, H, W = input.shape
    dt = compute_dtype(input.dtype)
    # Channels-last rows [N*H*W, C]: one index_select per tap gathers all channels (its backward is index_add).
    flat = input.to(dt).permute(0, 2, 3, 1).reshape(N * H * W, C)
    K = rois.shape[0]
    if K == 0:
        return (flat.new_zeros(0, C, oh, ow) + flat[:0].sum()).to(input.dtype)
    geo = roi_geometry(rois, spatial_scale, (oh, ow), sampling_ratio, aligned, dt)
    per_roi = (geo["gh"].clamp(min=1) * geo["gw"].clamp(min=1)).max().item() * oh * ow * max(C, 1)
    chunk = max(1, _CHUNK_ELEMS // int(per_roi))
    outs = [
        _roi_align_chunk(flat, rois[i:i + chunk], H, W, (oh, ow), spatial_scale, sampling_ratio, aligned)
        for i in range(0, K, chunk)
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    return out.contiguous().to(input.dtype)


def roi_align_multilevel_reference(
    features: Sequence[Tensor],
    rois: Tensor,
    spatial_scales: Sequence[float],
    levels: Tensor,
    output_size: int | tuple[int, int],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Multi-level ROI Align (``MultiScaleRoIAlign``'s pooling step once levels are assigned).

    ROI ``k`` is pooled from ``features[levels[k]]`` with ``spatial_scales[levels[k]]``; a ROI whose level is out of
    range gets zeros (torchvision's result buffer starts at zero and no level writes it).

    Args:
        features: ``L`` maps ``[N, C, H_l, W_l]`` of one dtype.
        rois: ``[K, 5]`` (batch index, x1, y1, x2, y2) in image coordinates.
        spatial_scales: ``L`` floats, ``1 / stride`` of each level.
        levels: ``[K]`` integer level of each ROI.
    Returns:
        ``[K, C, oh, ow]`` in the features' dtype.
    """
    oh, ow = _pair(output_size)
    if len(features) != len(spatial_scales):
        raise ValueError(f"{len(features)} feature maps but {len(spatial_scales)} scales")
    C = features[0].shape[1]
    K = rois.shape[0]
    dtype = features[0].dtype
    out = features[0].new_zeros(K, C, oh, ow)
    levels = levels.to(rois.device)
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(levels == lvl).flatten()
        res = roi_align_reference(feat, rois[idx], (oh, ow), scale, sampling_ratio, aligned)
        out = out.index_put((idx,), res.to(dtype))  # out of place: keeps every level in the autograd graph
    return out
