"""Depth pruning: a student cut from the teacher itself, its least needed blocks removed.

At batch 1 a CNN's latency follows its layer count more than its MACs, so the fastest students are
shallow. Instead of training a shallow network from random weights, depth pruning keeps the
teacher's stem, head, every block that changes the shape, and the `keep` removable blocks
(models/blocks.py) whose removal alone costs most on validation data; distillation then retrains
the rest. The cost of a block is the rise of the loss the student will train on (the task's
distillation loss toward the full teacher, or its label loss without distillation) on validation
images when that block alone is removed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

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

    def to_dict(self) -> dict:
        return {
            "removable": len(self.costs),
            "kept": self.kept,
            "removed": self.removed,
            "cost_when_removed_alone": {k: round(v, 6) for k, v in self.costs.items()},
            "baseline_loss": round(self.baseline_loss, 6),
            "samples": self.samples,
        }


def _loss(outputs: Iterable[torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
          task: Task, head: dict, kd: DistillConfig | None) -> float:
    """The mean loss of one output per batch: toward the teacher's outputs (distillation) or the labels."""
    total = 0.0
    for out, (x, y, t_out) in zip(outputs, batches, strict=True):
        loss = task.distill_loss(out, t_out, y, head, kd) if kd is not None else task.loss(out, y, head)
        total += float(loss) * len(x)
    return total / sum(len(x) for x, _, _ in batches)


def removable(teacher: nn.Module, probe: torch.Tensor, keep: int) -> list[str]:
    """The removable blocks of `teacher`; a UserError when there are none or fewer than `keep`."""
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
    return names


def choose_blocks(teacher: nn.Module, data: Dataset, split: Split, task: Task, head: dict, keep: int, *,
                  kd: DistillConfig | None, batch_size: int = 250) -> BlockChoice:
    """Rank `teacher`'s removable blocks by their cost on `split` (validation images); keep the `keep` costliest."""
    teacher = teacher.eval()
    names = removable(teacher, data.normalize(split.x[:1]), keep)
    batches = []
    costs = {}
    with torch.no_grad():
        for xb, yb in task.batches(data, split, batch_size):
            x = data.normalize(xb)
            batches.append((x, yb, teacher(x)))
        baseline = _loss((t_out for _, _, t_out in batches), batches, task, head, kd)  # the teacher's own outputs
        for name in names:
            trial = copy.deepcopy(teacher)
            remove_blocks(trial, [name])
            costs[name] = _loss((trial(x) for x, _, _ in batches), batches, task, head, kd) - baseline
    ranked = sorted(names, key=lambda n: -costs[n])
    kept = [n for n in names if n in ranked[:keep]]
    return BlockChoice(costs, kept, [n for n in names if n not in kept], baseline, len(split))


def cut_from_teacher(teacher: nn.Module, choice: BlockChoice) -> nn.Module:
    """A copy of `teacher` without the blocks `choice` removes (its other weights are the teacher's)."""
    student = copy.deepcopy(teacher)
    remove_blocks(student, choice.removed)
    return student.train()
