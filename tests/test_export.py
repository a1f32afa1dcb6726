"""Han's relative-index format: exact round trips, dummy zeros for long gaps, size report, sparse-export."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers import TinyNet
from sparse_lightning import MagnitudePruning, attach_masks_from_state_dict, mask_digest
from sparse_lightning.cli.export import main
from sparse_lightning.export import (
    compress_state_dict,
    decode_relative,
    decompress,
    encode_relative,
    load_compressed,
    pack_bits,
    param_ratio,
    save_compressed,
    size_report,
    total_ratio,
    unpack_bits,
)


def test_relative_indices_by_hand():
    w = torch.zeros(20)
    w[[1, 2, 12]] = torch.tensor([0.5, -1.0, 2.0])
    runs, values = encode_relative(w, bits=2)  # runs 0..3: a gap of 9 zeros needs two dummies of (3, 0)
    assert runs.tolist() == [1, 0, 3, 3, 1]
    assert values.tolist() == [0.5, -1.0, 0.0, 0.0, 2.0]
    assert torch.equal(decode_relative(runs, values, (20,)), w)


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_round_trip_is_exact(bits, density):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(37, 53, generator=g) * (torch.rand(37, 53, generator=g) < density)
    runs, values = encode_relative(w, bits)
    assert runs.numel() == 0 or int(runs.max()) < 2**bits
    gaps = torch.diff(torch.nonzero(w.flatten()).flatten(), prepend=torch.tensor([-1])) - 1
    assert runs.numel() == int(torch.count_nonzero(w)) + int((gaps // 2**bits).sum())  # nnz + dummy zeros
    packed = pack_bits(runs, bits)
    assert packed.numel() == (runs.numel() * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, runs.numel()), runs)
    assert torch.equal(decode_relative(runs, values, (37, 53)), w)


def _pruned_checkpoint(make_trainer, tmp_path, target=0.9):
    model = TinyNet()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    make_trainer(max_steps=6, enable_checkpointing=True, callbacks=[MagnitudePruning(target, at_step=2), ckpt]).fit(model)
    return model, tmp_path / "last.ckpt"


def test_export_then_import_gives_identical_weights_and_masks(make_trainer, tmp_path):
    model, path = _pruned_checkpoint(make_trainer, tmp_path)
    state = torch.load(path, weights_only=True)["state_dict"]
    payload = compress_state_dict(state)
    assert set(payload["layers"]) == {"conv.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}
    assert payload["layers"]["conv.weight"]["bits"] == 8 and payload["layers"]["head.weight"]["bits"] == 5
    save_compressed(payload, tmp_path / "model.hanz")
    restored = decompress(load_compressed(tmp_path / "model.hanz"))
    assert list(restored) == list(state)
    assert all(torch.equal(restored[k], state[k]) for k in state)
    fresh = TinyNet()
    attach_masks_from_state_dict(fresh, restored)
    fresh.load_state_dict(restored)
    assert mask_digest(fresh) == mask_digest(model)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_size_report_counts_bits_as_stored(make_trainer, tmp_path):
    _, path = _pruned_checkpoint(make_trainer, tmp_path)
    payload = compress_state_dict(torch.load(path, weights_only=True)["state_dict"], fc_bits=4)
    rows = {r.name: r for r in size_report(payload)}
    head = rows["head.weight"]
    assert head.bits == 4 and head.dense_bytes == 4 * 64
    assert head.stored_bytes == head.entries * (4 + 32) / 8 and head.entries >= head.nnz
    bias = rows["head.bias"]
    assert bias.bits is None and bias.stored_bytes == bias.dense_bytes == 16
    dense = sum(r.dense_bytes for r in rows.values())
    assert total_ratio(list(rows.values())) == pytest.approx(dense / sum(r.stored_bytes for r in rows.values()))
    assert param_ratio(list(rows.values())) > 1.0


def test_cli_writes_the_file_and_prints_the_report(make_trainer, tmp_path, capsys):
    _, path = _pruned_checkpoint(make_trainer, tmp_path)
    assert main([str(path), "-o", str(tmp_path / "out.hanz"), "--fc-bits", "5", "--conv-bits", "8"]) == 0
    out = capsys.readouterr().out
    assert "rnn.weight_hh_l0" in out and "total" in out and "smaller than dense fp32" in out
    restored = decompress(load_compressed(tmp_path / "out.hanz"))
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(restored[k], state[k]) for k in state)


def test_console_script_fails_with_one_line(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(3)}}, tmp_path / "dense.ckpt")
    script = [sys.executable, "-m", "sparse_lightning.cli.export"]
    out = subprocess.run([*script, str(tmp_path / "dense.ckpt")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"sparse-export: error: {tmp_path / 'dense.ckpt'} has no pruning masks (<param>_mask buffers): nothing to compress"
    missing = subprocess.run([*script, str(tmp_path / "nope.ckpt")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr


def test_guided_sparsity_dense_copies_are_not_exported():
    layer = torch.nn.Linear(8, 8)
    state = {**layer.state_dict(), "weight_mask": layer.weight != 0, "weight_gsl_dense": layer.weight.detach().clone()}
    payload = compress_state_dict(state)
    assert "weight_gsl_dense" not in payload["order"] and "weight_gsl_dense" not in payload["dense"]
    assert set(decompress(payload)) == {"weight", "bias", "weight_mask"}
    assert sum(r.numel for r in size_report(payload)) == 8 * 8 + 8


def test_bad_bit_width():
    from sparse_lightning import ConfigError

    with pytest.raises(ConfigError, match=r"fc_bits must be an integer in \[1, 16\]"):
        compress_state_dict({"w": torch.ones(2), "w_mask": torch.ones(2, dtype=torch.bool)}, fc_bits=0)
