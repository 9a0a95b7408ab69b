"""Pure-PyTorch Swin window attention: the eager provider, the CPU fallback and the test oracle.

    out[b, h] = softmax(q[b, h] · k[b, h]ᵀ · scale + bias[h] + mask[b mod nW]) · v[b, h]

with ``q, k, v: [B_, H, N, D]`` (``B_`` = batch × windows, ``N`` tokens per window), ``bias: [H, N, N]`` (the
gathered relative position bias) and ``mask: [nW, N, N]`` (additive, 0 / -100 as Swin builds it). The window index
is ``b mod nW`` because Swin lays windows out as ``[batch, nW]`` and flattens them into ``B_``.

Also here: :func:`swin_shift_mask` (Swin's shifted-window mask, used to make realistic inputs) and
:func:`relative_position_index` (the gather index of the relative position bias table).
"""

from __future__ import annotations

import torch

__all__ = ["window_attention_reference", "swin_shift_mask", "relative_position_index", "combined_bias"]


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                               mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Eager Swin window attention, written as Swin's ``WindowAttention.forward`` computes it.

    Args:
        q, k, v: ``[B_, H, N, D]`` (as Swin's eager attention, ``k`` and ``v`` may also be ``[B_, H, M, D]`` and
            ``v``'s head size may differ from ``q``'s).
        bias: ``[H, N, N]`` (or anything that broadcasts against the ``[B_, H, N, M]`` scores) or None; may be in
            a different float dtype than ``q`` (e.g. an fp32 parameter with bf16 activations under autocast):
            PyTorch's type promotion then runs the softmax in the wider dtype.
        mask: ``[nW, N, N]`` additive or None; window ``b`` gets ``mask[b % nW]``. ``B_`` must be a multiple of nW.
        scale: defaults to ``D ** -0.5``.

    Returns:
        ``[B_, H, N, D]`` in ``v``'s dtype. Works in float64 and is differentiable by autograd.
    """
    B_, H, N, D = q.shape
    scale = D**-0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # [B_, H, N, M]; Swin scales q before the product
    if bias is not None:
        attn = attn + bias  # plain broadcasting, as Swin's eager attention: [H, N, M], [1, H, N, M], [B_, H, N, M]
    if mask is not None:
        nW = mask.shape[0]
        if B_ % nW:
            raise ValueError(f"B_={B_} windows is not a multiple of the mask's nW={nW}")
        attn = (attn.reshape(B_ // nW, nW, H, N, -1) + mask.unsqueeze(1)).view(B_, H, N, -1)
    attn = attn.softmax(dim=-1)
    return attn.to(v.dtype) @ v


def combined_bias(bias: torch.Tensor | None, mask: torch.Tensor | None, B_: int, H: int, N: int,
                  dtype: torch.dtype, device: torch.device | str) -> torch.Tensor | None:
    """``bias + mask`` as an SDPA ``attn_mask`` in ``dtype``, the way timm's ``fused_attn`` path builds it.

    Bias only: ``[1, H, N, N]`` (broadcast, nothing materialised). With a mask the window index ``b mod nW`` cannot
    be a broadcast of ``[B_, ...]``, so ``[B_/nW, nW, H, N, N]`` is materialised as ``[B_, H, N, N]``: B_·H·N²
    elements written here and read again by SDPA, which is part of what the fused kernel saves.
    """
    if bias is None and mask is None:
        return None
    out = bias.to(dtype).unsqueeze(0) if bias is not None else torch.zeros(1, H, N, N, dtype=dtype, device=device)
    if mask is None:
        return out
    nW = mask.shape[0]
    out = out.view(1, 1, H, N, N) + mask.to(dtype).view(1, nW, 1, N, N)
    return out.expand(B_ // nW, nW, H, N, N).reshape(B_, H, N, N)


def relative_position_index(window: int) -> torch.Tensor:
    """``[N, N]`` index into Swin's ``[(2W-1)², H]`` bias table: ``(dy + W - 1)·(2W - 1) + (dx + W - 1)`` with
    ``(dy, dx) = coord_i - coord_j`` for tokens ``i, j`` of a ``W × W`` window in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N], shifted to start at 0
    return rel[0] * (2 * window - 1) + rel[1]


def swin_shift_mask(grid_h: int, grid_w: int, window: int, shift: int, neg: float = -100.0) -> torch.Tensor:
    """Swin's shifted-window attention mask ``[nW, N, N]`` (fp32) for a ``grid_h × grid_w`` grid of windows.

    After the cyclic shift by ``shift`` tokens, each axis splits into regions ``[0, -window)``,
    ``[-window, -shift)``, ``[-shift, end)``; a query/key pair from different regions gets ``neg`` (Swin uses -100,
    not -inf), pairs in the same region get 0. Windows are numbered row-major, so ``nW = grid_h · grid_w``.
    """
    H, W = grid_h * window, grid_w * window
    region = torch.zeros(H, W)
    cut_h = (slice(0, H - window), slice(H - window, H - shift), slice(H - shift, H))
    cut_w = (slice(0, W - window), slice(W - window, W - shift), slice(W - shift, W))
    cnt = 0
    for sh in cut_h:
        for sw in cut_w:
            region[sh, sw] = cnt
            cnt += 1
    # [grid_h, window, grid_w, window] -> [nW, N]
    win = region.view(grid_h, window, grid_w, window).permute(0, 2, 1, 3).reshape(grid_h * grid_w, window * window)
    diff = win[:, :, None] != win[:, None, :]
    return torch.where(diff, torch.tensor(neg), torch.tensor(0.0))
