"""DeepLabV3+ (Chen et al. 2018) on a ResNet-50 with output stride 16.

``[B, 3, H, W]`` -> logits ``[B, num_classes, H, W]``:

1. ResNet-50 (``models/resnet.py``) with the last stage dilated (rate 2) instead of strided: high-level features
   ``[B, 2048, H/16, W/16]``; the ``layer1`` output ``[B, 256, H/4, W/4]`` is the low-level feature;
2. ASPP on the high-level features: 1x1 conv, three 3x3 convs with dilation 6/12/18, and image pooling (global
   average -> 1x1 conv -> broadcast back), concatenated (5 x 256) and projected to 256 (+ dropout 0.5);
3. decoder: ASPP output upsampled x4 (bilinear) to the low-level size, concatenated with the low-level features
   projected to 48 channels, two 3x3 convs of 256 (the paper's best decoder, sec. 4.1), a 1x1 classifier, and
   bilinear upsampling to the input size.

Convs are followed by BatchNorm and ReLU, except the image-pooling branch: its map is 1x1, so with batch 1 in
training BatchNorm would see one value per channel (undefined variance; PyTorch raises). It uses a biased conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .resnet import Bottleneck, ResNet
from .unet import segmentation_batch_fn, segmentation_loss, segmentation_outputs

__all__ = ["ASPP", "DeepLabV3Plus"]


def conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[B, cin, h, w] -> [B, cout, h, w]``."""

    def __init__(self, cin: int, cout: int = 256, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu((len(rates) + 2) * cout, cout, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))  # bilinear upsampling of 1x1 = broadcast
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ ResNet-50; see the module docstring.

    Args:
        num_classes: output classes (PASCAL VOC: 21).
        rates: ASPP dilation rates at output stride 16.
        low_level_channels: width of the projected low-level features (48 in the paper).
    """

    def __init__(self, num_classes: int = 21, rates: Sequence[int] = (6, 12, 18), low_level_channels: int = 48) -> None:
        super().__init__()
        self.backbone = ResNet(Bottleneck, (3, 4, 6, 3), num_classes=0,
                               replace_stride_with_dilation=(False, False, True))
        self.aspp = ASPP(2048, 256, rates)
        self.low_level = conv_bn_relu(256, low_level_channels, 1)
        self.decoder = nn.Sequential(conv_bn_relu(256 + low_level_channels, 256, 3),
                                     conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        b = self.backbone
        low = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))  # [B, 256, H/4, W/4]
        high = b.layer4(b.layer3(b.layer2(low)))  # [B, 2048, H/16, W/16]
        y = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.low_level(low)], dim=1))
        return F.interpolate(self.classifier(y), size=size, mode="bilinear", align_corners=False)


@register_model(family="deeplabv3plus", task="segmentation", input_shape=(3, 512, 512), num_classes=21,
                batch_fn=segmentation_batch_fn(21), loss_fn=segmentation_loss, outputs_fn=segmentation_outputs)
def deeplabv3plus_resnet50(**kwargs: Any) -> DeepLabV3Plus:
    """DeepLabV3+ ResNet-50, output stride 16 (40.4 M params)."""
    return DeepLabV3Plus(**kwargs)
