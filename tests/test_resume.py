"""A run killed mid-schedule (SIGKILL) and resumed from last.ckpt ends with the masks of an uninterrupted run.

Three processes per method, all fresh: an uninterrupted run; a run that checkpoints at every epoch
end (6 optimizer steps) and is killed with SIGKILL once a checkpoint exists mid-schedule; and a run
resumed from that ``last.ckpt``. The data order depends only on the epoch (a seeded
``DistributedSampler`` that Lightning calls ``set_epoch`` on), as exact resumption needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, sys, time, torch, pytorch_lightning as pl
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint
    from sparse_lightning import mask_digest
    from sparse_lightning.callbacks import GradualPruning, IterativePruning

    method, out, max_steps, delay, ckpt = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    pl.seed_everything(7, verbose=False)

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, 3, padding=1)
            self.rnn = nn.GRU(8, 16, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):  # (B, 1, 12)
            h = torch.relu(self.conv(x)).transpose(1, 2)  # (B, 12, 8)
            return self.head(self.rnn(h)[0][:, -1])  # (B, 4)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=0.02)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)}

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(96, 1, 12, generator=g)
            data = TensorDataset(x, (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long())
            return DataLoader(data, batch_size=16, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=3))

    class Progress(Callback):  # the parent watches this file to decide when to kill
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with open(f"{out}/progress", "w") as f:
                f.write(str(trainer.global_step))
            time.sleep(delay)

    pruner = {
        "cubic": lambda: GradualPruning("cubic", {"conv": {"target": 0.5}, "recurrent": {"target": 0.8},
                                                  "linear": {"target": 0.7}}, start_step=2, end_step=40, every=3),
        "narang": lambda: GradualPruning("narang", {"recurrent": {"target": 0.9}, "linear": {"target": 0.8}},
                                         start_step=2, ramp_step=20, end_step=40, every=2),
        "iterative": lambda: IterativePruning({"conv": 0.4, "recurrent": 0.7, "linear": 0.7}, dense_steps=8,
                                              retrain_steps=7, rounds=2, regularization={"l2": 1e-3}, freeze=True),
    }[method]()
    checkpoint = ModelCheckpoint(dirpath=out, every_n_train_steps=6, save_last=True, save_top_k=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[pruner, Progress(), checkpoint])
    model = Net()
    trainer.fit(model, ckpt_path=ckpt or None)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(json.dumps({"digest": mask_digest(model), "step": trainer.global_step, "state": pruner.state_dict(),
                      "params": params.tolist()}))
    """
)
MAX_STEPS = 48
SCHEDULE_END = {"cubic": 40, "narang": 40, "iterative": 36}


def _start(method: str, out, delay: float = 0.0, ckpt: str = "") -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, method, str(out), str(MAX_STEPS), str(delay), ckpt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _step(progress) -> int:
    try:
        return int(progress.read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        return -1


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["cubic", "narang", "iterative"])
def test_killed_and_resumed_run_ends_with_the_uninterrupted_masks(method, tmp_path):
    reference = _start(method, tmp_path / "reference")
    victim = _start(method, tmp_path / "killed", delay=0.15)
    progress, last = tmp_path / "killed" / "progress", tmp_path / "killed" / "last.ckpt"
    deadline = time.time() + 240
    # kill two steps after the epoch-end checkpoint of step 18: mid-schedule, the save finished
    while not (last.exists() and _step(progress) >= 20):
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.time() < deadline, "the run to be killed made no progress"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < saved_step < SCHEDULE_END[method], saved_step  # killed mid-schedule

    resumed = _result(_start(method, tmp_path / "resumed", ckpt=str(last)))
    expected = _result(reference)
    assert resumed["step"] == expected["step"] == MAX_STEPS
    assert resumed["digest"] == expected["digest"]
    assert resumed["state"] == expected["state"]
    assert resumed["params"] == expected["params"]  # bit-identical weights, not only masks
