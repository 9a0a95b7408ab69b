"""Swin Transformer V1 (Liu et al., 2021): Swin-T/S/B, torchvision's numerics and parameter names.

``[B, 3, H, W] -> [B, num_classes]``. Patch partition (4x4 stride-4 conv + LayerNorm, channels-last from here on),
four stages of Swin blocks with patch merging between them (``[B, H, W, C] -> [B, H/2, W/2, 2C]``), a final
LayerNorm, global average pooling and a linear head. Block ``i`` of a stage:

    x = x + drop_path(W-MSA(LN1(x)))      # shifted windows (cyclic shift by window // 2) when i is odd
    x = x + drop_path(MLP(LN2(x)))

Window attention on ``[B, H, W, C]`` (as torchvision): zero-pad H, W to multiples of the window ``ws`` (padding
tokens are not masked), turn the shift off along an axis whose padded size is no larger than the window, roll by
``-shift``, partition into ``nW`` windows of ``N = ws^2`` tokens, attend inside each window with the relative
position bias and (when shifted) the region mask, then reverse. The attention core is
:func:`window_attention_eager` behind ``ShiftedWindowAttention.attn_fn`` so the window-attention Triton kernel can
switch it (``hot_path = "window_attention"``).

``window_policy="shrink"`` instead shrinks the window to the feature size when the feature map is smaller than
the window (the original paper's choice), gathering the bias from the centre of the same table. At the default
224x224 input both policies coincide (stage 4 is exactly one 7x7 window); only ``"pad"`` equals torchvision at
smaller inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MLP, StochasticDepth
from .registry import register_model

__all__ = [
    "PatchMerging",
    "ShiftedWindowAttention",
    "SwinBlock",
    "SwinTransformer",
    "relative_position_index",
    "shifted_window_mask",
    "swin_state_dict_from_torchvision",
    "window_attention_eager",
    "window_partition",
    "window_reverse",
]

MASK_FILL = -100.0  # the original code's mask value: exp(-100) ~ 4e-44 is negligible but not -inf

_CONFIGS: dict[str, dict[str, Any]] = {
    "swin_t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_s": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "swin_b": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}


def window_attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                           mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention inside windows: ``softmax((q * scale) k^T + bias + mask[b % nW]) v``.

    Args:
        q, k, v: ``[B*nW, heads, N, head_dim]``, windows of image ``b // nW`` are consecutive.
        bias: ``[heads, N, N]`` relative position bias (already gathered from the table).
        mask: ``[nW, N, N]`` additive mask (0 / -100, fp32 as built) applied to window ``b % nW``, or None.
        scale: ``head_dim ** -0.5``.

    Returns:
        ``[B*nW, heads, N, head_dim]``.
    """
    bw, heads, n, _ = q.shape
    attn = (q * scale) @ k.transpose(-2, -1)  # scale q first, as the reference implementations do
    attn = attn + bias
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(bw // nw, nw, heads, n, n) + mask.to(attn.dtype).unsqueeze(1)).view(bw, heads, n, n)
    return attn.softmax(dim=-1) @ v


def relative_position_index(window: Sequence[int], table_window: Sequence[int] | None = None) -> torch.Tensor:
    """Index into the bias table for every token pair of a window: ``[N * N]`` int64, ``N = wh * ww``.

    For tokens ``i, j`` at ``(y, x)`` coordinates, ``idx = (y_i - y_j + th - 1) * (2 tw - 1) + (x_i - x_j + tw - 1)``
    where ``(th, tw)`` is the window the table was built for (``[(2 th - 1)(2 tw - 1), heads]``; defaults to
    ``window``). A smaller ``window`` reads the centre of the table.
    """
    wh, ww = window
    th, tw = table_window if table_window is not None else window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N], (i - j)
    return ((rel[0] + th - 1) * (2 * tw - 1) + rel[1] + tw - 1).flatten()


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``[B, H, W, C] -> [B * nW, wh * ww, C]``, windows in row-major order; H, W multiples of the window."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, wh * ww, C] -> [B, H, W, C]``."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(height: int, width: int, window: Sequence[int], shift: Sequence[int],
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Additive mask of the shifted windows, ``[nW, N, N]`` fp32 (0 = same region, -100 = different regions).

    Built in the shifted frame of a ``height x width`` map (already padded to window multiples): along each axis,
    positions ``[0, L - ws)``, ``[L - ws, L - s)`` and ``[L - s, L)`` are regions 0, 1, 2 (the last is the strip the
    cyclic shift wrapped around); two tokens of a window may attend to each other only if both regions agree.
    """
    wh, ww = window
    sh, sw = shift

    def regions(length: int, win: int, s: int) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - win).long() + (pos >= length - s).long() if s > 0 else (pos >= length - win).long()

    region = regions(height, wh, sh)[:, None] * 3 + regions(width, ww, sw)[None, :]  # [H, W]
    region = window_partition(region[None, :, :, None], window).squeeze(-1)  # [nW, N]
    different = region[:, :, None] != region[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill_(different, MASK_FILL)


_MASK_CACHE: dict[tuple[Any, ...], torch.Tensor] = {}


def _cached_mask(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
                 device: torch.device) -> torch.Tensor:
    """:func:`shifted_window_mask`, memoised per (shape, device); never cache traced/fake/meta tensors."""
    key = (height, width, window, shift, device)
    mask = _MASK_CACHE.get(key)
    if mask is None:
        # A normal tensor even under inference_mode, so autograd Functions may save it for backward later.
        with torch.inference_mode(False):
            mask = shifted_window_mask(height, width, window, shift, device)
        if type(mask) is torch.Tensor and device.type != "meta" and not torch.compiler.is_compiling():
            _MASK_CACHE[key] = mask
    return mask


class ShiftedWindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with relative position bias, ``[B, H, W, C] -> [B, H, W, C]``.

    Kernel contract: ``forward`` calls ``self.attn_fn(q, k, v, bias, mask, scale)`` (default
    :func:`window_attention_eager`); the window-attention kernel's switch replaces ``attn_fn`` on every module whose
    ``hot_path == "window_attention"``.

    ``dropout`` applies to the output projection; there is no dropout on the attention probabilities (the kernel
    contract has none; torchvision's Swin builders leave it at 0).

    Attributes:
        relative_position_bias_table: ``[(2 wh - 1)(2 ww - 1), heads]`` parameter.
        relative_position_index: ``[N * N]`` int64 buffer (see :func:`relative_position_index`).
    """

    hot_path = "window_attention"

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int] = (7, 7),
                 shift_size: Sequence[int] = (0, 0), dropout: float = 0.0, window_policy: str = "pad") -> None:
        super().__init__()
        if window_policy not in ("pad", "shrink"):
            raise ValueError(f"window_policy must be 'pad' or 'shrink', got {window_policy!r}")
        self.dim, self.num_heads = dim, num_heads
        self.window_size = (int(window_size[0]), int(window_size[1]))
        self.shift_size = (int(shift_size[0]), int(shift_size[1]))
        self.dropout, self.window_policy = dropout, window_policy
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.attn_fn: Callable[..., torch.Tensor] = window_attention_eager

    def relative_position_bias(self, window: tuple[int, int] | None = None) -> torch.Tensor:
        """Bias of a ``window`` (default: the full one) gathered from the table: ``[heads, N, N]``."""
        window = window or self.window_size
        if window == self.window_size:
            idx = self.relative_position_index
        else:
            idx = relative_position_index(window, self.window_size).to(self.relative_position_bias_table.device)
        n = window[0] * window[1]
        return self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        wh, ww = self.window_size
        if self.window_policy == "shrink":
            wh, ww = min(wh, h), min(ww, w)
        pad_b, pad_r = (-h) % wh, (-w) % ww
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        # No shift along an axis that a single window covers: there is nothing to connect across windows.
        shift = (self.shift_size[0] if wh < hp else 0, self.shift_size[1] if ww < wp else 0)
        shifted = shift[0] > 0 or shift[1] > 0
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, (wh, ww))  # [B*nW, N, C]
        bw, n, _ = windows.shape
        qkv = self.qkv(windows).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B*nW, heads, N, hd]
        mask = _cached_mask(hp, wp, (wh, ww), shift, x.device) if shifted else None
        o = self.attn_fn(q, k, v, self.relative_position_bias((wh, ww)), mask, self.scale)
        o = F.dropout(self.proj(o.transpose(1, 2).reshape(bw, n, c)), self.dropout, self.training)
        x = window_reverse(o, (wh, ww), hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :h, :w, :].contiguous()
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, window={self.window_size}, shift={self.shift_size}"


