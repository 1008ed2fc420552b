"""Classification: one label per image, logits out, top-1 accuracy as the score.

Data are `edgecnn.data.datasets` specs (mnist5k, imagefolder:PATH, cifar10:PATH) with integer
labels in `Split.y`; augmentation is the CIFAR-style crop and flip of `datasets.augment_batch`.
The loss is cross-entropy; distillation is Hinton et al. (2015), alpha * T^2 * KL(soft teacher ||
soft student) + (1 - alpha) * CE (feature losses, which hook into models, stay in the training
loop). Parity is top-1 agreement with the reference. Kept whole: every Linear or Conv2d layer
whose outputs are the classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.config.recipe import DistillConfig
from edgecnn.data.datasets import Dataset, load_data
from edgecnn.tasks.base import Task


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(soft teacher || soft student) + (1-alpha) * CE."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / t, 1), F.softmax(teacher_logits.float() / t, 1), reduction="batchmean"
    ) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


class ClassificationTask(Task):
    name = "classification"
    score_metric = "top1"
    data_specs = "mnist5k, imagefolder:PATH or cifar10:PATH"

    def load_data(
        self,
        spec: str,
        *,
        image_size: int | tuple[int, int] | None = None,
        val_fraction: float = 0.1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> Dataset:
        return load_data(spec, val_fraction, mean, std, image_size)

    def head_spec(self, model: nn.Module, data: Dataset) -> dict:
        return {"kind": "logits", "num_classes": data.num_classes}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def distill_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict, kd: DistillConfig
    ) -> torch.Tensor:
        return kd_loss(student, teacher, targets, kd.temperature, kd.alpha)

    def decode(self, raw: np.ndarray, head: dict) -> np.ndarray:
        """The predicted class of every image."""
        return np.asarray(raw).reshape(len(raw), -1).argmax(1)

    def metrics(self, predictions: np.ndarray, targets: torch.Tensor, head: dict) -> dict[str, float]:
        labels = np.asarray(targets)
        return {"top1": float((predictions == labels).mean()) if len(labels) else float("nan")}

    def parity(self, raw: np.ndarray, reference: np.ndarray, targets: torch.Tensor, head: dict) -> dict:
        agree = float((self.decode(raw, head) == self.decode(reference, head)).mean()) if len(raw) else 1.0
        diff = float(np.abs(np.asarray(raw) - np.asarray(reference)).max()) if np.size(raw) else 0.0
        return {"agreement": agree, "top1_agreement": agree, "max_abs_diff": diff}

    def kept_layers(self, model: nn.Module, head: dict) -> list[str]:
        c = head["num_classes"]
        return [
            name
            for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == c) or (isinstance(m, nn.Conv2d) and m.out_channels == c)
        ]
