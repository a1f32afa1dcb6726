"""The one mask mechanism every sparsity method uses.

A pruning target is a parameter addressed by its fully-qualified name (``"features.0.weight"``).
Its mask is a boolean buffer registered on the owning module as ``<param>_mask`` (``weight_mask``,
``weight_hh_l0_mask``), so masks travel in ``state_dict``, checkpoints, ``.to(device)`` and DDP.
Parameters keep their names and shapes; pruned entries are zeroed in place.

Invariants kept by the callbacks through these functions:
  * ``param[~mask] == 0`` after every optimizer step (:func:`apply_masks`);
  * gradients of pruned entries are zeroed before the step (:func:`mask_gradients`);
  * optimizer state (momentum, Adam moments) of newly pruned entries is zeroed when a mask
    changes (:func:`set_masks`), so pruned weights never drift back.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from sparse_lightning.errors import ConfigError

MASK_SUFFIX = "_mask"
DENSE_COPY_SUFFIX = "_gsl_dense"  # GSL's copy of a layer's dense weights: training state, never exported

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RNN = (nn.RNN, nn.LSTM, nn.GRU)


def _prunable_names(module: nn.Module) -> list[str]:
    """Local names of the prunable weights a module owns (never biases or norm parameters)."""
    if isinstance(module, (nn.Linear, nn.Embedding, *_CONV)):
        return ["weight"]
    if isinstance(module, _RNN):  # _flat_weights_names also lists weights moved out by a parametrization (STR)
        return [name for name in module._flat_weights_names if name.startswith("weight_")]
    return []


def select_parameters(
    model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> list[str]:
    """Fully-qualified names of prunable weights, filtered by fnmatch patterns.

    Prunable: Linear, Conv1d/2d/3d (and transposed), Embedding weights and the
    ``weight_ih_l*``/``weight_hh_l*`` matrices of RNN/LSTM/GRU. Order is ``named_modules`` order.
    """
    names = []
    for module_name, module in model.named_modules():
        for local in _prunable_names(module):
            fqn = f"{module_name}.{local}" if module_name else local
            if any(fnmatch.fnmatchcase(fqn, p) for p in include) and not any(
                fnmatch.fnmatchcase(fqn, p) for p in exclude
            ):
                names.append(fqn)
    return names


def require_targets(model: nn.Module, include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """:func:`select_parameters`, raising a clear error when nothing is selected."""
    targets = select_parameters(model, include, exclude)
    if not targets:
        raise ConfigError(
            f"no prunable weights in {type(model).__name__} (include={list(include)}, exclude={list(exclude)}); "
            "prunable layers are Linear, Conv1d/2d/3d, RNN/LSTM/GRU and Embedding"
        )
    return targets


def _owner(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    module_name, _, local = fqn.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), local


def get_parameter(model: nn.Module, fqn: str) -> nn.Parameter:
    module, local = _owner(model, fqn)
    return getattr(module, local)


def attach_masks(model: nn.Module, targets: Iterable[str]) -> None:
    """Register an all-True ``<param>_mask`` buffer for each target that has none (idempotent)."""
    for fqn in targets:
        module, local = _owner(model, fqn)
        if not hasattr(module, local + MASK_SUFFIX):
            param = getattr(module, local)
            module.register_buffer(local + MASK_SUFFIX, torch.ones_like(param, dtype=torch.bool))


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """All masks in the model, keyed by the fully-qualified name of the parameter they mask."""
    masks = {}
    for module_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            local = buf_name[: -len(MASK_SUFFIX)]
            if buf_name.endswith(MASK_SUFFIX) and isinstance(getattr(module, local, None), nn.Parameter):
                masks[f"{module_name}.{local}" if module_name else local] = buf
    return masks


class MaskedStep:
    """The per-step half of the mask engine, prepared once: what a callback runs on every optimizer step.

    Walking the model costs more than masking a small one, so the (parameter, mask) pairs are
    collected once, as this rank's local views (FSDP2 shards). On CPU each mask is also kept in the
    parameter's dtype: a bool x float multiply does not vectorize there and costs about 3x a
    same-dtype one. On GPUs the bool mask is used directly (it reads 4x fewer bytes). The masks'
    version counters tell when a mask was changed in place (``set_masks``, a checkpoint restore):
    :meth:`stale` is then true and the owner builds a new one.
    """

    def __init__(self, model: nn.Module) -> None:
        masks = get_masks(model)
        self._params = [get_parameter(model, fqn) for fqn in masks]
        self._masks = list(masks.values())
        self._versions = [mask._version for mask in self._masks]
        self._local = [_local_operand(param, mask) for param, mask in zip(self._params, self._masks)]

    def stale(self) -> bool:
        return any(mask._version != v for mask, v in zip(self._masks, self._versions))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned entries of every masked parameter."""
        _multiply([_local(p) for p in self._params], self._local)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned entries (before the optimizer step)."""
        grads, masks = [], []
        for param, mask in zip(self._params, self._local):
            if param.grad is not None:
                grads.append(_local(param.grad))
                masks.append(mask)
        _multiply(grads, masks)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _local_operand(param: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    local, local_mask = local_view(param, mask)
    return local_mask.to(local.dtype) if local.device.type == "cpu" else local_mask


def _multiply(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    if tensors:
        torch._foreach_mul_(tensors, masks)


def local_view(tensor: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's shard of ``tensor``, the matching slice of the full ``mask``); plain tensors pass through.

    FSDP2 (``fully_shard``) makes parameters, gradients and optimizer state DTensors sharded on dim 0,
    while mask buffers stay whole and replicated on every rank.
    """
    from torch.distributed.tensor import DTensor
    if not isinstance(tensor, DTensor):
        return tensor, mask
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tensor.to_local(), mask[tuple(slice(o, o + n) for o, n in zip(offset, shape))]


