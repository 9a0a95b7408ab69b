"""Fused Swin window attention (relative position bias + shifted-window mask), forward and backward.

``window_attention(q, k, v, bias=None, mask=None, scale=None)``: ``softmax(q·kᵀ·scale + bias + mask[b mod nW])·v``
for ``q, k, v: [B_, H, N, D]``, ``bias: [H, N, N]``, ``mask: [nW, N, N]``. See :mod:`.kernel` for the design and
:mod:`.reference` for the semantics. Registered as kernel ``"window_attention"``; the model switch sets
``attn_fn`` on every module whose ``hot_path == "window_attention"`` (Swin's ``ShiftedWindowAttention``).

Shape dicts (``KernelSpec.shapes`` / ``test_shapes``) have keys ``B_`` (windows × batch), ``H``, ``N``, ``D``,
``nW`` (mask windows; 0 = no mask), and optionally ``bias`` (default True), ``bias_dtype`` (e.g. ``"float32"``
for an fp32 bias with half-precision q), ``packed`` (q, k, v as strided views of one ``[B_, N, 3, H, D]`` qkv
tensor, as Swin produces them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import KernelInputs, KernelSpec, register_kernel
from .op import FusedWindowAttention, window_attention, window_attention_triton
from .ops import window_attention_backward_op, window_attention_op
from .reference import combined_bias, relative_position_index, swin_shift_mask, window_attention_reference

__all__ = [
    "FusedWindowAttention",
    "window_attention_op",
    "window_attention_backward_op",
    "window_attention",
    "window_attention_reference",
    "window_attention_triton",
    "make_inputs",
    "patch_model",
    "SPEC",
]


def _bias_dtype(shape: Mapping[str, Any], dtype: torch.dtype) -> torch.dtype:
    name = shape.get("bias_dtype")
    return getattr(torch, name) if name else dtype


def make_inputs(shape: Mapping[str, Any], dtype: torch.dtype, device: torch.device | str, seed: int) -> KernelInputs:
    """Seeded inputs ``(q, k, v, bias, mask)`` for a shape dict (see the module docstring).

    The bias is gathered from a random ``[(2w-1)², H]`` table with Swin's relative position index when N = w² (a
    non-contiguous ``[H, N, N]`` view, as the gather + permute produces), else random; the mask is Swin's
    shifted-window mask (fp32, 0 / -100) for a ``1 × nW`` grid of windows when N = w², else random 0 / -100.
    """
    B_, H, N, D, nW = (int(shape[k]) for k in ("B_", "H", "N", "D", "nW"))
    g = torch.Generator().manual_seed(seed)
    if shape.get("packed", False):
        qkv = torch.randn(B_, N, 3, H, D, generator=g).permute(2, 0, 3, 1, 4).to(device=device, dtype=dtype)
        q, k, v = qkv.unbind(0)
    else:
        q, k, v = (torch.randn(B_, H, N, D, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    w = math.isqrt(N)
    bias = mask = None
    if shape.get("bias", True):
        if w * w == N:
            table = torch.randn((2 * w - 1) ** 2, H, generator=g)
            bias = table[relative_position_index(w).flatten()].view(N, N, H).permute(2, 0, 1)
        else:
            bias = torch.randn(H, N, N, generator=g)
        bias = bias.to(device=device, dtype=_bias_dtype(shape, dtype))
    if nW > 0:
        if w * w == N and w > 1:
            mask = swin_shift_mask(1, nW, w, w // 2)
        else:
            mask = torch.where(torch.rand(nW, N, N, generator=g) < 0.3, -100.0, 0.0)
        mask = mask.to(device)  # fp32, as Swin builds it
    grad_args = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
    return KernelInputs(args=(q, k, v, bias, mask), grad_args=grad_args)


def flops(shape: Mapping[str, Any]) -> int:
    """Forward FLOPs of the two products, 4·B_·H·N²·D (multiply-add = 2), as torch's FLOP counter counts SDPA.
    Not counted: the ~5 elementwise ops per score (scale, +bias, +mask, exp, normalise) and the row max/sum, i.e.
    about 5/(4·D) more (4% at D = 32)."""
    return 4 * int(shape["B_"]) * int(shape["H"]) * int(shape["N"]) ** 2 * int(shape["D"])


def _side_bytes(shape: Mapping[str, Any], dtype: torch.dtype) -> tuple[int, int]:
    H, N, nW = int(shape["H"]), int(shape["N"]), int(shape["nW"])
    bias_b = H * N * N * _bias_dtype(shape, dtype).itemsize if shape.get("bias", True) else 0
    mask_b = nW * N * N * 4 if nW > 0 else 0  # fp32 mask
    return bias_b, mask_b


def min_bytes(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    """q, k, v read and out written once (4·B_·H·N·D elements) + bias [H, N, N] + mask [nW, N, N] read once."""
    act = int(shape["B_"]) * int(shape["H"]) * int(shape["N"]) * int(shape["D"]) * dtype.itemsize
    bias_b, mask_b = _side_bytes(shape, dtype)
    return 4 * act + bias_b + mask_b


def min_bytes_backward(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    """q, k, v, dO read and dq, dk, dv written once (7·B_·H·N·D elements; P is recomputed, out is not read),
    + bias and mask read once + the bias gradient written once."""
    act = int(shape["B_"]) * int(shape["H"]) * int(shape["N"]) * int(shape["D"]) * dtype.itemsize
    bias_b, mask_b = _side_bytes(shape, dtype)
    return 7 * act + 2 * bias_b + mask_b


# --- peers ---------------------------------------------------------------------------------------------------------


def sdpa_peer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with bias + mask combined into one additive ``attn_mask`` in q's dtype,
    expanded to ``[B_, H, N, N]`` when there is a mask (``[1, H, N, N]`` without). This is what users do (timm's
    ``WindowAttention.fused_attn`` path); the expansion costs a B_·H·N² write + read, part of what the fused
    kernel saves. The mask must be in q's dtype for SDPA's efficient backend."""
    B_, H, N, _ = q.shape
    attn_mask = combined_bias(bias, mask, B_, H, N, q.dtype, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


_FLEX: list[Any] = []


def flex_peer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """FlexAttention (compiled) with a ``score_mod`` that gathers ``bias[h, i, j] + mask[b % nW, i, j]``: nothing
    is expanded, but Flex tiles 49-token windows into 128-token blocks. CUDA only."""
    if q.device.type != "cuda":
        raise NotImplementedError(f"the FlexAttention peer runs only on CUDA (got {q.device}): its CPU path is "
                                  "a slow compiled fallback, not a peer worth timing")
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:  # torch < 2.5
        raise NotImplementedError(f"torch.nn.attention.flex_attention is unavailable: {e}") from e
    if not _FLEX:
        _FLEX.append(torch.compile(flex_attention, dynamic=False))
    nW = mask.shape[0] if mask is not None else 1

    def score_mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor,
                  kj: torch.Tensor) -> torch.Tensor:
        if bias is not None:
            score = score + bias[h, qi, kj]
        if mask is not None:
            score = score + mask[b % nW, qi, kj]
        return score

    return _FLEX[0](q, k, v, score_mod=score_mod, scale=scale)


