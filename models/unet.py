"""U-Net (Ronneberger et al. 2015) with 'same' convolutions and BatchNorm, as the design doc's section 4.1 describes.

Encoder: double 3x3 conv (64) then four max-pool + double conv stages (128, 256, 512, 1024). Decoder: four
upsampling steps, each concatenating the skip connection and applying a double conv; 1x1 classifier.

Two variants (data, not classes):

* ``unet`` (``bilinear=True``): bilinear x2 upsampling (align_corners=True); the bottom and decoder widths are
  halved (``factor = 2``) so the concatenations stay at the same sizes. 13.4 M parameters.
* ``unet_transposed`` (``bilinear=False``): 2x2 stride-2 transposed convs halve the channels while upsampling.
  31.0 M parameters.

Odd sizes: max-pooling floors (e.g. 37 -> 18), so the upsampled map can be one pixel smaller than its skip; it is
zero-padded (split between both sides) to the skip's size, and the output is ``[B, num_classes, H, W]`` for any
``H, W >= 16``. Convs have no bias (BatchNorm follows); the design doc's sketch keeps a redundant conv bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Batch, forward_outputs, image_batch, register_model

__all__ = ["UNet", "segmentation_batch_fn", "segmentation_loss", "segmentation_outputs"]


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Down(nn.Sequential):
    """2x2 max-pool (floors odd sizes) then a double conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """Upsample ``x`` x2, pad it to the skip's size, concatenate ``[skip, x]`` and apply a double conv.

    ``cin`` is the concatenated width. Bilinear: the upsampled map keeps its channels (``cin // 2``, the same as the
    skip). Transposed: the 2x2 transposed conv maps ``cin`` to ``cin // 2`` channels.
    """

    def __init__(self, cin: int, cout: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """``[B, in_channels, H, W] -> [B, num_classes, H, W]`` logits.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        bilinear: bilinear upsampling (``unet``) instead of transposed convs (``unet_transposed``).
        base: width of the first stage (64 in the paper); stage ``i`` has ``base * 2^i`` channels.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 21, bilinear: bool = True, base: int = 64) -> None:
        super().__init__()
        factor = 2 if bilinear else 1
        c = [base * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, c[0])
        self.down1, self.down2, self.down3 = Down(c[0], c[1]), Down(c[1], c[2]), Down(c[2], c[3])
        self.down4 = Down(c[3], c[4] // factor)
        self.up1 = Up(c[4], c[3] // factor, bilinear)
        self.up2 = Up(c[3], c[2] // factor, bilinear)
        self.up3 = Up(c[2], c[1] // factor, bilinear)
        self.up4 = Up(c[1], c[0], bilinear)
        self.outc = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.down4(x4)
        x = self.up4(self.up3(self.up2(self.up1(x, x4), x3), x2), x1)
        return self.outc(x)


# --- registry glue (shared with deeplabv3plus.py) -------------------------------------------------------------------


def segmentation_batch_fn(num_classes: int) -> Callable[[int, Sequence[int], torch.Generator | None], Batch]:
    """``batch_fn`` for segmentation: images ``[B, C, H, W]``, integer masks ``[B, H, W]`` in ``[0, num_classes)``."""

    def batch_fn(batch_size: int, input_shape: Sequence[int], generator: torch.Generator | None = None) -> Batch:
        x = image_batch(batch_size, input_shape, generator)
        y = torch.randint(0, num_classes, (batch_size, *input_shape[-2:]), generator=generator)
        return Batch((x,), y)

    return batch_fn


def segmentation_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-pixel cross-entropy of ``[B, K, H, W]`` logits against ``[B, H, W]`` masks."""
    return F.cross_entropy(model(*batch.inputs).float(), batch.target)


# the accuracy gate compares the dense head: per-pixel class logits [B, K, H, W]
segmentation_outputs = forward_outputs("dense_logits")

_REG = dict(family="unet", task="segmentation", input_shape=(3, 512, 512), num_classes=21,
            batch_fn=segmentation_batch_fn(21), loss_fn=segmentation_loss, outputs_fn=segmentation_outputs)


@register_model(**_REG)
def unet(**kwargs: Any) -> UNet:
    """U-Net with bilinear upsampling (13.4 M params)."""
    return UNet(bilinear=True, **kwargs)


@register_model(**_REG)
def unet_transposed(**kwargs: Any) -> UNet:
    """U-Net with transposed-conv upsampling (31.0 M params)."""
    return UNet(bilinear=False, **kwargs)
