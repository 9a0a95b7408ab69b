"""Operators ``visionbench::roi_align[_backward]`` and ``visionbench::roi_align_multilevel[_backward]``.

* ``roi_align(input, rois, output_size[2], spatial_scale, sampling_ratio, aligned) -> out``: ``input [N, C, H, W]``
  (NCHW or channels_last memory), ``rois [K, 5]``; ``out [K, C, OH, OW]`` contiguous, input's dtype.
* ``roi_align_backward(grad, rois, input_shape[4], channels_last, dtype, output_size, spatial_scale,
  sampling_ratio, aligned) -> grad_input``: ``[N, C, H, W]`` in ``dtype``, channels_last memory if
  ``channels_last``.
* ``roi_align_multilevel(features[L], rois, levels, spatial_scales[L], output_size, sampling_ratio, aligned)``
  and its backward ``-> grads[L]`` (each like its map, in the maps' dtype and layout).

The single-level ops are ``triton_op`` s (Inductor sees the kernels on CUDA). The multi-level ops are opaque
``custom_op`` s: one launch reads every level through element offsets between the maps' ``data_ptr`` s, which only
real tensors have. Host work is shape-only and the small level tables are cached by value
(:func:`.kernel._device_tables`), so after a first call nothing is copied host->device: capture-safe on CUDA.

The backward accumulates with atomics (non-deterministic in the last bits on the GPU). Like torchvision's CUDA
kernel it calls PyTorch's deterministic-algorithms alert there: under ``torch.use_deterministic_algorithms(True)``
it raises (or warns with ``warn_only=True``). The CPU interpreter runs programs one by one and does not alert.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ops import NAMESPACE, triton_op
from .._triton import dispatch_path
from .kernel import LevelTable, _device_tables, roi_align_backward, roi_align_forward, single_input
from .reference import roi_align_multilevel_reference, roi_align_reference

__all__ = ["roi_align_op", "roi_align_backward_op", "roi_align_multilevel_op", "roi_align_multilevel_backward_op"]


def alert_if_nondeterministic(device: torch.device, name: str) -> None:
    """PyTorch's deterministic-algorithms alert for an atomics backward on ``device`` (the compiled-Triton path)."""
    if dispatch_path(device) == "triton":
        # torch's Python twin of at::globalContext().alertNotDeterministic (torchvision's CUDA backward calls that).
        from torch._prims_common import alert_not_deterministic

        alert_not_deterministic(name)