def apply_masks(model: nn.Module) -> None:
    """Zero the pruned entries of every masked parameter, in place."""
    MaskedStep(model).apply()


def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned entries (call before the optimizer step)."""
    MaskedStep(model).mask_gradients()


@torch.no_grad()
def zero_optimizer_state(optimizers: Iterable[torch.optim.Optimizer], param: torch.Tensor, pruned: torch.Tensor) -> None:
    """Zero every per-element state tensor (momentum, exp_avg, exp_avg_sq, ...) at ``pruned``."""
    for optimizer in optimizers:
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                local, local_pruned = local_view(value, pruned)
                local.masked_fill_(local_pruned, 0)


@torch.no_grad()
def set_masks(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> None:
    """Install new masks, zero the pruned weights and the optimizer state of newly pruned entries."""
    optimizers = list(optimizers)
    attach_masks(model, masks)
    for fqn, new in masks.items():
        module, local = _owner(model, fqn)
        param, buffer = getattr(module, local), getattr(module, local + MASK_SUFFIX)
        new = new.to(device=buffer.device, dtype=torch.bool)
        if new.shape != buffer.shape:
            raise ValueError(f"mask for {fqn} has shape {tuple(new.shape)}, parameter has {tuple(param.shape)}")
        newly_pruned = buffer & ~new
        buffer.copy_(new)
        local_param, local_new = local_view(param, new)
        local_param.mul_(local_new)
        if newly_pruned.any():
            zero_optimizer_state(optimizers, param, newly_pruned)


def broadcast_masks(masks: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Make every rank hold rank ``src``'s masks (no-op outside ``torch.distributed``).

    Masks are computed from identical data on every rank with deterministic tie-breaking; the
    broadcast removes any remaining doubt (e.g. non-deterministic reductions upstream).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    out = {}
    for fqn in sorted(masks):  # same order on every rank
        flat = masks[fqn].to(torch.uint8).contiguous()
        if torch.distributed.get_backend() == "nccl" and flat.device.type != "cuda":
            flat = flat.cuda()
        torch.distributed.broadcast(flat, src=src)
        out[fqn] = flat.to(device=masks[fqn].device, dtype=torch.bool)
    return out


def mask_digest(model: nn.Module) -> str:
    """SHA-256 over all masks (name, shape, bits): equal digests mean equal masks."""
    h = hashlib.sha256()
    for fqn, mask in sorted(get_masks(model).items()):
        h.update(fqn.encode())
        h.update(str(tuple(mask.shape)).encode())
        h.update(mask.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def attach_masks_from_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Register the mask buffers a saved ``state_dict`` holds, so ``load_state_dict`` can restore them.

    Use it to load a pruned checkpoint into a freshly built (dense) model. Returns the masked names.
    """
    params = dict(model.named_parameters())
    names = [k[: -len(MASK_SUFFIX)] for k in state_dict if k.endswith(MASK_SUFFIX) and k[: -len(MASK_SUFFIX)] in params]
    attach_masks(model, names)
    return names
