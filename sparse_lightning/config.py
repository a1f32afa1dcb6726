"""Structured configs and validation of a composed ``sparse-train`` config, before anything runs.

Two layers of checks, each failing with one :class:`ConfigError` line naming the key:
  * the top level against :class:`TrainConfig` (unknown keys, wrong types, missing groups);
  * every ``_target_`` node against its target's typed ``__init__`` signature: unknown keys
    (with the allowed ones listed) and values of the wrong primitive type.
Value ranges are checked by the constructors themselves when the objects are built (train.py).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparse_lightning.errors import ConfigError

# Arguments that train() passes itself; a config must not set them.
INJECTED = {"net": ("input_shape", "num_classes"), "optimizer": ("params",), "scheduler": ("optimizer",)}
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


@dataclass
class TrainConfig:
    """Top level of ``conf/train.yaml``; each group is a ``_target_`` node checked separately."""

    data: Any = None
    model: Any = None
    sparsity: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    output_dir: str = "outputs"
    ckpt_path: str | None = None
    test: bool = True


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (OmegaConf/Hydra add context lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """Check the top level and return the fully resolved config as plain containers."""
    try:
        OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key}: {first_line(exc)}" if key else first_line(exc)) from None
    for group in ("data", "model", "trainer"):
        if not isinstance(container.get(group), dict) or "_target_" not in container[group]:
            raise ConfigError(f"{group}: no {group} configured (choose one with {group}=<option>)")
    for group in ("sparsity", "logger"):  # optional groups: empty, or a _target_ node
        node = container.get(group)
        if node and "_target_" not in node:
            raise ConfigError(f"{group}: keys {sorted(node)} are set but no {group} method is chosen "
                              f"(an experiment's {group} settings on {group}=dense/none?)")
    return container


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Validate a composed config; return it resolved. Raises :class:`ConfigError`."""
    container = resolve(cfg)
    for path, node in _target_nodes(container):
        check_node(path, node)
    return container


def _target_nodes(node: Any, path: str = "") -> collections.abc.Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def check_node(path: str, node: dict[str, Any]) -> None:
    """Keys of a ``_target_`` node against the target's signature, primitive values against hints."""
    try:
        target = get_object(node["_target_"])
    except Exception:
        raise ConfigError(f"{path}._target_: cannot import {node['_target_']!r}") from None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check against
    leaf = path.rsplit(".", 1)[-1]
    injected = set(INJECTED.get(leaf, ()))
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in injected]
    hints = _type_hints(target)
    for key, value in node.items():
        if key in _HYDRA_KEYS:
            continue
        if key in injected:
            raise ConfigError(f"{path}.{key}: set by sparse-train from the data and model; remove it from the config")
        if key not in params:
            if accepts_any:
                continue
            raise ConfigError(f"{path}.{key}: unknown key for {node['_target_']}; allowed: {', '.join(allowed)}")
        if key in hints and not (isinstance(value, dict) and "_target_" in value):
            problem = type_problem(value, hints[key])
            if problem:
                raise ConfigError(f"{path}.{key}: {problem}")


def _type_hints(target: Any) -> dict[str, Any]:
    function = inspect.unwrap(target.__init__ if inspect.isclass(target) else target)
    try:
        return typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: judge only the plain annotations
        return {k: v for k, v in getattr(function, "__annotations__", {}).items() if not isinstance(v, str)}


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit a primitive type hint, or None (hints we cannot judge pass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else next(p for p in problems if p)
    if origin is typing.Literal:
        return None if value in args else f"must be one of {', '.join(map(repr, args))}, got {value!r}"
    if hint is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin in (list, tuple, collections.abc.Sequence) and not isinstance(value, (list, tuple)):
        return f"expected a list, got {value!r}"
    return None
