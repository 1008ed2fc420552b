"""torchvision's SSD family (`ssdlite320_mobilenet_v3_large`, `ssd300_vgg16`) as users hold them.

Built with `weights=None, weights_backbone=None` (nothing downloads) and then given the user's
state_dict: `RawSSD` keeps the detector's `backbone` and `head` under their own names, so a
state_dict saved from the torchvision model loads into it strictly. Its forward pass takes images
already letterboxed to `image_size` and normalised with the detector's own `image_mean` /
`image_std` (the SSD transform's resize is then the identity) and ends at the raw head tensor
(N, A, 4 + 1 + C): the box codes against the A default boxes, then the background logit and C class
logits. `head_spec()` carries the default boxes and torchvision's decoding settings, so
`edgecnn/tasks/detection/decode.py` reproduces `SSD.postprocess_detections` in numpy; class k of
edgecnn is torchvision's label k + 1 (label 0 is the background).
"""

from __future__ import annotations

import torch
import torch.nn as nn

SSD_BUILDERS = ("ssdlite320_mobilenet_v3_large", "ssd300_vgg16")


class RawSSD(nn.Module):
    """A torchvision SSD's backbone and head, ending at the raw head tensor (see the module docstring)."""

    def __init__(self, ssd: nn.Module, image_size: int):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.head = ssd.backbone, ssd.head
        self.image_size = image_size
        with torch.no_grad():
            was = ssd.training
            probe = torch.zeros(1, 3, image_size, image_size)
            feats = list(self._features(probe.to(next(ssd.parameters()).device)))
            anchors = ssd.anchor_generator(ImageList(probe, [(image_size, image_size)]), feats)[0]
            ssd.train(was)
        coder = ssd.box_coder
        self.spec = {
            "kind": "ssd",
            "num_classes": self.head.classification_head.num_columns - 1,
            "input_size": [image_size, image_size],
            "anchors": anchors.cpu().tolist(),
            "box_weights": list(coder.weights),
            "box_clip": float(coder.bbox_xform_clip),
            "score_threshold": float(ssd.score_thresh),
            "iou_threshold": float(ssd.nms_thresh),
            "max_detections": int(ssd.detections_per_img),
            "pre_nms_top_k": int(ssd.topk_candidates),
            "mean": list(ssd.transform.image_mean),
            "std": list(ssd.transform.image_std),
        }

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return list(feats.values()) if isinstance(feats, dict) else [feats]

    def head_spec(self) -> dict:
        """What the output tensor holds (see edgecnn/tasks/detection/decode.py, kind `ssd`)."""
        return dict(self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self._features(x))
        return torch.cat([out["bbox_regression"], out["cls_logits"]], -1)


def build_torchvision_ssd(name: str, num_classes: int, image_size: int, **kwargs) -> RawSSD:
    """torchvision's SSD builder `name` for `num_classes` classes (plus background), no weights downloaded."""
    import torchvision

    if name not in SSD_BUILDERS:
        raise ValueError(f"torchvision detector {name!r} is not supported; use one of {', '.join(SSD_BUILDERS)}")
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size {image_size} must be a multiple of 32 for {name}")
    ssd = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs)
    return RawSSD(ssd.eval(), image_size)
