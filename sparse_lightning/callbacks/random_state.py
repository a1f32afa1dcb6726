"""``RandomState``: the random number generators in the checkpoint, so a resumed run draws what an
uninterrupted one would have drawn.

Lightning checkpoints the model, optimizers, schedulers, loops and callbacks, but not the RNGs. The
train loader's shuffle is seeded per epoch (``EpochShuffleSampler``), but dropout masks and
augmentations draw from the global generators, so without this callback a resumed run with
dropout (or CIFAR-10's crop and flip) diverges from the uninterrupted one after the resume point.

Saved: torch's CPU generator, every CUDA device's generator (when CUDA is initialized), Python's
``random`` and NumPy's global ``RandomState``, as tensors, ints and tuples only, so the checkpoint
still loads with ``weights_only=True``. Rank 0 writes the checkpoint, so under DDP every rank
resumes with rank 0's state; ranks seeded alike (``seed_everything``) draw alike anyway.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override


def capture_random_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


class RandomState(Callback):
    """Saves the global random number generators in every checkpoint and restores them on resume."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return capture_random_state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_random_state(state_dict)
