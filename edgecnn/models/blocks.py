"""A model's removable blocks: what depth pruning may take out of a network without breaking its shapes.

A removable block is a child of an `nn.Sequential` that holds layers of its own and whose output has
its input's shape (a residual block after the first of its stage, an inverted residual with a skip).
Removing it replaces it by a `RemovedBlock` (an identity), so the other blocks keep their names and
their weights load by the same keys; edgecnn's model files list the removed blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RemovedBlock(nn.Identity):
    """Stands where depth pruning removed a block: passes its input through."""


def removable_blocks(model: nn.Module, probe: torch.Tensor) -> list[str]:
    """Names of the blocks of `model` that keep their input's shape on `probe`, outermost first, in order."""
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    candidates = {
        f"{parent}.{child}" if parent else child: block
        for parent, seq in model.named_modules()
        if isinstance(seq, nn.Sequential) and len(seq) >= 2
        for child, block in seq.named_children()
        if not isinstance(block, RemovedBlock) and any(p.numel() for p in block.parameters())
        and len(list(block.children())) > 0
    }

    def record(name: str):
        def hook(_m: nn.Module, inp: tuple, out: object) -> None:
            if len(inp) == 1 and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                seen[name] = (tuple(inp[0].shape), tuple(out.shape))
        return hook

    for name, block in candidates.items():
        hooks.append(block.register_forward_hook(record(name)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    fits = [n for n in candidates if n in seen and seen[n][0] == seen[n][1]]
    return [n for n in fits if not any(n.startswith(f"{outer}.") for outer in fits if outer != n)]


def remove_blocks(model: nn.Module, names: list[str]) -> None:
    """Replace each named block of `model` by a RemovedBlock, in place."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RemovedBlock())


def removed_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks of `model` that depth pruning removed."""
    return [n for n, m in model.named_modules() if isinstance(m, RemovedBlock)]
