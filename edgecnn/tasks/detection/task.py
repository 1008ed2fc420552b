"""Detection: boxes and classes per image, a raw head tensor out, COCO mAP@[.5:.95] as the score.

Data: `mnist-detect`, `coco:PATH`, `yolo:PATH` (tasks/detection/data.py), augmented by a flip and
scale/translate jitter that moves boxes with pixels. Heads: `center_size` (edgecnn's zoo
detectors, `det_small` / `det_tiny`) and `ssd` (torchvision's SSD / SSDlite through
models/torchvision_detect.py), whose `head_spec()` the model reports. Losses: tasks/detection/losses.py.
Decoding: tasks/detection/decode.py (numpy only, shared with the device agent). Metrics: COCO
mAP, mAP50, mAP75 by pycocotools. Parity: the export's and PyTorch's confident detections
(score >= 0.3) matched one to one by class and IoU >= 0.5 (`agreement` = matched / the larger
count), their mean IoU, and the mAP of each on the split's targets. Kept whole by default: the
prediction convs (4 box + 1 quality + C class channels), or all of a torchvision SSD's head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecnn.config.recipe import DistillConfig
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import Dataset
from edgecnn.tasks.base import Task
from edgecnn.tasks.detection import decode as dd
from edgecnn.tasks.detection.data import PAD_VALUE, augment_detection, load_detection_data
from edgecnn.tasks.detection.losses import detection_loss, distillation_loss
from edgecnn.tasks.detection.metrics import coco_map

PARITY_SCORE = 0.3  # detections at least this confident are compared between an export and PyTorch
PARITY_IOU = 0.5


def match(a: dd.Detections, b: dd.Detections, iou: float = PARITY_IOU) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (index in a, index in b, IoU) of same-class boxes, a's highest scores first."""
    if not len(a) or not len(b):
        return []
    ious = dd.box_iou(a.boxes, b.boxes) * (a.classes[:, None] == b.classes[None, :])
    pairs, taken = [], np.zeros(len(b), bool)
    for i in np.argsort(-a.scores, kind="stable"):
        cand = np.where(taken, -1.0, ious[i])
        j = int(cand.argmax())
        if cand[j] >= iou:
            taken[j] = True
            pairs.append((int(i), j, float(cand[j])))
    return pairs


class DetectionTask(Task):
    name = "detection"
    score_metric = "mAP"
    data_specs = "mnist-detect, coco:PATH or yolo:PATH"
    agreement_of = "confident detections (score >= 0.3, matched at IoU >= 0.5)"

    def load_data(
        self,
        spec: str,
        *,
        image_size: int | tuple[int, int] | None = None,
        val_fraction: float = 0.1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> Dataset:
        return load_detection_data(spec, image_size, val_fraction, mean, std)

    def augment(
        self, data: Dataset, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_detection(x, y, generator, pad_value=getattr(data, "pad_value", PAD_VALUE))

    def head_spec(self, model: nn.Module, data: Dataset) -> dict:
        spec = getattr(model, "head_spec", None)
        if not callable(spec):
            raise UserError(
                f"{type(model).__name__}: not a detector edgecnn can decode (no head_spec()); "
                "use a zoo detector (det_small, det_tiny) or a torchvision SSD"
            )
        head = dict(spec())
        want = list(data.input_shape[1:])
        if list(head.get("input_size", want)) != want or head.get("num_classes") != data.num_classes:
            raise UserError(
                f"{type(model).__name__}: built for {head.get('num_classes')} classes at {head.get('input_size')}, "
                f"the data have {data.num_classes} at {want}; rebuild it for the data (num_classes, image_size)"
            )
        return head

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
        return detection_loss(outputs, targets, head)

    def distill_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict, kd: DistillConfig
    ) -> torch.Tensor:
        return distillation_loss(student, teacher, targets, head, kd.temperature, kd.alpha)

    def decode(self, raw: np.ndarray, head: dict) -> list[dd.Detections]:
        return dd.decode(raw, head)

    def decoder_file(self) -> Path:
        return Path(dd.__file__)

    def agent_predictions(self, arrays: dict[str, np.ndarray]) -> list[dd.Detections]:
        return dd.from_arrays(arrays)

    def metrics(self, predictions: list[dd.Detections], targets: torch.Tensor, head: dict) -> dict[str, float]:
        return coco_map(predictions, targets, head["num_classes"])

    def parity(self, raw: np.ndarray, reference: np.ndarray, targets: torch.Tensor, head: dict) -> dict:
        ours, ref = self.decode(raw, head), self.decode(reference, head)
        matched = ious = n_ours = n_ref = 0
        for a, b in zip(ref, ours, strict=True):
            a, b = a.subset(a.scores >= PARITY_SCORE), b.subset(b.scores >= PARITY_SCORE)
            pairs = match(a, b)
            matched, ious = matched + len(pairs), ious + sum(p[2] for p in pairs)
            n_ref, n_ours = n_ref + len(a), n_ours + len(b)
        m_ours, m_ref = self.metrics(ours, targets, head), self.metrics(ref, targets, head)
        return {
            "agreement": matched / max(n_ref, n_ours) if max(n_ref, n_ours) else 1.0,
            "mean_iou": ious / matched if matched else None,
            "detections": n_ours,
            "reference_detections": n_ref,
            "mAP": m_ours["mAP"],
            "reference_mAP": m_ref["mAP"],
            "map_delta": m_ours["mAP"] - m_ref["mAP"],
            "max_abs_diff": float(np.abs(np.asarray(raw) - np.asarray(reference)).max()) if np.size(raw) else 0.0,
        }

    def kept_layers(self, model: nn.Module, head: dict) -> list[str]:
        convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if head["kind"] == "ssd":  # torchvision's SSD head: its per-level box and class convs
            return [name for name, _ in convs if name.startswith("head.")]
        return [name for name, m in convs if m.out_channels == 5 + head["num_classes"]]
