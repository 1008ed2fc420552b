"""Keypoints: one instance per image, K named keypoints, heatmaps out, OKS-based AP as the score.

Data: `mnist-keypoints` (the extreme points of real MNIST digits) and `coco-keypoints:PATH`
(crops of each annotated instance), tasks/keypoints/data.py; augmented by a flip (left and right
keypoints trade names) and scale/translate jitter that moves keypoints with the pixels. Head:
`heatmap`, one map per keypoint at a stride (edgecnn's zoo `pose_small` / `pose_mobile` report it
with `head_spec()`; any other model whose output is (N, K, H/s, W/s) has it inferred from one
forward pass); the data's keypoint names and OKS sigmas are added to it. Losses:
tasks/keypoints/losses.py. Decoding: tasks/keypoints/decode.py (numpy only, copied beside the
device agent, which decodes there). Metrics: tasks/keypoints/metrics.py (pycocotools OKS AP, PCK@0.1/0.2). Parity: the
export's and PyTorch's decoded keypoints, their mean distance in input pixels and `agreement`,
the share of keypoints within half a heatmap cell of each other, and the OKS-AP of each on the
split's targets. Kept whole by default: the heatmap prediction conv (K output channels).
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
from edgecnn.tasks.keypoints import decode as kpd
from edgecnn.tasks.keypoints.data import DEFAULT_SIGMA, PAD_VALUE, augment_keypoints, load_keypoints_data
from edgecnn.tasks.keypoints.losses import DEFAULT_TARGET_SIGMA, distillation_loss, heatmap_loss
from edgecnn.tasks.keypoints.metrics import keypoint_metrics


def infer_head(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """The heatmap head of a model without `head_spec()`, from the shape of its output on one zero image."""
    c, h, w = input_shape
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, c, h, w))
    except Exception as e:  # noqa: BLE001 - a user model that cannot run on the data's images
        raise UserError(f"{type(model).__name__}: fails on a {c}x{h}x{w} image ({e.__class__.__name__}: {e})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or h % out.shape[2] or w % out.shape[3] \
            or h // out.shape[2] != w // out.shape[3]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{type(model).__name__}: outputs {shape}, not heatmaps (N, K, H/s, W/s) of a {h}x{w} input; "
                        "use a zoo pose model (pose_small, pose_mobile) or one that returns one map per keypoint")
    return {"kind": "heatmap", "num_keypoints": int(out.shape[1]), "stride": h // out.shape[2], "input_size": [h, w],
            "target_sigma": DEFAULT_TARGET_SIGMA}


class KeypointsTask(Task):
    name = "keypoints"
    score_metric = "oks_ap"
    data_specs = "mnist-keypoints or coco-keypoints:PATH"
    agreement_of = "keypoints (within half a heatmap cell)"

    def load_data(
        self,
        spec: str,
        *,
        image_size: int | None = None,
        val_fraction: float = 0.1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        sigmas: list[float] | None = None,
    ) -> Dataset:
        return load_keypoints_data(spec, image_size, val_fraction, mean, std, sigmas)

    def augment(
        self, data: Dataset, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flips = getattr(data, "flip_index", None) or list(range(data.num_classes))
        return augment_keypoints(x, y, generator, flips, pad_value=getattr(data, "pad_value", PAD_VALUE))

    def head_spec(self, model: nn.Module, data: Dataset) -> dict:
        spec = getattr(model, "head_spec", None)
        head = dict(spec()) if callable(spec) else infer_head(model, data.input_shape)
        if head.get("kind") != "heatmap":
            raise UserError(f"{type(model).__name__}: its head is {head.get('kind')!r}, not keypoint heatmaps; "
                            "use a zoo pose model (pose_small, pose_mobile) or one that returns one map per keypoint")
        want = list(data.input_shape[1:])
        if list(head.get("input_size", want)) != want or head.get("num_keypoints") != data.num_classes:
            raise UserError(
                f"{type(model).__name__}: built for {head.get('num_keypoints')} keypoints at {head.get('input_size')}, "
                f"the data have {data.num_classes} at {want}; rebuild it for the data (num_classes, image_size)"
            )
        sigmas = getattr(data, "sigmas", None) or [DEFAULT_SIGMA] * data.num_classes
        return {**head, "keypoints": list(data.classes), "sigmas": list(sigmas)}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
        return heatmap_loss(outputs, targets, head)

    def distill_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict, kd: DistillConfig
    ) -> torch.Tensor:
        return distillation_loss(student, teacher, targets, head, kd.alpha, kd.peak_weight)

    def decode(self, raw: np.ndarray, head: dict) -> np.ndarray:
        """Keypoints (N, K, 3): x, y in input pixels and the peak score."""
        return kpd.decode(raw, head)

    def decoder_file(self) -> Path:
        return Path(kpd.__file__)

    def agent_predictions(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return kpd.from_arrays(arrays)

    def metrics(self, predictions: np.ndarray, targets: torch.Tensor, head: dict) -> dict[str, float]:
        return keypoint_metrics(predictions, targets, head["sigmas"])

    def parity(self, raw: np.ndarray, reference: np.ndarray, targets: torch.Tensor, head: dict) -> dict:
        ours, ref = self.decode(raw, head), self.decode(reference, head)
        dist = np.linalg.norm(ours[..., :2] - ref[..., :2], axis=-1)
        m_ours, m_ref = self.metrics(ours, targets, head), self.metrics(ref, targets, head)
        return {
            "agreement": float((dist <= head["stride"] / 2).mean()) if dist.size else 1.0,
            "mean_distance_px": float(dist.mean()) if dist.size else 0.0,
            "max_distance_px": float(dist.max()) if dist.size else 0.0,
            "oks_ap": m_ours["oks_ap"],
            "reference_oks_ap": m_ref["oks_ap"],
            "oks_ap_delta": m_ours["oks_ap"] - m_ref["oks_ap"],
            "max_abs_diff": float(np.abs(np.asarray(raw) - np.asarray(reference)).max()) if np.size(raw) else 0.0,
        }

    def kept_layers(self, model: nn.Module, head: dict) -> list[str]:
        k = head["num_keypoints"]
        return [name for name, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.out_channels == k]