class SwinBlock(nn.Module):
    """Swin block ``[B, H, W, C] -> [B, H, W, C]`` (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shift_size: Sequence[int],
                 mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0,
                 window_policy: str = "pad") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size, shift_size, dropout, window_policy)
        self.stochastic_depth = StochasticDepth(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """``[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]``: concat each 2x2 neighbourhood, LayerNorm(4C), Linear.

    Odd sizes are zero-padded at the bottom/right; the concat order is (0,0), (1,0), (0,1), (1,1) as (row, col).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3:-1]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]],
                      dim=-1)
        return self.reduction(self.norm(x))


class ChannelsLast(nn.Module):
    """``[B, C, H, W] -> [B, H, W, C]`` (a view)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class SwinTransformer(nn.Module):
    """Swin classifier ``[B, 3, H, W] -> [B, num_classes]``.

    Args:
        embed_dim: channels of stage 1 (stage ``s`` has ``embed_dim * 2^s``).
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: attention window (7).
        patch_size: patch partition stride (4).
        mlp_ratio: MLP hidden width over the block width.
        dropout: dropout after the attention projection and in the MLP.
        stochastic_depth_prob: drop-path probability of the last block; block ``i`` of ``n`` uses
            ``p * i / (n - 1)`` (torchvision's schedule). 0 (default) disables it, as benchmarks want.
        num_classes: head width.
        window_policy: ``"pad"`` (torchvision) or ``"shrink"`` for feature maps smaller than the window.
    """

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int = 7,
                 patch_size: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.0, num_classes: int = 1000, window_policy: str = "pad") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, embed_dim, patch_size, stride=patch_size),
                                                 ChannelsLast(), nn.LayerNorm(embed_dim))]
        total, block_id = sum(depths), 0
        window = (window_size, window_size)
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**stage
            blocks = []
            for i in range(depth):
                shift = (0, 0) if i % 2 == 0 else (window_size // 2, window_size // 2)
                p = stochastic_depth_prob * block_id / max(total - 1, 1)
                blocks.append(SwinBlock(dim, heads, window, shift, mlp_ratio, dropout, p, window_policy))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, H/32, W/32, C_last]`` (channels-last, before the final norm)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Average pooling (not .mean) so fvcore counts it as for torchvision's twin.
        return self.head(F.adaptive_avg_pool2d(self.norm(self.features(x)).permute(0, 3, 1, 2), 1).flatten(1))


def swin_state_dict_from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision Swin V1 state dict to ours: the identity (module names are torchvision's)."""
    return dict(state_dict)


def build_swin(variant: str, **kwargs: Any) -> SwinTransformer:
    return SwinTransformer(**{**_CONFIGS[variant], **kwargs})


_COMMON: dict[str, Any] = {"family": "swin", "input_shape": (3, 224, 224), "hot_paths": ("window_attention",),
                           "from_torchvision": swin_state_dict_from_torchvision}


@register_model(torchvision="swin_t", **_COMMON)
def swin_t(**kwargs: Any) -> SwinTransformer:
    """Swin-T (28.3 M params)."""
    return build_swin("swin_t", **kwargs)


@register_model(torchvision="swin_s", **_COMMON)
def swin_s(**kwargs: Any) -> SwinTransformer:
    """Swin-S (49.6 M params)."""
    return build_swin("swin_s", **kwargs)


@register_model(torchvision="swin_b", **_COMMON)
def swin_b(**kwargs: Any) -> SwinTransformer:
    """Swin-B (87.8 M params)."""
    return build_swin("swin_b", **kwargs)
