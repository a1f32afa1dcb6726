"""Read the metrics of an offline wandb run (``wandb/offline-run-*/run-*.wandb``) without syncing.

The file is wandb's record log: a 7-byte header, then 32 KiB blocks of records (checksum, length,
type: full/first/middle/last) holding ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes]:
    ident, _, _ = _HEADER.unpack_from(data)
    if ident != b":W&B":
        raise ValueError("not a wandb run file")
    pos, out, pending = _HEADER.size, [], b""
    while pos + _RECORD.size <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD.size:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = _RECORD.unpack_from(data, pos)
        chunk = data[pos + _RECORD.size : pos + _RECORD.size + length]
        pos += _RECORD.size + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
        elif length == 0:
            break
    return out


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_history(run_dir: str | Path, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The logged rows (``wandb.log``/``log_metrics`` calls) of a finished offline run, in order.

    wandb's service may still be writing for a moment after ``wandb.finish()`` returns: wait up
    to ``timeout_s`` for the run's closing ``exit`` record.
    """
    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        records = _records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"wandb run {run_dir} has no exit record after {timeout_s} s: is it still running?")
        time.sleep(0.2)
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
