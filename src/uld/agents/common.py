"""Plumbing every agent needs, written once: precision, autocast blocks, frozen networks for a loss,
target networks, and the state of networks, targets and optimizers with one rule for loading."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def check_precision(precision: str) -> str:
    """``precision`` when it is one uld trains in (fp32, or bf16 autocast); ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return precision


def output_dtype(precision: str) -> torch.dtype:
    """The dtype a network's output has inside a loss's forward pass: bf16 under bf16 autocast. Noise added
    to such an output is drawn in it, as torch.randn_like would draw it (bf16 and fp32 draws differ)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str, cache: bool = True) -> torch.autocast:
    """bf16 autocast for a loss's forward pass when asked for (losses and optimizer states stay fp32).

    One block per forward pass: autocast keeps the bf16 copy of every weight it casts until its block
    exits, so a block spanning an optimizer step would go on using the old weights. ``cache=False``
    inside a CUDA graph: a cached copy would be baked into the graph.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Build the graph with these modules' parameters as constants: gradients flow through, not into, them.

    Each parameter's requires_grad is restored on exit, also when the block raises.
    """
    flags = [[p.requires_grad for p in module.parameters()] for module in modules]
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module, module_flags in zip(modules, flags):
            for p, flag in zip(module.parameters(), module_flags):
                p.requires_grad_(flag)


def target_copy(online: ModuleT) -> ModuleT:
    """A target network: a copy of ``online`` that takes no gradient."""
    return copy.deepcopy(online).requires_grad_(False)


@torch.no_grad()
def copy_into(online: nn.Module, target: nn.Module) -> None:
    """Hard target update: target <- online, parameter by parameter and buffer by buffer."""
    target.load_state_dict(online.state_dict())


@torch.no_grad()
def polyak_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """Soft target update: target <- (1 - tau) target + tau online, parameter by parameter."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def parts_state_dict(owner: object, names: Iterable[str]) -> dict[str, Any]:
    """The state_dict of each named network, target and optimizer of ``owner``."""
    return {name: getattr(owner, name).state_dict() for name in names}


def load_parts_state_dict(owner: object, state: dict[str, Any], names: Iterable[str]) -> None:
    """Restore what parts_state_dict returned.

    Optimizer state is deep-copied: torch's Optimizer.load_state_dict keeps the tensors it is given
    (on the same device), so without the copy two agents loaded from one state dict would share their
    Adam moments and each step of one would move the other's. Network state is copied into the
    existing parameters by nn.Module.load_state_dict, so it needs no copy.
    """
    for name in names:
        part = getattr(owner, name)
        value = state[name]
        part.load_state_dict(copy.deepcopy(value) if isinstance(part, torch.optim.Optimizer) else value)
