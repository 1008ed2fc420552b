"""torchvision's SSDlite loaded as its users hold it (builder with weights=None plus a state_dict), decoded in
numpy exactly as torchvision's own postprocessing does, and exported to ONNX at its raw head tensor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgecnn.models.files import load_weights
from edgecnn.models.torchvision_detect import build_torchvision_ssd
from edgecnn.tasks.base import raw_outputs
from edgecnn.tasks.detection.data import load_detection_data
from edgecnn.tasks.registry import get_task

NAME, SIZE, CLASSES = "ssdlite320_mobilenet_v3_large", 320, 10


@pytest.fixture(scope="module")
def data():
    """mnist-detect canvases of 320 pixels as RGB, normalised the way SSDlite's transform does ([-1, 1])."""
    d = load_detection_data("mnist-detect", SIZE, mean=[0.5], std=[0.5], mnist_counts={"train": 6, "val": 2, "test": 6})
    rgb = {name: dataclasses.replace(split, x=split.x.repeat(1, 3, 1, 1))
           for name, split in (("train", d.train), ("val", d.val), ("test", d.test))}
    return dataclasses.replace(d, **rgb, mean=[0.5] * 3, std=[0.5] * 3)


@pytest.fixture(scope="module")
def users_ssd(data, tmp_path_factory, one_thread):
    """The user's detector and its state_dict file: torchvision's model, BatchNorm statistics taken on real images."""
    import torchvision

    torch.manual_seed(0)
    ssd = torchvision.models.get_model(NAME, weights=None, weights_backbone=None, num_classes=CLASSES + 1)
    for m in ssd.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batch below
            m.reset_running_stats()
    ssd.train()
    with torch.no_grad():
        ssd.head(list(ssd.backbone(data.normalize(data.train.x)).values()))
    path = tmp_path_factory.mktemp("user") / "ssdlite.pt"
    torch.save(ssd.eval().state_dict(), path)
    return ssd, path


@pytest.fixture(scope="module")
def loaded(users_ssd):
    _, path = users_ssd
    model = build_torchvision_ssd(NAME, CLASSES, SIZE)
    load_weights(model, path)  # strict: the user's keys are the wrapper's keys
    return model.eval()


def same_detections(ours, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Theirs in our order: each of our detections matched to their one of the same class and (within 1e-6) score
    with the nearest box. Detections of tied scores may come in either order (the sorts differ between CPUs)."""
    near = np.abs(ours.boxes[:, None, :] - boxes[None, :, :]).max(-1)
    near[(ours.classes[:, None] != classes[None, :]) | (np.abs(ours.scores[:, None] - scores[None, :]) > 1e-6)] = np.inf
    order = near.argmin(1)
    assert sorted(order.tolist()) == list(range(len(boxes)))  # one to one
    return order


def test_numpy_decoding_matches_torchvisions_postprocessing(users_ssd, loaded, data):
    ssd, _ = users_ssd
    task = get_task("detection")
    head = task.head_spec(loaded, data)
    assert head["kind"] == "ssd" and len(head["anchors"]) == 3234 and head["mean"] == [0.5] * 3
    with torch.no_grad():
        theirs = ssd([im.float() / 255 for im in data.test.x])  # torchvision's transform, head and postprocess
    ours = task.decode(raw_outputs(loaded, data, data.test), head)
    for t, o in zip(theirs, ours, strict=True):
        assert len(o) == len(t["boxes"]) > 0
        np.testing.assert_allclose(o.scores, t["scores"].numpy(), atol=1e-6)  # the same ranking of scores
        order = same_detections(o, t["boxes"].numpy(), t["scores"].numpy(), t["labels"].numpy() - 1)
        np.testing.assert_allclose(o.boxes, t["boxes"].numpy()[order], atol=1e-3)
    metrics = task.metrics(ours, data.test.y, head)
    assert set(metrics) == {"mAP", "mAP50", "mAP75"} and all(0 <= v <= 1 for v in metrics.values())
    kept = task.kept_layers(loaded, head)
    assert kept and all(n.startswith("head.") for n in kept)


@pytest.mark.slow  # the ONNX export of MobileNetV3 alone takes ~40 s on 2 cores
def test_onnx_export_of_the_raw_head_decodes_like_pytorch(loaded, data, tmp_path):
    from edgecnn.compression.export import export_onnx
    from edgecnn.runtime.agent import normalize, open_runtime

    task = get_task("detection")
    head = task.head_spec(loaded, data)
    path = tmp_path / "ssdlite.onnx"
    export_onnx(loaded, data.input_shape, path)
    rt = open_runtime(str(path), threads=1)
    raw = rt.run(normalize(data.test.x.numpy(), np.array(data.mean, np.float32), np.array(data.std, np.float32)))
    check = task.parity(raw, raw_outputs(loaded, data, data.test), data.test.y, head)
    assert check["agreement"] >= 0.99 and abs(check["map_delta"]) < 0.005, check
