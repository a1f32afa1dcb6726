"""STR under a real 2-process DDP (``ddp_spawn``, gloo, CPU): the same thresholds, sparsity, ranks and masks on both ranks.

The run uses the plain strategy (``find_unused_parameters=False``) through the fine-tuning phase,
where the thresholds leave the graph: the callback wraps the model in a fresh DDP at the mask fix.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from helpers import TinyNet
from sparse_lightning import mask_digest
from sparse_lightning.callbacks.str import STR
from sparse_lightning.reparam import lowrank_counts, thresholds

FIX_STEP, STEPS = 10, 16


class GatherState(Callback):
    """Inside every worker: all-gather the STR state each step and assert it is the same on both ranks."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.phases: list[str] = []

    def _same_on_all_ranks(self, trainer, value):
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, value)
        assert all(g == gathered[0] for g in gathered), gathered
        return value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        callback = next(c for c in trainer.callbacks if isinstance(c, STR))
        self.phases.append(callback.phase)
        self._same_on_all_ranks(trainer, (thresholds(pl_module), lowrank_counts(pl_module), mask_digest(pl_module)))

    def on_fit_end(self, trainer, pl_module):
        callback = next(c for c in trainer.callbacks if isinstance(c, STR))
        masks = {n: b for n, b in pl_module.named_buffers() if n.endswith("_mask")}
        kept, numel = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
        report = {"digest": mask_digest(pl_module), "sparsity": 1 - kept / numel, "ranks": callback.ranks,
                  "fixed_at_step": callback.fixed_at_step, "phases": self.phases,
                  "weights": {n: float(p.detach().double().sum()) for n, p in pl_module.named_parameters()}}
        self._same_on_all_ranks(trainer, report)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(report, f)


@pytest.mark.slow
def test_str_ddp_spawn_ranks_agree_through_the_finetune_phase(make_trainer, tmp_path):
    callback = STR(s_init=-3.0, target=0.6, finetune_steps=STEPS - FIX_STEP, lowrank=["rnn.weight_hh_l0"], target_rank=0.5)
    trainer = make_trainer(devices=2, strategy="ddp_spawn", max_steps=STEPS, callbacks=[callback, GatherState(str(tmp_path))])
    trainer.fit(TinyNet("sgd"))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1]
    report = reports[0]
    assert report["fixed_at_step"] == FIX_STEP
    assert report["phases"].count("finetune") == STEPS - FIX_STEP  # the masked fine-tuning ran under plain DDP
    assert report["sparsity"] == pytest.approx(0.6, abs=0.01)  # calibrated to the target at the fix
    assert report["ranks"] == {"rnn.weight_hh_l0": 8}  # half of the 16 directions
