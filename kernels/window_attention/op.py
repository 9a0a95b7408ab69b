"""Public API of the window-attention kernel: the dispatching function (over the ``visionbench::window_attention``
operator, :mod:`.ops`) and a module.

    >>> out = window_attention(q, k, v, bias, mask)   # [B_, H, N, D] -> [B_, H, N, D]

On CUDA (and on the CPU under ``TRITON_INTERPRET=1``) it runs the fused Triton kernels of :mod:`.kernel`;
otherwise, or for windows the kernel does not cover (N > 256 or D > 128), the PyTorch reference.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._triton import HAS_TRITON, dispatch_path
from .kernel import MAX_D, MAX_N
from .ops import window_attention_op
from .reference import window_attention_reference

__all__ = ["window_attention", "window_attention_triton", "FusedWindowAttention"]


def _resolve_scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                            mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """The Triton path only (``KernelSpec.triton_fn``); raises ``RuntimeError`` where it cannot run."""
    if dispatch_path(q.device) == "reference":
        why = ("Triton is not installed" if not HAS_TRITON else
               "CPU tensors need TRITON_INTERPRET=1 set before triton is imported" if q.device.type == "cpu" else
               f"Triton cannot run on {q.device} in this process")
        raise RuntimeError(f"window_attention Triton path unavailable: {why}")
    return window_attention_op(q, k, v, bias, mask, _resolve_scale(q, scale))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Swin window attention ``softmax(q·kᵀ·scale + bias + mask[b mod nW])·v``.

    Args:
        q, k, v: ``[B_, H, N, D]`` (B_ = batch × windows; any strides, e.g. views of a packed qkv tensor).
        bias: ``[H, N, N]`` relative position bias, or None; any float dtype (scores are computed in fp32).
        mask: ``[nW, N, N]`` additive mask (Swin: 0 / -100, fp32), applied to window ``b % nW``; or None.
        scale: defaults to ``D ** -0.5``.

    Returns:
        ``[B_, H, N, D]`` in q's dtype. On the Triton path it is a permuted view of a ``[B_, N, H, D]`` buffer,
        so ``out.transpose(1, 2).reshape(B_, N, H * D)`` costs no copy.

    Dispatch: :func:`kernels._triton.dispatch_path` of q's device; shapes beyond the kernel's range
    (N > 256, D > 128) take the reference.
    """
    if dispatch_path(q.device) == "reference" or q.shape[-2] > MAX_N or q.shape[-1] > MAX_D:
        return window_attention_reference(q, k, v, bias, mask, scale)
    return window_attention_op(q, k, v, bias, mask, _resolve_scale(q, scale))


class FusedWindowAttention(nn.Module):
    """Drop-in module for the attention core: ``forward(q, k, v, bias=None, mask=None, scale=None)`` calls
    :func:`window_attention` (Triton where it can run, the reference elsewhere)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        return window_attention(q, k, v, bias, mask, scale)
