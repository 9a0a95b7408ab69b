"""The design doc's BasicCNN: three conv-BN-ReLU-maxpool stages and a two-layer classifier, for 32x32 inputs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class BasicCNN(nn.Module):
    """``[B, 3, 32, 32] -> [B, num_classes]`` (CIFAR-size input; three 2x poolings leave 4x4x128 features)."""

    def __init__(self, num_classes: int = 10, in_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(32), nn.BatchNorm2d(64), nn.BatchNorm2d(128)
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(0.5)
        side = in_size // 8
        self.fc1 = nn.Linear(128 * side * side, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = self.pool(F.relu(self.bn3(self.conv3(x))))
        x = self.dropout(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


@register_model(family="basic_cnn", input_shape=(3, 32, 32), num_classes=10)
def basic_cnn(**kwargs: object) -> BasicCNN:
    """BasicCNN from the design doc (CIFAR-10 size)."""
    return BasicCNN(**kwargs)  # type: ignore[arg-type]
