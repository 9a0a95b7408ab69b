"""Masked autoencoder (He et al. 2022) with a ViT encoder that encodes only the visible patches.

For images ``[B, 3, S, S]`` with ``L = (S/p)^2`` patches:

1. patch embedding + fixed 2-D sin-cos positions ``[B, L, D]``;
2. per-sample random masking: argsort of uniform noise shuffles the patches, the first
   ``L_keep = int(L (1 - mask_ratio))`` are kept (49 of 196 at 75%), ``mask [B, L]`` is 1 where a patch is removed;
3. encoder: class token + the ``L_keep`` visible tokens only -> ViT blocks -> LayerNorm ``[B, 1 + L_keep, D]``;
   the encoder's cost therefore drops ~4x at 75% masking (that is MAE's point);
4. decoder (8 blocks, 512-d, 16 heads): linear to 512, a shared learned mask token for each removed patch,
   unshuffle to the original order, fixed sin-cos positions, blocks, LayerNorm, linear to ``p*p*3`` pixels;
5. loss: mean squared error on the *masked* patches only, against per-patch normalised pixels
   (``(x - mean) / sqrt(var + 1e-6)`` per patch; the paper's ``norm_pix_loss``).

``mask_ratio=0.0`` keeps every patch in its original order (no shuffle): the encoder then costs the same as a plain
ViT on all ``L`` patches, the baseline for the token-dropping speed-up. With nothing masked the loss averages over
all patches, so the train step stays defined.

Encoder/decoder blocks are :class:`models.vit.Block` (pre-norm, batch-first SDPA attention, GELU MLP, LN eps 1e-6).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .registry import Batch, image_batch, register_model
from .vit import Block

__all__ = ["MaskedAutoencoder", "sincos_pos_embed_2d"]

_CONFIGS: dict[str, dict[str, int]] = {
    "mae_vit_b_16": {"patch_size": 16, "dim": 768, "depth": 12, "num_heads": 12},
    "mae_vit_l_16": {"patch_size": 16, "dim": 1024, "depth": 24, "num_heads": 16},
}


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int | None = None, cls_token: bool = True) -> torch.Tensor:
    """Fixed positions ``[1, (1 +) grid_h * grid_w, dim]``: half the channels encode the column, half the row.

    For a coordinate ``t`` and ``k < dim/4``: ``sin(t w_k)`` and ``cos(t w_k)`` with ``w_k = 10000^(-k / (dim/4))``.
    The class token's position is all zeros. Patches are row-major.
    """
    if dim % 4:
        raise ValueError(f"dim {dim} must be divisible by 4")
    grid_w = grid_h if grid_w is None else grid_w
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def embed(t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    pos = torch.cat([embed(cols), embed(rows)], dim=1)
    if cls_token:
        pos = torch.cat([torch.zeros(1, dim, dtype=pos.dtype), pos])
    return pos.float()[None]


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder; see the module docstring.

    Args:
        image_size, patch_size: default input side (positions are precomputed for it; other sides that are
            multiples of ``patch_size`` get their sin-cos positions computed on the fly) and patch side.
        dim, depth, num_heads: encoder width, blocks and heads (MLP 4x).
        decoder_dim, decoder_depth, decoder_heads: the lightweight decoder (512, 8, 16 in the paper).
        mask_ratio: fraction of patches removed per image (0.75); ``0.0`` encodes all patches.
        norm_pix_loss: normalise each target patch by its own mean and variance.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, dim: int = 768, depth: int = 12,
                 num_heads: int = 12, decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.image_size, self.patch_size, self.mask_ratio, self.norm_pix_loss = (image_size, patch_size, mask_ratio,
                                                                                 norm_pix_loss)
        grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, 4 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, grid))
        self.decoder_blocks = nn.Sequential(*(Block(decoder_dim, decoder_heads, 4 * decoder_dim)
                                              for _ in range(decoder_depth)))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE's recipe: patch projection as a linear layer (xavier), tokens N(0, 0.02), linears xavier, zero biases.
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _positions(self, table: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """``table`` if it was built for a ``gh x gw`` grid, else the sin-cos positions for that grid."""
        if gh == gw == self.image_size // self.patch_size:
            return table
        return sincos_pos_embed_2d(table.shape[-1], gh, gw).to(table.device)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, L, p*p*3]``, patches row-major, pixels (row, column, channel) inside a patch."""
        b, c, h, w = imgs.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image sides {h}x{w} must be multiples of the patch size {p}")
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random ``1 - mask_ratio`` of the tokens of each sample.

        Args:
            x: tokens ``[B, L, D]``.
            noise: ``[B, L]``; the tokens with the smallest noise are kept (random if ``None``).
        Returns:
            visible tokens ``[B, L_keep, D]``, ``mask [B, L]`` (1 = removed) and ``ids_restore [B, L]`` (the
            inverse permutation that puts ``[visible; removed]`` back in patch order).
        """
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        if keep == n:  # nothing to remove: no shuffle, so this is exactly a plain ViT on all patches
            ids = torch.arange(n, device=x.device).expand(b, n)
            return x, torch.zeros(b, n, device=x.device, dtype=x.dtype), ids
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        visible = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        return visible, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                        noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3, S, S]`` -> latent ``[B, 1 + L_keep, D]``, ``mask [B, L]``, ``ids_restore [B, L]``."""
        x = self.patch_embed(imgs)
        pos = self._positions(self.pos_embed, x.shape[-2], x.shape[-1]).to(x.dtype)
        x = x.flatten(2).transpose(1, 2) + pos[:, 1:]  # [B, L, D]
        x, mask, ids_restore = self.random_masking(x, self.mask_ratio if mask_ratio is None else mask_ratio, noise)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = self.blocks(torch.cat([cls, x], dim=1))  # the encoder sees the visible tokens only
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Latent ``[B, 1 + L_keep, D]`` -> predicted pixels ``[B, L, p*p*3]`` in patch order.

        ``grid``: patch rows and columns of the input (default: the square grid of ``image_size``).
        """
        x = self.decoder_embed(latent)
        b, n1, d = x.shape
        n = ids_restore.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(b, n + 1 - n1, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, d))  # unshuffle
        g = self.image_size // self.patch_size
        pos = self._positions(self.decoder_pos_embed, *(grid or (g, g)))
        x = torch.cat([x[:, :1], tokens], dim=1) + pos.to(x.dtype)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``sum_l mask_l mean_j (pred_lj - target_lj)^2 / sum_l mask_l`` (all patches if nothing is masked)."""
        target = self.patchify(imgs).float()
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # [B, L]
        mask = mask.float()
        masked = mask.sum()
        # a select, not an `if`: no host sync on the GPU
        return torch.where(masked > 0, (per_patch * mask).sum() / masked.clamp(min=1), per_patch.mean())

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, S, S]`` -> predicted pixels ``[B, L, p*p*3]`` and ``mask [B, L]`` (1 = masked)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, noise=noise)
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        return self.forward_decoder(latent, ids_restore, grid), mask


