"""FLOP formulas for the ``visionbench::`` operators, so ``torch.utils.flop_counter.FlopCounterMode`` (and the
benchmark's FLOP column) counts a model with our kernels switched in exactly as the eager model it replaces.

* window attention: the two products, as PyTorch counts SDPA (``4·B_·H·N²·D`` forward; backward the four products
  of dq, dk, dv, dP: ``8·B_·H·N²·D``), i.e. what eager's ``q @ kᵀ`` and ``attn @ v`` matmuls count.
* depthwise conv: PyTorch's convolution formula (``2·N·C·Ho·Wo·kH·kW`` forward; the same again for each of dx and
  dw in the backward), what ``F.conv2d(groups=C)`` counts.
* ROI Align: none. torchvision's ``roi_align`` has no formula either (0 FLOPs), and with adaptive sampling the
  count depends on the boxes' values, which a shape-only formula cannot see.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["register"]

_DONE: list[bool] = []


def register() -> None:
    """Register the formulas once (idempotent; called when :mod:`kernels` is imported)."""
    if _DONE:
        return
    ops = torch.ops.visionbench

    @register_flop_formula(ops.window_attention)
    def _wa(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    @register_flop_formula(ops.window_attention_backward)
    def _wa_bwd(grad_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
        return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)

    @register_flop_formula(ops.depthwise_conv2d)
    def _dw(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)

    @register_flop_formula(ops.depthwise_conv2d_backward)
    def _dw_bwd(grad_shape: Any, x_shape: Any, w_shape: Any, stride: Any, padding: Any, dilation: Any,
                need_x: bool, need_weight: bool, has_bias: bool, out_shape: Any = None, **kwargs: Any) -> int:
        one = conv_flop_count(list(x_shape), list(w_shape), list(grad_shape), transposed=False)
        return one * (int(need_x) + int(need_weight))

    _DONE.append(True)
