"""Real multi-process runs: masks identical on 2 DDP ranks (gloo), checkpoints in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from helpers import TinyNet
from sparse_lightning import MagnitudePruning, mask_digest


class PerturbOneRank(Callback):
    """Make rank 1's weights differ just before pruning, so only the broadcast can keep masks equal."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn_like(p))


class ReportDigest(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer, pl_module):
        digest = mask_digest(pl_module)
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, digest)
        assert len(set(gathered)) == 1, gathered  # asserted inside every worker
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"digest": digest, "pruned": int(sum((~m).sum() for m in pl_module.state_dict().values() if m.dtype == torch.bool))}, f)


def test_ddp_two_processes_end_with_identical_masks(make_trainer, tmp_path):
    trainer = make_trainer(
        devices=2, strategy="ddp_spawn", max_steps=12,
        callbacks=[PerturbOneRank(step=4), MagnitudePruning(0.75, at_step=4), ReportDigest(str(tmp_path))],
    )
    trainer.fit(TinyNet("sgd"))
    reports = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert reports[0]["digest"] == reports[1]["digest"]
    assert reports[0]["pruned"] > 0


RESUME = textwrap.dedent(
    """
    import json, sys, torch, pytorch_lightning as pl
    from sparse_lightning import (Classifier, CNN1d, MagnitudePruning, SyntheticDataModule, get_masks,
                                  mask_digest, attach_masks_from_state_dict)
    ckpt, max_steps = sys.argv[1], int(sys.argv[2])
    dm = SyntheticDataModule(input_shape=(1, 40), num_samples=512, batch_size=32)
    model = Classifier(CNN1d(input_shape=(1, 40), num_classes=10))
    # A fresh dense model takes the masks from the checkpoint directly ...
    plain = Classifier(CNN1d(input_shape=(1, 40), num_classes=10))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    attach_masks_from_state_dict(plain, state); plain.load_state_dict(state)
    # ... and training resumes from it with the masks held.
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[MagnitudePruning(0.8, at_step=3)])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    zero = all(bool(torch.all(dict(model.named_parameters())[n][~m] == 0)) for n, m in get_masks(model).items())
    print(json.dumps({"loaded": mask_digest(plain), "trained": mask_digest(model), "step": trainer.global_step,
                      "pruned_zero": zero}))
    """
)


def test_checkpoint_restores_masks_in_a_fresh_process(make_trainer, tmp_path):
    from sparse_lightning import CNN1d, Classifier, SyntheticDataModule

    dm = SyntheticDataModule(input_shape=(1, 40), num_samples=512, batch_size=32)
    model = Classifier(CNN1d(input_shape=(1, 40), num_classes=10))
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = make_trainer(max_steps=10, enable_checkpointing=True, callbacks=[MagnitudePruning(0.8, at_step=3), ckpt])
    trainer.fit(model, datamodule=dm)
    digest = mask_digest(model)
    out = subprocess.run(
        [sys.executable, "-c", RESUME, str(tmp_path / "last.ckpt"), "25"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"loaded": digest, "trained": digest, "step": 25, "pruned_zero": True}


@pytest.mark.slow
def test_fsdp2_two_cpu_ranks_global_pruning_over_sharded_parameters(tmp_path):
    """FSDP1 refuses CPU in Lightning 2.6; FSDP2 (fully_shard) runs on gloo: masks equal, pruned entries zero."""
    script = os.path.join(os.path.dirname(__file__), "scripts", "fsdp2_masks.py")
    out = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["digest"] == reports[1]["digest"]
    for r in reports:
        assert r["sharded"] and r["pruned_zero"] and r["pruned"] == round(0.8 * r["total"])
