"""``sparse-export``: write a pruned checkpoint in Han et al.'s relative-index format and report sizes.

    sparse-export outputs/checkpoints/last.ckpt                      # -> outputs/checkpoints/last.hanz
    sparse-export last.ckpt -o model.hanz --fc-bits 5 --conv-bits 8

Reads a Lightning checkpoint (or a plain ``state_dict`` file), encodes every tensor that has a
``<name>_mask`` (the pruned weights), keeps the rest dense, checks that decoding gives the same
tensors bit for bit, and prints the size of each tensor and of the model vs dense fp32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_ERROR = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sparse-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="Lightning .ckpt or a state_dict saved with torch.save")
    p.add_argument("-o", "--output", type=Path, help="compressed file (default: the checkpoint with suffix .hanz)")
    p.add_argument("--fc-bits", type=int, default=5, help="relative-index bits of FC/recurrent matrices (default 5)")
    p.add_argument("--conv-bits", type=int, default=8, help="relative-index bits of conv kernels (default 8)")
    return p.parse_args(argv)


def fail(message: str) -> int:
    print(f"sparse-export: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from sparse_lightning.errors import ConfigError
    from sparse_lightning.export import compress_state_dict, decompress, format_report, save_compressed, size_report
    from sparse_lightning.masks import MASK_SUFFIX

    try:
        loaded = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return fail(f"no such checkpoint: {args.checkpoint}")
    except Exception as exc:  # corrupt or not a torch file
        return fail(f"cannot read {args.checkpoint}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        return fail(f"{args.checkpoint} holds no state_dict of tensors")
    if not any(k.endswith(MASK_SUFFIX) for k in state):
        return fail(f"{args.checkpoint} has no pruning masks (<param>_mask buffers): nothing to compress")
    try:
        payload = compress_state_dict(state, fc_bits=args.fc_bits, conv_bits=args.conv_bits)
    except ConfigError as exc:
        return fail(str(exc))
    restored = decompress(payload)
    bad = [k for k in payload["layers"] if not torch.equal(restored[k], state[k])]
    if bad:
        return fail(f"round trip changed {', '.join(bad)}")
    output = args.output or args.checkpoint.with_suffix(".hanz")
    save_compressed(payload, output)
    print(format_report(size_report(payload)))
    print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KiB on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
