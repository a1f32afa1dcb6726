"""The wheel ships conf/ and cuda_kernels/; the core imports no hydra, ray or cupy."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_core_import_pulls_no_hydra_ray_or_cupy():
    code = "import sys, sparse_lightning; print(sorted(m for m in ('hydra', 'ray', 'cupy', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_non_editable_wheel_finds_configs_and_kernels(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("sparse_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sparse_lightning/conf/train.yaml" in names
    assert "sparse_lightning/conf/model/cnn1d.yaml" in names
    cu = [n for n in names if n.startswith("sparse_lightning/cuda_kernels/") and n.endswith(".cu")]
    assert cu == sorted(f"sparse_lightning/cuda_kernels/{p.name}" for p in (ROOT / "cuda_kernels").glob("*.cu"))

    # A fresh venv that borrows the dependencies but gets the package only from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = sysconfig.get_paths()["purelib"]
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "deps.pth").write_text(purelib + "\n")
    with zipfile.ZipFile(wheel) as zf:  # installing a pure wheel = unpacking it into site-packages
        zf.extractall(site)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    code = ("import sparse_lightning, sparse_lightning.resources as r; "
            "print(sparse_lightning.__file__); print(r.config_dir()); print(r.kernel_dir())")
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pkg, conf, kernels = out.stdout.split()
    assert pkg.startswith(str(site)) and conf == f"{site}/sparse_lightning/conf" and kernels == f"{site}/sparse_lightning/cuda_kernels"
    # Hydra composes the shipped config tree from anywhere.
    show = subprocess.run([str(py), "-m", "sparse_lightning.cli.train", "--cfg", "job", "model=gru"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr
    assert "_target_: sparse_lightning.GRUClassifier" in show.stdout