# --- model switch --------------------------------------------------------------------------------------------------


def patch_model(model: nn.Module) -> int:
    """Set ``m.attn_fn = window_attention`` on every module with ``hot_path == "window_attention"``; returns the
    number of modules switched."""
    count = 0
    for m in model.modules():
        if getattr(m, "hot_path", None) == "window_attention":
            m.attn_fn = window_attention
            count += 1
    return count


# --- shapes --------------------------------------------------------------------------------------------------------


def _stage(B_: int, H: int, nW: int, **extra: Any) -> dict[str, Any]:
    return {"B_": B_, "H": H, "N": 49, "D": 32, "nW": nW, "packed": True, **extra}


# Swin-T at 224² and batch 64: stage s has (56 / 2^s / 7)² windows per image, 3·2^s heads, head dim 32. Stages 1-3
# alternate unshifted / shifted blocks; stage 4 is a single 7×7 window, where Swin turns the shift off.
SHAPES: dict[str, dict[str, Any]] = {
    "swin_t_stage1_b64": _stage(64 * 64, 3, 0),
    "swin_t_stage1_b64_shifted": _stage(64 * 64, 3, 64),
    "swin_t_stage2_b64": _stage(64 * 16, 6, 0),
    "swin_t_stage2_b64_shifted": _stage(64 * 16, 6, 16),
    "swin_t_stage3_b64": _stage(64 * 4, 12, 0),
    "swin_t_stage3_b64_shifted": _stage(64 * 4, 12, 4),
    "swin_t_stage4_b64": _stage(64, 24, 0),
}

# Interpreter-sized: the four stages with a few windows, and odd cases (no mask / no bias, N = 16, nW = 1 and 4,
# D = 16 and 64, a non-power-of-two D, an fp32 bias beside half-precision q, and N = 144 (window 12, which takes
# the tiled two-kernel backward).
TEST_SHAPES: dict[str, dict[str, Any]] = {
    "swin_t_stage1_tiny": _stage(8, 3, 4),
    "swin_t_stage2_tiny": _stage(4, 6, 4),
    "swin_t_stage3_tiny": _stage(4, 12, 4),
    "swin_t_stage4_tiny": _stage(1, 24, 0),  # stage 4 at batch 1: one 7x7 window, Swin-T's 24 heads
    "n49_d32_nomask": {"B_": 3, "H": 2, "N": 49, "D": 32, "nW": 0},
    "n49_d16_nobias": {"B_": 4, "H": 2, "N": 49, "D": 16, "nW": 2, "bias": False},
    "n49_d64_nobias_nomask": {"B_": 2, "H": 2, "N": 49, "D": 64, "nW": 0, "bias": False},
    "n16_nw1": {"B_": 3, "H": 2, "N": 16, "D": 16, "nW": 1},
    "n16_nw4_d64": {"B_": 8, "H": 2, "N": 16, "D": 64, "nW": 4},
    "n49_bias_fp32": _stage(4, 3, 2, bias_dtype="float32"),
    "n25_d24": {"B_": 4, "H": 2, "N": 25, "D": 24, "nW": 2, "packed": True},
    "n144_window12": {"B_": 2, "H": 1, "N": 144, "D": 32, "nW": 2},
}

SPEC = register_kernel(KernelSpec(
    name="window_attention",
    fn=window_attention,
    triton_fn=window_attention_triton,
    reference=window_attention_reference,
    make_inputs=make_inputs,
    shapes=SHAPES,
    test_shapes=TEST_SHAPES,
    flops=flops,
    min_bytes=min_bytes,
    min_bytes_backward=min_bytes_backward,
    peers={"sdpa": sdpa_peer, "flex_attention": flex_peer},
    patch_model=patch_model,
    dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
    description="Swin window attention with relative position bias and shift mask (fused fwd + bwd)",
))