def _fmt(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _is_cl(x: Tensor) -> bool:
    """The layout :func:`.kernel.single_input` reads ``x`` in (NCHW unless channels_last-contiguous only)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _ref_grads(features: list[Tensor], fwd, grad: Tensor) -> list[Tensor]:  # noqa: ANN001
    leaves = [f.detach().requires_grad_(True) for f in features]
    with torch.enable_grad():
        out = fwd(leaves)
        grads = torch.autograd.grad(out, leaves, grad.to(out.dtype), allow_unused=True)
    return [torch.zeros_like(f) if g is None else g.contiguous(memory_format=_fmt(_is_cl(f)))
            for f, g in zip(features, grads)]


# --- single level -------------------------------------------------------------------------------------------------


@triton_op("roi_align")
def roi_align_op(input: Tensor, rois: Tensor, output_size: list[int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool) -> Tensor:
    if dispatch_path(input.device) == "reference":
        return roi_align_reference(input, rois, tuple(output_size), spatial_scale, sampling_ratio,
                                   aligned).contiguous()
    x, _ = single_input(input)
    return roi_align_forward(x, rois, tuple(output_size), spatial_scale, sampling_ratio, aligned)


@roi_align_op.register_fake
def _(input: Tensor, rois: Tensor, output_size: list[int], spatial_scale: float, sampling_ratio: int,
      aligned: bool) -> Tensor:
    torch._check(input.dim() == 4 and rois.dim() == 2 and rois.shape[1] == 5, lambda: "input [N,C,H,W], rois [K,5]")
    return input.new_empty((rois.shape[0], input.shape[1], output_size[0], output_size[1]))


@triton_op("roi_align_backward")
def roi_align_backward_op(grad: Tensor, rois: Tensor, input_shape: list[int], channels_last: bool,
                          dtype: torch.dtype, output_size: list[int], spatial_scale: float, sampling_ratio: int,
                          aligned: bool) -> Tensor:
    if dispatch_path(grad.device) == "reference":
        x = grad.new_zeros(input_shape, dtype=dtype).contiguous(memory_format=_fmt(channels_last))
        (g,) = _ref_grads([x], lambda f: roi_align_reference(f[0], rois, tuple(output_size), spatial_scale,
                                                             sampling_ratio, aligned), grad)
        return g
    alert_if_nondeterministic(grad.device, f"{NAMESPACE}::roi_align_backward")
    (g,) = roi_align_backward(grad, rois, [torch.Size(input_shape)], channels_last, dtype, tuple(output_size),
                              spatial_scale, sampling_ratio, aligned)
    return g


@roi_align_backward_op.register_fake
def _(grad: Tensor, rois: Tensor, input_shape: list[int], channels_last: bool, dtype: torch.dtype,
      output_size: list[int], spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    return torch.empty(input_shape, dtype=dtype, device=grad.device, memory_format=_fmt(channels_last))


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's callback signature
    input, rois, output_size, spatial_scale, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (list(input.shape), _is_cl(input), input.dtype, output_size, spatial_scale, sampling_ratio, aligned)


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    (rois,) = ctx.saved_tensors
    return roi_align_backward_op(grad, rois, *ctx.args), None, None, None, None, None


roi_align_op.register_autograd(_backward, setup_context=_setup_context)


# --- multi level (FPN) --------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::roi_align_multilevel", mutates_args=())
def roi_align_multilevel_op(features: list[Tensor], rois: Tensor, levels: Tensor, spatial_scales: list[float],
                            output_size: list[int], sampling_ratio: int, aligned: bool) -> Tensor:
    if dispatch_path(features[0].device) == "reference":
        return roi_align_multilevel_reference(features, rois, spatial_scales, levels, tuple(output_size),
                                              sampling_ratio, aligned).contiguous()
    table = LevelTable(list(features), list(spatial_scales))
    return roi_align_forward(table, rois, tuple(output_size), 1.0, sampling_ratio, aligned, levels=levels)


@roi_align_multilevel_op.register_fake
def _(features: list[Tensor], rois: Tensor, levels: Tensor, spatial_scales: list[float], output_size: list[int],
      sampling_ratio: int, aligned: bool) -> Tensor:
    f0 = features[0]
    return f0.new_empty((rois.shape[0], f0.shape[1], output_size[0], output_size[1]))


def _level_layout(features: list[Tensor]) -> bool:
    """The layout :class:`.kernel.LevelTable` reads all levels in."""
    return all(f.is_contiguous(memory_format=torch.channels_last) for f in features) and not all(
        f.is_contiguous() for f in features)


@torch.library.custom_op(f"{NAMESPACE}::roi_align_multilevel_backward", mutates_args=())
def roi_align_multilevel_backward_op(grad: Tensor, rois: Tensor, levels: Tensor, spatial_scales: list[float],
                                     shapes: list[int], channels_last: bool, dtype: torch.dtype,
                                     output_size: list[int], sampling_ratio: int, aligned: bool) -> list[Tensor]:
    sizes = [torch.Size(shapes[i:i + 4]) for i in range(0, len(shapes), 4)]
    if dispatch_path(grad.device) == "reference":
        maps = [grad.new_zeros(s, dtype=dtype).contiguous(memory_format=_fmt(channels_last)) for s in sizes]
        return _ref_grads(maps, lambda f: roi_align_multilevel_reference(f, rois, spatial_scales, levels,
                                                                         tuple(output_size), sampling_ratio,
                                                                         aligned), grad)
    alert_if_nondeterministic(grad.device, f"{NAMESPACE}::roi_align_multilevel_backward")
    grads = roi_align_backward(grad, rois, sizes, channels_last, dtype, tuple(output_size), 1.0, sampling_ratio,
                               aligned, levels=levels, scales=_scales_table(grad.device, spatial_scales))
    return grads


def _scales_table(device: torch.device, spatial_scales: list[float]) -> Tensor:
    return _device_tables(device, (), (), tuple(float(s) for s in spatial_scales))[1]


@roi_align_multilevel_backward_op.register_fake
def _(grad: Tensor, rois: Tensor, levels: Tensor, spatial_scales: list[float], shapes: list[int],
      channels_last: bool, dtype: torch.dtype, output_size: list[int], sampling_ratio: int,
      aligned: bool) -> list[Tensor]:
    return [torch.empty(shapes[i:i + 4], dtype=dtype, device=grad.device, memory_format=_fmt(channels_last))
            for i in range(0, len(shapes), 4)]


def _ml_setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    features, rois, levels, spatial_scales, output_size, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.args = (list(spatial_scales), [int(d) for f in features for d in f.shape], _level_layout(features),
                features[0].dtype, output_size, sampling_ratio, aligned)


def _ml_backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    rois, levels = ctx.saved_tensors
    grads = roi_align_multilevel_backward_op(grad, rois, levels, *ctx.args)
    return list(grads), None, None, None, None, None, None


roi_align_multilevel_op.register_autograd(_ml_backward, setup_context=_ml_setup_context)
