"""Sparsity bookkeeping: per-layer and global counts of nonzero weights (1 - nnz/numel)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_lightning.masks import get_parameter


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    nnz: int
    numel: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.numel if self.numel else 0.0


@torch.no_grad()
def layer_sparsity(model: nn.Module, names: list[str]) -> list[LayerSparsity]:
    """Counts of nonzero entries of the named parameters, as they are now."""
    rows = []
    for name in names:
        p = get_parameter(model, name)
        rows.append(LayerSparsity(name, tuple(p.shape), int(torch.count_nonzero(p)), p.numel()))
    return rows


def global_sparsity(rows: list[LayerSparsity]) -> float:
    """1 - sum(nnz) / sum(numel) over the given layers."""
    numel = sum(r.numel for r in rows)
    return 1.0 - sum(r.nnz for r in rows) / numel if numel else 0.0
