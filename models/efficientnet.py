"""EfficientNet-B0..B3 (Tan & Le, 2019), torchvision's layout and parameter names.

Variants are data: every variant scales the B0 stage table (``_B0_STAGES``) by a width multiplier (channels,
rounded to a multiple of 8 as in the TF reference) and a depth multiplier (``ceil(repeats * depth)``), and is run
at the crop size of torchvision's ImageNet weights. Module names equal torchvision's, so
``efficientnet_state_dict_from_torchvision`` is the identity and ``load_state_dict`` works directly.

Block (MBConv, stride ``s``, expand ``e``, kernel ``k``), ``[B, cin, H, W] -> [B, cout, H/s, W/s]``::

    x -> [1x1 expand to e*cin, BN, SiLU]  (absent when e == 1)
      -> kxk depthwise conv (groups = e*cin), BN, SiLU
      -> squeeze-excitation: x * sigmoid(W2 silu(W1 avgpool(x))), squeeze width max(1, cin // 4)
      -> 1x1 project to cout, BN
      -> + x (only when s == 1 and cin == cout; the branch goes through stochastic depth first)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .layers import ConvBNAct, StochasticDepth
from .registry import register_model

__all__ = ["EfficientNet", "MBConv", "SqueezeExcitation", "efficientnet_state_dict_from_torchvision"]

# (expand_ratio, kernel, stride, in_channels, out_channels, repeats) per stage of EfficientNet-B0.
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# width / depth multipliers and classifier dropout as torchvision's builders; resolution = the eval crop of
# torchvision's ImageNet weights (the paper's B2 resolution is 260, torchvision's B2 weights are evaluated at 288).
_VARIANTS: dict[str, dict[str, float | int]] = {
    "efficientnet_b0": {"width": 1.0, "depth": 1.0, "resolution": 224, "dropout": 0.2},
    "efficientnet_b1": {"width": 1.0, "depth": 1.1, "resolution": 240, "dropout": 0.2},
    "efficientnet_b2": {"width": 1.1, "depth": 1.2, "resolution": 288, "dropout": 0.3},
    "efficientnet_b3": {"width": 1.2, "depth": 1.4, "resolution": 300, "dropout": 0.3},
}


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcitation(nn.Module):
    """Channel gating ``[B, C, H, W] -> [B, C, H, W]``: ``x * sigmoid(fc2(silu(fc1(mean_hw(x)))))``.

    ``fc1``/``fc2`` are 1x1 convs with bias (``C -> squeeze -> C``).
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (see the module docstring for the dataflow).

    Args:
        cin, cout: input / output channels.
        expand: expansion ratio of the hidden width (``make_divisible(cin * expand)``).
        kernel: depthwise kernel size (3 or 5), symmetric padding ``(kernel - 1) // 2``.
        stride: depthwise stride (1 or 2).
        drop_path: stochastic depth probability of the residual branch (train mode only).
    """

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_path: float = 0.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and cin == cout
        hidden = make_divisible(cin * expand)
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvBNAct(cin, hidden, 1))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden))  # depthwise
        # The squeeze width is relative to the block's *input* channels (integer division), not the expanded ones.
        layers.append(SqueezeExcitation(hidden, max(1, cin // 4)))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_path)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out)
            out += x
        return out


class EfficientNet(nn.Module):
    """EfficientNet ``[B, 3, H, W] -> [B, num_classes]`` (feature stride 32).

    ``features`` = stem (3x3 s2 conv, BN, SiLU) + 7 MBConv stages + head (1x1 conv to ``4 * c_last``, BN, SiLU);
    then global average pooling, dropout and a linear classifier.

    Args:
        width: channel multiplier over B0.
        depth: repeats multiplier over B0 (``ceil(repeats * depth)`` per stage).
        dropout: classifier dropout.
        stochastic_depth_prob: drop probability of the last block; block ``i`` of ``n`` uses ``p * i / n``
            (torchvision's schedule). 0 (default) disables it, as benchmarks want.
        num_classes: classifier width.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.0, num_classes: int = 1000) -> None:
        super().__init__()
        stages = [
            (e, k, s, make_divisible(cin * width), make_divisible(cout * width), int(math.ceil(n * depth)))
            for e, k, s, cin, cout, n in _B0_STAGES
        ]
        total_blocks = sum(st[-1] for st in stages)
        layers: list[nn.Module] = [ConvBNAct(3, stages[0][3], 3, stride=2)]
        block_id = 0
        for expand, kernel, stride, cin, cout, repeats in stages:
            blocks = []
            for i in range(repeats):
                p = stochastic_depth_prob * block_id / total_blocks
                blocks.append(MBConv(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1, p))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        c_last = stages[-1][4]
        self.num_features = 4 * c_last
        layers.append(ConvBNAct(c_last, self.num_features, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(self.num_features, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 4 * c_last, H/32, W/32]``."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_state_dict_from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision EfficientNet-B* state dict to ours: the identity (module names are torchvision's)."""
    return dict(state_dict)


def build_efficientnet(variant: str, **kwargs: Any) -> EfficientNet:
    cfg = _VARIANTS[variant]
    kwargs.setdefault("dropout", cfg["dropout"])
    return EfficientNet(width=float(cfg["width"]), depth=float(cfg["depth"]), **kwargs)


def _shape(variant: str) -> tuple[int, int, int]:
    r = int(_VARIANTS[variant]["resolution"])
    return (3, r, r)


_COMMON: dict[str, Any] = {"family": "efficientnet", "hot_paths": ("depthwise_conv",),
                           "from_torchvision": efficientnet_state_dict_from_torchvision}


@register_model(input_shape=_shape("efficientnet_b0"), torchvision="efficientnet_b0", **_COMMON)
def efficientnet_b0(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B0 (5.3 M params, 224x224)."""
    return build_efficientnet("efficientnet_b0", **kwargs)


@register_model(input_shape=_shape("efficientnet_b1"), torchvision="efficientnet_b1", **_COMMON)
def efficientnet_b1(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B1 (7.8 M params, 240x240)."""
    return build_efficientnet("efficientnet_b1", **kwargs)


@register_model(input_shape=_shape("efficientnet_b2"), torchvision="efficientnet_b2", **_COMMON)
def efficientnet_b2(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B2 (9.1 M params, 288x288 as torchvision's weights)."""
    return build_efficientnet("efficientnet_b2", **kwargs)


@register_model(input_shape=_shape("efficientnet_b3"), torchvision="efficientnet_b3", **_COMMON)
def efficientnet_b3(**kwargs: Any) -> EfficientNet:
    """EfficientNet-B3 (12.2 M params, 300x300)."""
    return build_efficientnet("efficientnet_b3", **kwargs)
