"""LeNet-5 (LeCun et al. 1998) for small images of any size from 4x4 up."""

from collections.abc import Sequence

import torch
from torch import nn

from sparse_lightning.errors import ConfigError


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120 -> fc 84 -> classes.

    LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 1998,
    with the usual modern substitutions (ReLU, 2x2 max pooling, a plain Linear output). The
    parameter shapes are the paper's for any input size: both convs pad by 2 (the paper pads
    28x28 MNIST to 32x32 instead) so 8x8 digits keep a non-empty map, and an adaptive average
    pool brings the last map to 5x5, so ``fc1`` is always 16*5*5 -> 120.

    Args:
        input_shape: ``(C, H, W)`` with H, W >= 4.
        num_classes: number of output logits.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"LeNet5 expects images with input_shape (C, H, W), got {tuple(input_shape)}"
            )
        channels, height, width = (int(s) for s in input_shape)
        if min(height, width) < 4:
            raise ConfigError(
                f"LeNet5 needs H, W >= 4 (two 2x2 poolings), got input_shape {tuple(input_shape)}"
            )
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.resize = nn.AdaptiveAvgPool2d((5, 5))
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.conv1(x)))  # (B, 6, H/2, W/2)
        h = self.pool(self.relu(self.conv2(h)))  # (B, 16, H/4, W/4)
        h = self.resize(h).flatten(1)  # (B, 400)
        h = self.relu(self.fc1(h))  # (B, 120)
        h = self.relu(self.fc2(h))  # (B, 84)
        return self.classifier(h)  # (B, num_classes)
