"""Depth pruning: a student cut from the teacher itself, its least needed blocks removed.

At batch 1 a CNN's latency follows its layer count more than its MACs, so the fastest students are
shallow. Instead of training a shallow network from random weights, depth pruning keeps the
teacher's stem, head, every block that changes the shape, and the `keep` removable blocks
(models/blocks.py) whose removal alone costs most on validation data; distillation then retrains
the rest. The cost of a block is the rise of the loss the student will train on (the task's
distillation loss toward the full teacher, or its label loss without distillation) on validation
images when that block alone is removed. With a parameter cap, blocks are taken in cost order and
any block that would take the student over the cap is passed over for the next one that fits (a
ResNet's early blocks hold a sixteenth of the parameters of its last stage's at the same MACs).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edgecnn.config.recipe import DistillConfig
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import Dataset, Split
from edgecnn.models.blocks import removable_blocks, remove_blocks
from edgecnn.tasks.base import Task


@dataclass
class BlockChoice:
    """Which removable blocks stay: each one's validation cost when removed alone, the kept and removed names."""

    costs: dict[str, float]
    kept: list[str]
    removed: list[str]
    baseline_loss: float
    samples: int
    params: int
    max_params: int | None = None
    passed_over: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "removable": len(self.costs),
            "kept": self.kept,
            "removed": self.removed,
            "cost_when_removed_alone": {k: round(v, 6) for k, v in self.costs.items()},
            "baseline_loss": round(self.baseline_loss, 6),
            "samples": self.samples,
            "params": self.params,
            **({"max_params": self.max_params, "passed_over_for_params": self.passed_over}
               if self.max_params is not None else {}),
        }


def _loss(outputs: Iterable[torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
          task: Task, head: dict, kd: DistillConfig | None) -> float:
    """The mean loss of one output per batch: toward the teacher's outputs (distillation) or the labels."""
    total = 0.0
    for out, (x, y, t_out) in zip(outputs, batches, strict=True):
        loss = task.distill_loss(out, t_out, y, head, kd) if kd is not None else task.loss(out, y, head)
        total += float(loss) * len(x)
    return total / sum(len(x) for x, _, _ in batches)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_params(teacher: nn.Module, names: list[str]) -> tuple[dict[str, int], int]:
    """Each named block's parameter count, and the teacher's count without all of them."""
    sizes = {n: _params(teacher.get_submodule(n)) for n in names}
    return sizes, _params(teacher) - sum(sizes.values())


def removable(teacher: nn.Module, probe: torch.Tensor, keep: int, max_params: int | None = None) -> list[str]:
    """The removable blocks of `teacher`; a UserError when there are none, fewer than `keep`, or when the
    rest of the teacher alone has more than `max_params` parameters."""
    if isinstance(teacher, torch.jit.ScriptModule):
        raise UserError("student.from_teacher: a TorchScript teacher cannot be cut into blocks; give the "
                        "teacher as file.py:Class (or a zoo / torchvision name) with its weights")
    names = removable_blocks(teacher, probe)
    if not names:
        raise UserError("student.from_teacher: the teacher has no removable blocks (children of an nn.Sequential "
                        "that keep their input's shape, like a ResNet's residual blocks); use student.model")
    if keep > len(names):
        raise UserError(f"student.from_teacher.keep_blocks: {keep} is more than the teacher's {len(names)} "
                        f"removable blocks; use at most {len(names)}")
    _, base = _block_params(teacher, names)
    if max_params is not None and base > max_params:
        raise UserError(f"student.from_teacher.max_params: {max_params} is less than the {base} parameters the "
                        "teacher keeps without any removable block (stem, head, blocks that change the shape); "
                        f"use at least {base}")
    return names


def _fit_params(ranked: list[str], sizes: dict[str, int], base: int, keep: int, max_params: int | None
                ) -> tuple[list[str], list[str]]:
    """The first `keep` of `ranked` that fit under `max_params` on top of `base`, and the blocks ranked above
    the last of them that did not fit."""
    kept, passed, total = [], [], base
    for name in ranked:
        if len(kept) == keep:
            break
        if max_params is None or total + sizes[name] <= max_params:
            kept.append(name)
            total += sizes[name]
        else:
            passed.append(name)
    last = ranked.index(kept[-1]) if kept else -1
    return kept, [n for n in passed if ranked.index(n) < last]


@contextlib.contextmanager
def _without(model: nn.Module, name: str) -> Iterator[None]:
    """Within, `model`'s block `name` is removed; it is put back afterwards."""
    block = model.get_submodule(name)
    remove_blocks(model, [name])
    try:
        yield
    finally:
        model.set_submodule(name, block)


def choose_blocks(teacher: nn.Module, data: Dataset, split: Split, task: Task, head: dict, keep: int, *,
                  kd: DistillConfig | None, batch_size: int = 250, max_params: int | None = None) -> BlockChoice:
    """Rank `teacher`'s removable blocks by their cost on `split` (validation images); keep the `keep` costliest.

    With `max_params`, a block that would take the student over that many parameters is passed over.
    """
    teacher = teacher.eval()
    names = removable(teacher, data.normalize(split.x[:1]), keep, max_params)
    sizes, base = _block_params(teacher, names)
    batches = []
    costs = {}
    with torch.no_grad():
        for xb, yb in task.batches(data, split, batch_size):
            x = data.normalize(xb)
            batches.append((x, yb, teacher(x)))
        baseline = _loss((t_out for _, _, t_out in batches), batches, task, head, kd)  # the teacher's own outputs
        for name in names:
            with _without(teacher, name):
                costs[name] = _loss((teacher(x) for x, _, _ in batches), batches, task, head, kd) - baseline
    ranked = sorted(names, key=lambda n: -costs[n])
    chosen, passed = _fit_params(ranked, sizes, base, keep, max_params)
    kept = [n for n in names if n in chosen]
    return BlockChoice(costs, kept, [n for n in names if n not in kept], baseline, len(split),
                       base + sum(sizes[n] for n in kept), max_params, passed)


def cut_from_teacher(teacher: nn.Module, choice: BlockChoice) -> nn.Module:
    """A copy of `teacher` without the blocks `choice` removes (its other weights are the teacher's)."""
    student = copy.deepcopy(teacher)
    remove_blocks(student, choice.removed)
    return student.train()
