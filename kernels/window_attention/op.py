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


def _kernel_bias(bias: torch.Tensor, q: torch.Tensor) -> torch.Tensor | None:
    """``bias`` as the kernel's ``[H, N, N]`` when it broadcasts to one bias shared by all windows, as Swin's eager
    ``attn + bias`` allows (``[1, H, N, N]``, ``[N, N]``, ``[H, 1, 1]``, ...): a stride-0 view, no copy; autograd
    sums the gradient back to ``bias``'s shape. None when it does not (e.g. a per-window ``[B_, H, N, N]`` bias)."""
    H, N = q.shape[1], q.shape[2]
    if tuple(bias.shape) == (H, N, N):
        return bias
    try:
        shared = bias.dim() <= 4 and torch.broadcast_shapes(bias.shape, (1, H, N, N)) == (1, H, N, N)
    except RuntimeError:  # not broadcastable at all
        return None
    return bias.expand(1, H, N, N)[0] if shared else None


def _kernel_covers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Shapes the Triton kernel computes: ``q, k, v`` one ``[B_, H, N, D]`` shape with N <= 256, D <= 128 (Swin's
    eager attention also takes ``k, v`` of another length or ``v`` of another head size: the reference does)."""
    return q.dim() == 4 and k.shape == q.shape == v.shape and q.shape[-2] <= MAX_N and q.shape[-1] <= MAX_D


def window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                            mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """The Triton path only (``KernelSpec.triton_fn``); raises ``RuntimeError`` where it cannot run."""
    if dispatch_path(q.device) == "reference":
        why = ("Triton is not installed" if not HAS_TRITON else
               "CPU tensors need TRITON_INTERPRET=1 set before triton is imported" if q.device.type == "cpu" else
               f"Triton cannot run on {q.device} in this process")
        raise RuntimeError(f"window_attention Triton path unavailable: {why}")
    if bias is not None and q.dim() == 4:
        shared = _kernel_bias(bias, q)
        bias = shared if shared is not None else bias  # else the kernel's check names the shape it needs
    return window_attention_op(q, k, v, bias, mask, _resolve_scale(q, scale))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Swin window attention ``softmax(q·kᵀ·scale + bias + mask[b mod nW])·v``.

    Args:
        q, k, v: ``[B_, H, N, D]`` (B_ = batch × windows; any strides, e.g. views of a packed qkv tensor).
        bias: ``[H, N, N]`` relative position bias, or None; any float dtype (scores are computed in fp32). Any
            shape that broadcasts against the ``[B_, H, N, N]`` scores, as in Swin's eager ``attn + bias``; one that
            is not shared by all windows (``[B_, H, N, N]``) runs on the reference.
        mask: ``[nW, N, N]`` additive mask (Swin: 0 / -100, fp32), applied to window ``b % nW``; or None.
        scale: defaults to ``D ** -0.5``.

    Returns:
        ``[B_, H, N, D]`` in q's dtype. On the Triton path it is a permuted view of a ``[B_, N, H, D]`` buffer,
        so ``out.transpose(1, 2).reshape(B_, N, H * D)`` costs no copy.

    Dispatch: :func:`kernels._triton.dispatch_path` of q's device; shapes beyond the kernel's range
    (N > 256, D > 128, k/v not of q's shape, a per-window bias) take the reference.
    """
    if dispatch_path(q.device) != "reference" and _kernel_covers(q, k, v):
        shared = _kernel_bias(bias, q) if bias is not None else None
        if bias is None or shared is not None:
            return window_attention_op(q, k, v, shared, mask, _resolve_scale(q, scale))
    return window_attention_reference(q, k, v, bias, mask, scale)


class FusedWindowAttention(nn.Module):
    """Drop-in module for the attention core: ``forward(q, k, v, bias=None, mask=None, scale=None)`` calls
    :func:`window_attention` (Triton where it can run, the reference elsewhere)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        return window_attention(q, k, v, bias, mask, scale)
