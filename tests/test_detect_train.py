"""det_small really learns mnist-detect (mAP through the numpy decoder and pycocotools), distils into
det_tiny, prunes with its head kept whole, and its ONNX export decodes to PyTorch's detections."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgecnn.compression.train import fit
from edgecnn.config.recipe import DistillConfig, TrainConfig
from edgecnn.models.files import ModelInfo, build_model
from edgecnn.tasks.base import raw_outputs
from edgecnn.tasks.detection.data import load_detection_data
from edgecnn.tasks.registry import get_task

BATCH = 16

SIZE = 64


@pytest.fixture(scope="module")
def data():
    return load_detection_data("mnist-detect", SIZE, mnist_counts={"train": 400, "val": 50, "test": 150})


def _train(model, data, task, epochs, teacher=None, kd=None, seed=0):
    """edgecnn's training loop (compression.train.fit) on the task's batches and losses, in fp32 on any CPU."""
    cfg = (kd or TrainConfig()).model_copy(update={"epochs": epochs, "lr": 0.01, "batch_size": BATCH,
                                                   "optimizer": "adamw", "weight_decay": 1e-4, "precision": "fp32"})
    fit(model, data, cfg, seed=seed, augment=True, teacher=teacher, kd=kd, task=task)
    return model.eval()



@pytest.fixture(scope="module")
def trained(data, one_thread):
    task = get_task("detection")
    torch.manual_seed(0)
    model = build_model(ModelInfo("det_small", {}, 10, data.input_shape))
    head = task.head_spec(model, data)
    untrained = task.evaluate(raw_outputs(model, data, data.test), data.test.y, head)
    model = _train(model, data, task, epochs=8)
    return task, model, head, untrained


def test_short_training_lifts_map_far_above_an_untrained_model(trained, data):
    task, model, head, untrained = trained
    metrics = task.evaluate(raw_outputs(model, data, data.test), data.test.y, head)
    assert set(metrics) == {"mAP", "mAP50", "mAP75"} and task.score(metrics) == metrics["mAP"]
    assert untrained["mAP50"] < 0.01
    assert metrics["mAP50"] > 0.06 and metrics["mAP50"] > 20 * untrained["mAP50"], (metrics, untrained)
    assert metrics["mAP"] > 0.02


def test_onnx_export_decodes_to_pytorchs_detections(trained, data, tmp_path):
    from edgecnn.compression.export import export_onnx
    from edgecnn.runtime.agent import normalize, open_runtime

    task, model, head, _ = trained
    path = tmp_path / "det_small.onnx"
    export_onnx(model, data.input_shape, path)
    rt = open_runtime(str(path), threads=1)
    x = data.test.x.numpy()
    mean, std = np.array(data.mean, np.float32), np.array(data.std, np.float32)
    raw_onnx = np.concatenate([rt.run(normalize(x[i : i + 50], mean, std)) for i in range(0, len(x), 50)])
    raw_torch = raw_outputs(model, data, data.test)
    assert raw_onnx.shape == raw_torch.shape == (len(x), 8 * 8 + 4 * 4, 15)
    check = task.parity(raw_onnx, raw_torch, data.test.y, head)
    assert check["agreement"] >= 0.99 and check["reference_detections"] > 100, check
    assert abs(check["map_delta"]) < 0.005 and check["mean_iou"] > 0.999, check
    ours, ref = task.decode(raw_onnx, head), task.decode(raw_torch, head)
    for a, b in zip(ours[:20], ref[:20], strict=True):
        keep = min(len(a), len(b), 10)  # the confident ones, whose order float noise cannot swap
        np.testing.assert_allclose(a.boxes[:keep], b.boxes[:keep], atol=1e-3)
        assert a.classes[:keep].tolist() == b.classes[:keep].tolist()


def test_tflite_export_decodes_to_pytorchs_detections(trained, data, tmp_path):
    from edgecnn.compression.export import export_tflite
    from edgecnn.runtime.agent import normalize, open_runtime

    task, model, head, _ = trained
    path = tmp_path / "det_small.tflite"
    export_tflite(model, data.input_shape, path)
    rt = open_runtime(str(path), threads=1)
    test = data.test.head(40)
    mean, std = np.array(data.mean, np.float32), np.array(data.std, np.float32)
    raw_tflite = np.concatenate([rt.run(normalize(x[None], mean, std)) for x in test.x.numpy()])  # batch 1
    check = task.parity(raw_tflite, raw_outputs(model, data, test), test.y, head)
    assert check["agreement"] >= 0.99 and abs(check["map_delta"]) < 0.005 and check["max_abs_diff"] < 1e-3, check


def test_distillation_pulls_det_tiny_toward_the_teacher(trained, data):
    task, teacher, head, _ = trained
    torch.manual_seed(1)
    student = build_model(ModelInfo("det_tiny", {}, 10, data.input_shape))
    kd = DistillConfig(temperature=2.0, alpha=1.0)
    x = data.normalize(data.val.x[:32])
    with torch.no_grad():
        t_out = teacher(x)
        start = float(task.distill_loss(student.eval()(x), t_out, data.val.y[:32], head, kd))
        itself = float(task.distill_loss(t_out, t_out, data.val.y[:32], head, kd))
    assert itself < start
    student = _train(student, data, task, epochs=2, teacher=teacher, kd=kd)
    with torch.no_grad():
        after = float(task.distill_loss(student(x), t_out, data.val.y[:32], head, kd))
    assert after < 0.8 * start, (start, after)


def test_pruning_keeps_the_prediction_convs_whole(trained, data):
    from edgecnn.compression.pruning import ChannelPruner

    task, model, head, _ = trained
    kept = task.kept_layers(model, head)
    assert kept == ["heads.0.pred", "heads.1.pred"]
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    example = torch.zeros(1, *data.input_shape)
    pruner = ChannelPruner(pruned, example, ratio=0.3, ignored=[modules[n] for n in kept])
    pruner.step()
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    assert after < 0.8 * before
    assert pruned(example).shape == model(example).shape
    assert all(dict(pruned.named_modules())[n].out_channels == 15 for n in kept)
