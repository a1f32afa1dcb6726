"""FSDP2 (torch fully_shard) via Lightning's ModelParallelStrategy on 2 CPU ranks (gloo): global magnitude
pruning over sharded parameters. Each rank writes OUT_DIR/rank<N>.json. Run by tests/test_distributed.py."""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from sparse_lightning import CNN1d, Classifier, MagnitudePruning, SyntheticDataModule, get_masks, mask_digest
from sparse_lightning.masks import get_parameter


class Sharded(Classifier):
    def configure_model(self):
        for layer in self.net.modules():
            if isinstance(layer, (torch.nn.Conv1d, torch.nn.Linear)):
                fully_shard(layer, mesh=self.device_mesh["data_parallel"])
        fully_shard(self, mesh=self.device_mesh["data_parallel"])


if __name__ == "__main__":
    dm = SyntheticDataModule(input_shape=(1, 40), num_samples=512, batch_size=32)
    model = Sharded(CNN1d(input_shape=(1, 40), num_classes=10))
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=12, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[MagnitudePruning(0.8, at_step=4)])
    trainer.fit(model, datamodule=dm)
    masks = get_masks(model)
    params = {n: get_parameter(model, n) for n in masks}
    report = Path(sys.argv[1]) / f"rank{trainer.global_rank}.json"  # one file per rank: no interleaved stdout
    report.write_text(json.dumps({
        "rank": trainer.global_rank,
        "digest": mask_digest(model),
        "sharded": all(isinstance(p, DTensor) for p in params.values()),
        "pruned": sum(int((~m).sum()) for m in masks.values()),
        "total": sum(m.numel() for m in masks.values()),
        "pruned_zero": all(bool((params[n].full_tensor()[~m] == 0).all()) for n, m in masks.items()),
    }))
