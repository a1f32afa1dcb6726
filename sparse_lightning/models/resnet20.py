"""ResNet-20 for CIFAR-sized images (He et al. 2016), with option-A (parameter-free) shortcuts."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lightning.errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    When the block halves the resolution and doubles the channels, the shortcut is the paper's
    option A: subsample by 2 and zero-pad the new channels, which adds no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        if self.extra_channels:
            pad = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, pad, self.extra_channels - pad))  # (B, C_out, H/s, W/s)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        h = self.bn2(self.conv2(h))  # (B, C_out, H/s, W/s)
        return F.relu(h + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2.

    A 3x3 conv, then 3 stages of 3 basic blocks with ``width``, 2*``width``, 4*``width``
    channels (16/32/64 in the paper; stages 2 and 3 start with stride 2), global average pool and
    a Linear: 6n + 2 = 20 layers with n = 3, i.e. 19 convs and 1 Linear. Shortcuts are option A
    (identity, zero-padded where channels grow), as the paper uses on CIFAR: ~0.27M parameters.

    Args:
        input_shape: ``(C, H, W)``; any H, W >= 1 runs (8x8 digits end at 2x2 before pooling).
        num_classes: number of output logits.
        width: channels of the first stage.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"ResNet20 expects images with input_shape (C, H, W), got {tuple(input_shape)}"
            )
        if width < 2 or width % 2:
            raise ConfigError(f"ResNet20 width must be an even integer >= 2, got {width}")
        self.conv1 = nn.Conv2d(int(input_shape[0]), width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, stride=1)
        self.layer2 = self._stage(width, 2 * width, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2)
        self.classifier = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_channels, out_channels, stride),
            BasicBlock(out_channels, out_channels),
            BasicBlock(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        h = self.layer1(h)  # (B, width, H, W)
        h = self.layer2(h)  # (B, 2*width, H/2, W/2)
        h = self.layer3(h)  # (B, 4*width, H/4, W/4)
        h = h.mean(dim=(2, 3))  # (B, 4*width)
        return self.classifier(h)  # (B, num_classes)
