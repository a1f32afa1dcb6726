"""Fully connected classifier: LeNet-300-100 by default (LeCun et al. 1998), for any input rank."""

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Multi-layer perceptron: flatten -> [Linear -> ReLU -> Dropout] per hidden size -> Linear.

    With the default ``hidden=(300, 100)`` this is LeNet-300-100 (LeCun et al., "Gradient-based
    learning applied to document recognition", 1998), the fully connected baseline of the pruning
    literature (Han et al. 2015). Every hidden layer has an ``nn.Dropout`` module, even at rate 0,
    so a method can change the rate later by setting ``.p`` on the modules in ``dropouts``.

    Args:
        input_shape: per-sample input shape without the batch dimension, any rank.
        num_classes: number of output logits.
        hidden: widths of the hidden layers, in order (empty for logistic regression).
        dropout: dropout rate after each hidden ReLU.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_features = 1
        for size in input_shape:
            in_features *= int(size)
        layers: list[nn.Module] = [nn.Flatten()]
        self.dropouts = nn.ModuleList()
        for width in hidden:
            drop = nn.Dropout(dropout)
            self.dropouts.append(drop)
            layers += [nn.Linear(in_features, int(width)), nn.ReLU(), drop]
            in_features = int(width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, hidden[-1])
        return self.classifier(h)  # (B, num_classes)
