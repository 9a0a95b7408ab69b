"""Vision Transformer (Dosovitskiy et al., 2021): ViT-S/16, ViT-B/16, ViT-L/16.

``[B, 3, S, S] -> [B, num_classes]``: a ``p x p`` stride-``p`` conv embeds ``N = (S/p)^2`` patches, a learned class
token is prepended and learned positions ``[1, N + 1, D]`` added; ``depth`` pre-norm blocks

    x = x + proj(MHSA(LN1(x)))        # batch-first, F.scaled_dot_product_attention, no cross-image mixing
    x = x + fc2(GELU(fc1(LN2(x))))

and a final LayerNorm (eps 1e-6 as torchvision) on the class token feed the linear head.

Parameter layout: fused ``attn.qkv`` (``[3D, D]``, rows ``[q; k; v]``, heads contiguous inside each) equals
``nn.MultiheadAttention.in_proj_weight``, so :func:`vit_state_dict_from_torchvision` maps torchvision's state dict
by renames only. ViT-S/16 has no torchvision builder, but torchvision's generic ``VisionTransformer`` class with the
same config is its twin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MLP
from .registry import register_model

__all__ = ["Attention", "Block", "VisionTransformer", "vit_state_dict_from_torchvision"]

# patch, depth, dim, heads, mlp hidden
_CONFIGS: dict[str, dict[str, int]] = {
    "vit_s_16": {"patch_size": 16, "depth": 12, "dim": 384, "num_heads": 6, "mlp_dim": 1536},
    "vit_b_16": {"patch_size": 16, "depth": 12, "dim": 768, "num_heads": 12, "mlp_dim": 3072},
    "vit_l_16": {"patch_size": 16, "depth": 24, "dim": 1024, "num_heads": 16, "mlp_dim": 4096},
}


class Attention(nn.Module):
    """Batch-first multi-head self-attention ``[B, N, D] -> [B, N, D]``.

    ``q, k, v = split(x Wqkv^T + b)`` into ``[B, H, N, D/H]``; ``o = softmax(q k^T / sqrt(D/H)) v`` through
    ``F.scaled_dot_product_attention`` (each image attends only to its own tokens); ``y = o Wproj^T + b``.
    """

    def __init__(self, dim: int, num_heads: int, attention_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd] each
        dropout = self.attention_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm encoder block ``[B, N, D] -> [B, N, D]`` (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attention_dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier ``[B, 3, image_size, image_size] -> [B, num_classes]``.

    Args:
        image_size: input side; fixes the number of learned positions ``(image_size / patch_size)^2 + 1``.
        patch_size, depth, dim, num_heads, mlp_dim: architecture (see ``_CONFIGS``).
        dropout: dropout after the position embedding, the attention projection and in the MLP.
        attention_dropout: dropout on the attention probabilities (training only).
        num_classes: head width.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, depth: int = 12, dim: int = 768,
                 num_heads: int = 12, mlp_dim: int = 3072, dropout: float = 0.0, attention_dropout: float = 0.0,
                 num_classes: int = 1000) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.dim = image_size, patch_size, dim
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_patches + 1, dim).normal_(std=0.02))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_dim, dropout, attention_dropout)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        # torchvision's initialisation (the head starts at zero, as in the paper's fine-tuning recipe).
        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.patch_embed.bias)
        for blk in self.blocks:
            assert isinstance(blk, Block)
            nn.init.xavier_uniform_(blk.attn.qkv.weight)  # nn.MultiheadAttention's in_proj init
            nn.init.zeros_(blk.attn.qkv.bias)
            nn.init.zeros_(blk.attn.proj.bias)
            for m in blk.mlp.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.normal_(m.bias, std=1e-6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, N + 1, D]`` tokens after the last block (before the final norm)."""
        b, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {h}x{w}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        return self.blocks(self.pos_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm is per token, so normalising only the class token equals torchvision's norm-then-select.
        return self.head(self.norm(self.forward_features(x)[:, 0]))


_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.(weight|bias)$", r"patch_embed.\1"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.([03])\.", r"blocks.\1.mlp.\2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
)


def vit_state_dict_from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision ``VisionTransformer`` state dict (plain conv stem, no ``pre_logits``) to ours.

    Renames only, tensors are shared:

    ============================================================  ===============================
    torchvision                                                   ours
    ============================================================  ===============================
    ``class_token``                                               ``cls_token``
    ``conv_proj.*``                                               ``patch_embed.*``
    ``encoder.pos_embedding``                                     ``pos_embed``
    ``encoder.layers.encoder_layer_{i}.ln_1/ln_2.*``              ``blocks.{i}.norm1/norm2.*``
    ``encoder.layers.encoder_layer_{i}.self_attention.in_proj_*`` ``blocks.{i}.attn.qkv.*``
    ``encoder.layers.encoder_layer_{i}.self_attention.out_proj.*`` ``blocks.{i}.attn.proj.*``
    ``encoder.layers.encoder_layer_{i}.mlp.{0,3}.*``              ``blocks.{i}.mlp.{0,3}.*``
    ``encoder.ln.*``                                              ``norm.*``
    ``heads.head.*``                                              ``head.*``
    ============================================================  ===============================

    Raises:
        KeyError: for a key with no counterpart (e.g. ``heads.pre_logits`` or a conv stem).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"torchvision ViT key {key!r} has no counterpart in our ViT")
    return out


def build_vit(variant: str, **kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**{**_CONFIGS[variant], **kwargs})


_COMMON: dict[str, Any] = {"family": "vit", "input_shape": (3, 224, 224),
                           "from_torchvision": vit_state_dict_from_torchvision}


@register_model(torchvision=None, **_COMMON)
def vit_s_16(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (22.1 M params; no torchvision builder, DeiT-S/timm's config)."""
    return build_vit("vit_s_16", **kwargs)


@register_model(torchvision="vit_b_16", **_COMMON)
def vit_b_16(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (86.6 M params)."""
    return build_vit("vit_b_16", **kwargs)


@register_model(torchvision="vit_l_16", **_COMMON)
def vit_l_16(**kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (304.3 M params)."""
    return build_vit("vit_l_16", **kwargs)
