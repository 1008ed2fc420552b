"""The task interface: everything that differs between classification, detection and keypoints.

Stages, runtimes, reports and compare hold a `Task` and never assume labels themselves. A task
owns six things:

1. **Data**: `load_data(spec, ...)` returns an `edgecnn.data.datasets.Dataset` whose splits hold
   uint8 NCHW images in `x` and the task's *targets* in `y`, one row per image (labels (N,) for
   classification; padded boxes (N, M, 5) for detection), so `Split.head`, the train/val split
   and `datasets.batches` serve every task. `batches(...)` applies the task's `augment(data, x, y, generator)`
   to training batches (detection and keypoints move boxes or keypoints with the pixels).
2. **Losses**: `loss(outputs, targets, head)` for training on labels and
   `distill_loss(student, teacher, targets, head, kd)` toward a teacher's outputs.
3. **The head**: `head_spec(model, data)` is a JSON-able dict describing what the model's raw
   output tensor holds (`{"kind": "logits", ...}`, `{"kind": "center_size", "strides": ...}`). It travels
   with an export (and to the device agent), since exported graphs end at that raw tensor.
4. **Decoding**: `decode(raw, head)` turns raw outputs (numpy, what any runtime returns) into the
   task's predictions. Its numeric core is numpy-only code the device agent runs too.
5. **Metrics**: `metrics(predictions, targets, head)` returns every metric of the task; the one
   named `score_metric` is the report's `score` (higher is better, 0..1). `evaluate` chains
   decode and metrics.
6. **Parity and protection**: `parity(raw, reference_raw, targets, head)` compares an export's raw
   outputs with PyTorch's on the same images and returns numbers including `agreement` (0..1, the
   figure an export gate compares with its threshold); `kept_layers(model, head)` names the
   layers pruning must keep whole and int8 may leave in float by default (classifier layers,
   prediction heads).

A new task (keypoints) is one new module implementing this class plus one line in
`edgecnn.tasks.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from edgecnn.config.recipe import DistillConfig
from edgecnn.data.datasets import Dataset, Split, augment_batch, batches


class Task(ABC):
    """One task's data, losses, head description, decoding, metrics and parity (see the module docstring)."""

    name: ClassVar[str]
    score_metric: ClassVar[str]
    data_specs: ClassVar[str]  # the specs it reads, for messages: "mnist5k, imagefolder:PATH or cifar10:PATH"
    agreement_of: ClassVar[str] = "images"  # what parity's `agreement` counts, for messages

    @abstractmethod
    def load_data(
        self,
        spec: str,
        *,
        image_size: int | tuple[int, int] | None = None,
        val_fraction: float = 0.1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> Dataset:
        """The data set named by `spec`, every split's targets in the task's layout."""

    def batches(
        self,
        data: Dataset,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, targets) batches, shuffled as asked and, with `augment`, through `self.augment`."""
        for x, y in batches(split, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last):
            yield self.augment(data, x, y, generator) if augment else (x, y)

    def augment(
        self, data: Dataset, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch augmented (images: random crop and flip; labels unchanged)."""
        return augment_batch(x, generator), y

    @abstractmethod
    def head_spec(self, model: nn.Module, data: Dataset) -> dict:
        """What `model`'s raw output holds, as a JSON-able dict with a `kind`."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
        """The training loss on labels of one batch of raw outputs."""

    @abstractmethod
    def distill_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict, kd: DistillConfig
    ) -> torch.Tensor:
        """The distillation loss of one batch: toward the teacher's raw outputs, mixed with the label loss."""

    @abstractmethod
    def decode(self, raw: np.ndarray, head: dict) -> Any:
        """Raw outputs of a split (numpy) to the task's predictions."""

    @abstractmethod
    def metrics(self, predictions: Any, targets: torch.Tensor, head: dict) -> dict[str, float]:
        """Every metric of the task on a split; `score_metric` among them."""

    @abstractmethod
    def parity(self, raw: np.ndarray, reference: np.ndarray, targets: torch.Tensor, head: dict) -> dict:
        """How an export's raw outputs agree with the reference's; includes `agreement` in 0..1."""

    @abstractmethod
    def kept_layers(self, model: nn.Module, head: dict) -> list[str]:
        """Names of the layers pruning keeps whole (and int8 may keep in float) by default."""

    def decoder_file(self) -> Path | None:
        """The numpy-only file the device agent decodes raw outputs with (copied beside it by deploy); None when
        the agent scores the raw outputs itself (classification's top-1)."""
        return None

    def agent_predictions(self, arrays: dict[str, np.ndarray]) -> Any:
        """The predictions the agent decoded and saved (its --predictions-out arrays, the decoder file's
        `to_arrays`), as `decode` returns them."""
        raise NotImplementedError(f"the {self.name} task's agent saves no predictions")

    def evaluate(self, raw: np.ndarray, targets: torch.Tensor, head: dict) -> dict[str, float]:
        """Metrics of raw outputs: decode, then measure."""
        return self.metrics(self.decode(raw, head), targets, head)

    def score(self, metrics: dict[str, float]) -> float:
        """The task's primary metric (the report's `score`)."""
        return metrics[self.score_metric]


@torch.no_grad()
def raw_outputs(model: nn.Module, data: Dataset, split: Split, batch_size: int = 250) -> np.ndarray:
    """`model`'s raw fp32 outputs (eval mode) on a split, in order, as numpy: what a runtime would return."""
    model.eval()
    outs = [model(data.normalize(x)).float().numpy() for x in split.x.split(batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