def _mae_batch(batch_size: int, input_shape: Any, generator: torch.Generator | None = None,
               patch_size: int = 16) -> Batch:
    """Images ``[B, 3, H, W]`` and the masking noise ``[B, L]`` (``L = (H/p)(W/p)``), both from the batch's seeded
    generator: the mask is part of the input, so a step is reproducible on every device and precision (the
    accuracy gate needs that); the cost is MAE's own (same keep ratio, one ``argsort`` of the noise per step)."""
    imgs = image_batch(batch_size, input_shape, generator)
    noise = torch.rand(batch_size, (input_shape[-2] // patch_size) * (input_shape[-1] // patch_size),
                       generator=generator)
    return Batch((imgs, noise), None)


def _mae_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    imgs = batch.inputs[0]
    pred, mask = model(*batch.inputs)
    return model.forward_loss(imgs, pred, mask)  # type: ignore[operator]


def _mae_outputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The accuracy gate's tensors: the reconstruction ``[B, L, p*p*3]`` and the loss, on the batch's seeded mask."""
    imgs = batch.inputs[0]
    pred, mask = model(*batch.inputs)
    return {"reconstruction": pred, "loss": model.forward_loss(imgs, pred, mask)}  # type: ignore[operator]


def build_mae(variant: str, **kwargs: Any) -> MaskedAutoencoder:
    return MaskedAutoencoder(**{**_CONFIGS[variant], **kwargs})


_REG = dict(family="mae", task="self-supervised", input_shape=(3, 224, 224), batch_fn=_mae_batch, loss_fn=_mae_loss,
            outputs_fn=_mae_outputs)


@register_model(**_REG)
def mae_vit_b_16(**kwargs: Any) -> MaskedAutoencoder:
    """MAE ViT-B/16, 75% masking, 8x512 decoder (111.7 M params)."""
    return build_mae("mae_vit_b_16", **kwargs)


@register_model(**_REG)
def mae_vit_l_16(**kwargs: Any) -> MaskedAutoencoder:
    """MAE ViT-L/16, 75% masking, 8x512 decoder (329.2 M params)."""
    return build_mae("mae_vit_l_16", **kwargs)
