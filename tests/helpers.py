"""Small models and data for tests: any LightningModule, not only ours."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyNet(pl.LightningModule):
    """A plain user LightningModule (conv + GRU + linear), with its own optimizer choice."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.05) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)
        self.norm = nn.LayerNorm(16)
        self.optimizer_name, self.lr = optimizer, lr

    def forward(self, x):  # x: (B, 1, L)
        h = torch.relu(self.conv(x)).transpose(1, 2)  # (B, L, 8)
        out, _ = self.rnn(h)  # (B, L, 16)
        return self.head(self.norm(out[:, -1]))  # (B, 4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-3)
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-2)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 1, 12, generator=g)
        y = (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()
        return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


N_PER_BATCH = 20  # images per fake CIFAR-10 pickle


def write_fake_cifar10(root: Path, seed: int = 0) -> Path:
    """Writes ``root/cifar-10-batches-py`` in the real pickle layout, N_PER_BATCH images per file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(),
                 b"labels": [int(v) for v in rng.integers(0, 10, N_PER_BATCH)],
                 b"data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(N_PER_BATCH)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder
