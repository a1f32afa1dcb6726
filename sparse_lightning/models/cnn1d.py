"""Small 1-D convolutional classifier for signals such as MNIST-1D (Greydanus 2020)."""

from collections.abc import Sequence

import torch
from torch import nn

from sparse_lightning.errors import ConfigError


class CNN1d(nn.Module):
    """1-D CNN: ``num_layers`` x [Conv1d -> BatchNorm1d -> ReLU], global max pool, Linear.

    The first conv has stride 1, the others stride 2; all use ``kernel_size // 2`` padding. The
    global max pool over time makes the net translation invariant, which suits MNIST-1D (digits
    are shifted by up to 48 of 40 samples). The default (32 channels, 3 layers, ~11k
    parameters) reaches ~98.5% test accuracy on MNIST-1D (8000 training samples, 15 epochs of
    AdamW) and keeps ~98% at 80% global magnitude sparsity, in seconds on 2 CPU cores.

    Args:
        input_shape: ``(C, L)``: channels and signal length.
        num_classes: number of output logits.
        channels: output channels of every conv layer.
        num_layers: number of conv layers (>= 1).
        kernel_size: odd kernel size of every conv layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: int = 32,
        num_layers: int = 3,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(
                f"CNN1d expects 1-D signals with input_shape (C, L), got {tuple(input_shape)}"
            )
        if num_layers < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(
                f"CNN1d needs num_layers >= 1 and an odd kernel_size, "
                f"got num_layers={num_layers}, kernel_size={kernel_size}"
            )
        layers: list[nn.Module] = []
        in_channels = int(input_shape[0])
        for i in range(num_layers):
            layers += [
                nn.Conv1d(in_channels, channels, kernel_size, stride=1 if i == 0 else 2,
                          padding=kernel_size // 2, bias=False),  # bias is redundant before BN
                nn.BatchNorm1d(channels),
                nn.ReLU(),
            ]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, channels, L')
        h = h.amax(dim=-1)  # (B, channels)
        return self.classifier(h)  # (B, num_classes)
