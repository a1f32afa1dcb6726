"""What the sparse inference modules share: the effective dense weight of a (possibly masked)
layer, and state_dict loading into buffers whose size is the number of nonzeros."""

from __future__ import annotations

import torch
from torch import nn


def masked_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight and its `weight_mask` buffer, if any: zeros and mask both prune."""
    mask = getattr(module, "weight_mask", None)
    return module.weight.detach(), (mask.detach() if isinstance(mask, torch.Tensor) else None)


class VariableBuffers(nn.Module):
    """Buffers listed in `_variable_buffers` take the loaded tensor's shape on `load_state_dict`
    (a state_dict from a module with another sparsity pattern loads fine); `_reset_caches` runs
    after loading and after `.to()`/`.half()`."""

    _variable_buffers: tuple[str, ...] = ()

    def _reset_caches(self) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in self._variable_buffers:
            key, current = prefix + name, getattr(self, name)
            if key in state_dict and current is not None and state_dict[key].shape != current.shape:
                setattr(self, name, torch.empty(state_dict[key].shape, dtype=current.dtype,
                                                device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._reset_caches()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._reset_caches()
        return out
