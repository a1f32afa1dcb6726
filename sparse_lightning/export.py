"""Han et al.'s relative-index compressed format for pruned weights, and its size report.

Each pruned tensor is flattened (row-major) and stored as a list of entries ``(run, value)``:
``run`` is the number of zeros skipped since the previous entry, in ``bits`` bits, and ``value``
the weight in its own dtype. A gap longer than ``2**bits - 1`` zeros gets a dummy entry
``(2**bits - 1, 0)`` ("in the rare case when the jump exceeds 31, the largest 5-bit unsigned
number, we add a dummy zero", Han et al. 2015, rebuttal; 5 bits for FC and 8 for conv). Trailing
zeros are implied by the shape.

    payload = compress_state_dict(checkpoint["state_dict"])     # masked tensors encoded, rest dense
    save_compressed(payload, "model.hanz"); state = decompress(load_compressed("model.hanz"))
    print(format_report(size_report(payload)))

Sizes are counted in bits as stored: ``entries * (bits + value_bits)`` per encoded tensor, dense
tensors at their dtype's size, against every tensor in dense fp32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import DENSE_COPY_SUFFIX, MASK_SUFFIX

FORMAT = "sparse_lightning/han-relative-index"
VERSION = 1
FC_BITS, CONV_BITS = 5, 8  # Han et al.: 5-bit relative indices for FC layers, 8-bit for conv


def check_bits(bits: int, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ConfigError(f"{name} must be an integer in [1, 16], got {bits!r}")
    return bits


def encode_relative(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(runs, values)`` of a tensor in relative-index form; runs are int64 in ``[0, 2**bits - 1]``."""
    check_bits(bits)
    flat = weight.detach().flatten().cpu()
    pos = torch.nonzero(flat).flatten()  # (nnz,)
    gap = torch.diff(pos, prepend=torch.tensor([-1])) - 1  # zeros before each nonzero
    span = 2**bits  # one dummy entry covers 2**bits - 1 zeros plus its own (zero) slot
    dummies = gap // span
    counts = dummies + 1
    n = int(counts.sum())
    runs = torch.full((n,), span - 1, dtype=torch.int64)
    values = torch.zeros(n, dtype=flat.dtype)
    real = torch.cumsum(counts, 0) - 1  # index of each nonzero's own entry
    runs[real] = gap - dummies * span
    values[real] = flat[pos]
    return runs, values


