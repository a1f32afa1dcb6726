"""Recurrent classifier: a GRU reads the input as a sequence and a Linear reads its last state."""

from collections.abc import Sequence

import torch
from torch import nn

from sparse_lightning.errors import ConfigError


class GRUClassifier(nn.Module):
    """GRU sequence classifier (Cho et al. 2014), the RNN target of the pruning methods.

    A ``(C, L)`` signal is read as L steps of C features; a ``(C, H, W)`` image as H rows of
    ``C * W`` features. The logits come from a Linear on the top layer's last hidden state.
    The GRU is the attribute ``rnn`` (weights ``rnn.weight_ih_l0``, ``rnn.weight_hh_l0``, ...).

    Args:
        input_shape: ``(C, L)`` or ``(C, H, W)``.
        num_classes: number of output logits.
        hidden_size: GRU hidden state size.
        num_layers: stacked GRU layers.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_size: int = 128,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ConfigError(
                f"GRUClassifier expects input_shape (C, L) or (C, H, W), got {tuple(input_shape)}"
            )
        features = int(input_shape[0]) * (int(input_shape[2]) if len(input_shape) == 3 else 1)
        self.rnn = nn.GRU(features, hidden_size, num_layers=num_layers, batch_first=True)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, C, H, W)
            seq = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C*W)
        else:  # (B, C, L)
            seq = x.transpose(1, 2)  # (B, L, C)
        _, h_n = self.rnn(seq)  # (num_layers, B, hidden_size)
        return self.classifier(h_n[-1])  # (B, num_classes)
