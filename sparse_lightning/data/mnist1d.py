"""MNIST-1D (Greydanus, 2020): 40-step 1-D signals of 10 digit templates, generated offline.

The data is generated with the ``mnist1d`` package (never downloaded) and cached as
``<data_dir>/mnist1d_n{num_samples}_seed{seed}.npz``. The cache is written atomically
(temporary file + ``os.replace``), so DDP ranks or parallel jobs that generate it at the
same time each produce a whole, identical file.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from typing_extensions import override

from sparse_lightning.data.tensor_datamodule import Arrays, TensorDataModule, check_int

log = logging.getLogger(__name__)

_KEYS = ("x", "y", "x_test", "y_test")


def default_data_dir() -> Path:
    """``$SPARSE_LIGHTNING_DATA``, else ``~/.cache/sparse_lightning``."""
    return Path(os.environ.get("SPARSE_LIGHTNING_DATA") or "~/.cache/sparse_lightning").expanduser()


def generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Generates MNIST-1D with the package's default args (80/20 train/test split).

    ``make_dataset`` reseeds the global ``random`` and ``numpy`` generators; their state is
    restored afterwards, since this may run on one rank only (``prepare_data``).
    """
    from mnist1d.data import get_dataset_args, make_dataset  # lazy: imports scipy (~1 s)

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}


def save_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes an .npz next to ``path`` under a unique name, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MNIST1DDataModule(TensorDataModule):
    """MNIST-1D, inputs ``(1, 40)``, 10 classes; standardized with train statistics.

    Args:
        num_samples: samples generated in all (80% train incl. val, 20% test), >= 100.
            ``mnist1d`` makes ``num_samples // 10`` per class.
        data_dir: cache directory; default ``$SPARSE_LIGHTNING_DATA`` or ``~/.cache/sparse_lightning``.
        batch_size, num_workers, seed, val_fraction: see ``TensorDataModule``; ``seed`` also
            seeds generation.
    """

    def __init__(self, num_samples: int = 10000, data_dir: str | None = None,
                 batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 val_fraction: float = 0.1) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction)
        self.save_hyperparameters()
        self.num_samples = check_int("num_samples", num_samples, 100)
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.input_shape = (1, 40)
        self.num_classes = 10

    @property
    def cache_path(self) -> Path:
        return self.data_dir / f"mnist1d_n{self.num_samples}_seed{self.seed}.npz"

    def _read_cache(self) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.cache_path, allow_pickle=False) as f:
                return {k: f[k] for k in _KEYS}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("Regenerating unreadable MNIST-1D cache %s (%s)", self.cache_path, err)
            return None

    def _generate_and_cache(self) -> dict[str, np.ndarray]:
        log.info("Generating MNIST-1D (%d samples, seed %d) into %s",
                 self.num_samples, self.seed, self.cache_path)
        arrays = generate_mnist1d(self.num_samples, self.seed)
        save_atomically(self.cache_path, arrays)
        return arrays

    @override
    def prepare_data(self) -> None:
        if self._read_cache() is None:
            self._generate_and_cache()

    @override
    def _load(self) -> Arrays:
        # setup() may run without prepare_data (plain scripts, a node-local data_dir); the
        # atomic write makes generating here safe even when several processes race.
        arrays = self._read_cache() or self._generate_and_cache()
        x, y, x_test, y_test = (torch.from_numpy(arrays[k]) for k in _KEYS)
        return x.unsqueeze(1), y, x_test.unsqueeze(1), y_test  # x: (N, 1, 40)