def decode_relative(runs: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`encode_relative`."""
    out = torch.zeros(math.prod(shape), dtype=values.dtype)
    if runs.numel():
        out[torch.cumsum(runs.long() + 1, 0) - 1] = values
    return out.view(shape)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers ``< 2**bits`` into a little-endian bit stream (uint8)."""
    c = codes.numpy().astype(np.uint32)
    planes = ((c[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)  # (n, bits)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    planes = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy((planes.astype(np.int64) << np.arange(bits)).sum(axis=1))


def default_bits(name: str, tensor: torch.Tensor, fc_bits: int = FC_BITS, conv_bits: int = CONV_BITS) -> int:
    """Conv weights (rank >= 3) get ``conv_bits``, matrices (FC, recurrent, embedding) ``fc_bits``."""
    return conv_bits if tensor.dim() >= 3 else fc_bits


def compress_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    fc_bits: int = FC_BITS,
    conv_bits: int = CONV_BITS,
    bits: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Encode every tensor that has a ``<name>_mask`` in ``state_dict``; keep the others dense.

    Training-only state is left out: the ``<name>_gsl_dense`` copies Guided Sparsity Learning keeps
    to restore layers.

    Args:
        state_dict: a model's (or a Lightning checkpoint's) ``state_dict``, masks included.
        fc_bits, conv_bits: index width for matrices and for conv kernels (rank >= 3).
        bits: per-tensor widths overriding both.

    Returns a payload of tensors and primitives only (``torch.load(..., weights_only=True)`` reads it).
    """
    check_bits(fc_bits, "fc_bits"), check_bits(conv_bits, "conv_bits")
    bits = dict(bits or {})
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(DENSE_COPY_SUFFIX)}
    masked = {k[: -len(MASK_SUFFIX)] for k in state_dict if k.endswith(MASK_SUFFIX)}
    layers, dense = {}, {}
    for name, tensor in state_dict.items():
        if name.endswith(MASK_SUFFIX) and name[: -len(MASK_SUFFIX)] in state_dict:
            continue  # masks are implied by the zeros
        if name in masked and tensor.is_floating_point():
            b = check_bits(bits.get(name, default_bits(name, tensor, fc_bits, conv_bits)), f"bits[{name}]")
            runs, values = encode_relative(tensor, b)
            layers[name] = {"shape": list(tensor.shape), "bits": b, "entries": int(runs.numel()),
                            "nnz": int(torch.count_nonzero(tensor)), "runs": pack_bits(runs, b), "values": values}
        else:
            dense[name] = tensor.detach().cpu()
    return {"format": FORMAT, "version": VERSION, "layers": layers, "dense": dense, "order": list(state_dict)}


def decompress(payload: Mapping[str, Any], masks: bool = True) -> dict[str, torch.Tensor]:
    """The ``state_dict`` a payload encodes, in its original order; masks rebuilt as ``weight != 0``."""
    if payload.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} file (format={payload.get('format')!r})")
    tensors = dict(payload["dense"])
    for name, e in payload["layers"].items():
        runs = unpack_bits(e["runs"], e["bits"], e["entries"])
        tensors[name] = decode_relative(runs, e["values"], tuple(e["shape"]))
    out: dict[str, torch.Tensor] = {}
    for name in payload["order"]:
        if name in tensors:
            out[name] = tensors[name]
        elif masks and name.endswith(MASK_SUFFIX) and name[: -len(MASK_SUFFIX)] in tensors:
            out[name] = tensors[name[: -len(MASK_SUFFIX)]] != 0
    return out


def save_compressed(payload: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(payload), path)
    return path


def load_compressed(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class LayerSize:
    """One tensor's storage: dense fp32 bytes vs bytes in the file's encoding."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    entries: int  # stored entries, dummy zeros included (== numel for dense tensors)
    bits: int | None  # index width; None for tensors stored dense
    dense_bytes: float
    stored_bytes: float

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else math.inf


def size_report(payload: Mapping[str, Any]) -> list[LayerSize]:
    """Per tensor: bytes in dense fp32 and as stored (encoded: ``entries * (bits + value bits) / 8``)."""
    rows = []
    for name in payload["order"]:
        if name in payload["layers"]:
            e = payload["layers"][name]
            numel = math.prod(e["shape"])
            value_bits = e["values"].element_size() * 8
            rows.append(LayerSize(name, tuple(e["shape"]), numel, e["nnz"], e["entries"], e["bits"],
                                  4.0 * numel, e["entries"] * (e["bits"] + value_bits) / 8))
        elif name in payload["dense"]:
            t = payload["dense"][name]
            rows.append(LayerSize(name, tuple(t.shape), t.numel(), int(torch.count_nonzero(t)), t.numel(), None,
                                  4.0 * t.numel(), float(t.numel() * t.element_size())))
    return rows


def total_ratio(rows: list[LayerSize]) -> float:
    """Whole-model compression: dense fp32 bytes / stored bytes."""
    return sum(r.dense_bytes for r in rows) / sum(r.stored_bytes for r in rows)


def param_ratio(rows: list[LayerSize]) -> float:
    """Han's Table 1 rate: all weights / weights kept (encoded tensors count their nonzeros)."""
    kept = sum(r.nnz if r.bits is not None else r.numel for r in rows)
    return sum(r.numel for r in rows) / kept


def format_report(rows: list[LayerSize]) -> str:
    """A plain-text table: per tensor and overall."""
    lines = [f"{'tensor':<40} {'shape':>14} {'nnz/numel':>17} {'idx bits':>8} {'pad':>6} {'dense fp32':>11} "
             f"{'stored':>11} {'ratio':>7}"]
    for r in rows:
        shape = "x".join(map(str, r.shape)) or "scalar"
        pad = r.entries - r.nnz if r.bits is not None else 0
        lines.append(f"{r.name:<40} {shape:>14} {f'{r.nnz}/{r.numel}':>17} {r.bits if r.bits else '-':>8} {pad:>6} "
                     f"{_kb(r.dense_bytes):>11} {_kb(r.stored_bytes):>11} {r.ratio:>6.1f}x")
    dense, stored = sum(r.dense_bytes for r in rows), sum(r.stored_bytes for r in rows)
    lines.append(f"{'total':<40} {'':>14} {'':>17} {'':>8} {'':>6} {_kb(dense):>11} {_kb(stored):>11} "
                 f"{dense / stored:>6.1f}x")
    lines.append(f"weights kept: 1 in {param_ratio(rows):.1f} (Han's rate); with relative indices: "
                 f"{total_ratio(rows):.1f}x smaller than dense fp32")
    return "\n".join(lines)


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KiB"
