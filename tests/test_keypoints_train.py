"""pose_mobile really learns mnist-keypoints (OKS-AP through the numpy decoder and pycocotools), learns from a
teacher's heatmaps alone, prunes with its heatmap conv kept whole, and both zoo pose models export to ONNX and
TFLite whose heatmaps decode to PyTorch's keypoints (the TFLite conversions, 20-30 s each, are marked slow)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.compression.train import fit
from edgecnn.config.recipe import DistillConfig, TrainConfig
from edgecnn.core.errors import UserError
from edgecnn.models.files import ModelInfo, build_model
from edgecnn.tasks.base import raw_outputs
from edgecnn.tasks.keypoints.data import load_keypoints_data
from edgecnn.tasks.registry import get_task

BATCH = 32

SIZE = 64


@pytest.fixture(scope="module")
def data():
    return load_keypoints_data("mnist-keypoints", SIZE, mnist_counts={"train": 480, "val": 40, "test": 200})


def _train(model, data, task, epochs, teacher=None, kd=None, seed=0):
    """edgecnn's training loop (compression.train.fit) on the task's batches and losses, in fp32 on any CPU."""
    cfg = (kd or TrainConfig()).model_copy(update={"epochs": epochs, "lr": 0.01, "batch_size": BATCH,
                                                   "optimizer": "adamw", "weight_decay": 1e-4, "precision": "fp32"})
    fit(model, data, cfg, seed=seed, augment=True, teacher=teacher, kd=kd, task=task)
    return model.eval()



def _build(spec, data, seed):
    torch.manual_seed(seed)
    return build_model(ModelInfo(spec, {}, data.num_classes, data.input_shape))


@pytest.fixture(scope="module")
def trained(data, one_thread):
    task = get_task("keypoints")
    model = _build("pose_mobile", data, 0)
    head = task.head_spec(model, data)
    untrained = task.evaluate(raw_outputs(model, data, data.test), data.test.y, head)
    model = _train(model, data, task, epochs=4)
    return task, model, head, untrained


def test_short_training_of_the_student_beats_an_untrained_model_clearly(trained, data):
    task, model, head, untrained = trained
    metrics = task.evaluate(raw_outputs(model, data, data.test), data.test.y, head)
    assert set(metrics) == {"oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20"}
    assert task.score(metrics) == metrics["oks_ap"]
    assert untrained["oks_ap"] < 0.01 and untrained["pck20"] < 0.2, untrained
    assert metrics["oks_ap"] > 0.3 and metrics["pck20"] > 0.8, metrics


def test_head_spec_carries_the_datas_keypoints_and_user_models_get_theirs_inferred(trained, data):
    task, model, head, _ = trained
    assert head == {"kind": "heatmap", "num_keypoints": 4, "stride": 4, "input_size": [SIZE, SIZE], "target_sigma": 1.5,
                    "keypoints": ["top", "bottom", "left", "right"], "sigmas": [0.05] * 4}
    assert task.kept_layers(model, head) == ["pred"]
    user = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, 2, 1))  # no head_spec()
    inferred = task.head_spec(user, data)
    assert inferred["stride"] == 4 and inferred["num_keypoints"] == 4 and inferred["keypoints"] == data.classes
    assert task.kept_layers(user, inferred) == ["2"]
    with pytest.raises(UserError, match=r"outputs \(1, 10\), not heatmaps"):
        task.head_spec(nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 10)), data)
    detector = build_model(ModelInfo("det_tiny", {}, 10, data.input_shape))
    with pytest.raises(UserError, match="TinyDetector: its head is 'center_size', not keypoint heatmaps"):
        task.head_spec(detector, data)
    with pytest.raises(UserError, match="built for 3 keypoints"):
        task.head_spec(nn.Sequential(nn.Conv2d(1, 3, 3, 4, 1)), data)


def test_distillation_on_the_teachers_heatmaps_alone_teaches_a_fresh_student(trained, data, one_thread):
    task, teacher, head, untrained = trained
    x, y = data.normalize(data.val.x[:16]), data.val.y[:16]
    with torch.no_grad():
        t_out = teacher(x)
    kd = DistillConfig(alpha=1.0)
    assert float(task.distill_loss(t_out, t_out, y, head, kd)) == 0.0
    mixed = DistillConfig(alpha=0.0)
    assert torch.equal(task.distill_loss(t_out, t_out, y, head, mixed), task.loss(t_out, y, head))
    with pytest.raises(UserError, match="teacher and student heatmaps of one shape"):
        task.distill_loss(t_out, t_out[..., :8, :8], y, head, kd)
    student = _train(_build("pose_mobile", data, 5), data, task, epochs=3, teacher=teacher, kd=kd)
    metrics = task.evaluate(raw_outputs(student, data, data.test), data.test.y, head)
    assert metrics["pck20"] > 0.6 and metrics["oks_ap"] > 0.1, metrics  # no label was used


def test_distillation_weighs_the_teachers_peaks():
    """An error where the teacher sees a keypoint costs 1 + peak_weight times one on the background; 0 is plain MSE."""
    from edgecnn.tasks.keypoints.losses import distillation_loss

    head = {"kind": "heatmap", "num_keypoints": 1, "stride": 4, "input_size": [16, 16]}
    teacher = torch.zeros(1, 1, 4, 4)
    teacher[0, 0, 1, 2] = 1.0
    targets = torch.zeros(1, 3, 3)  # no labelled keypoint: the label term is 0
    on_peak, off_peak = teacher.clone(), teacher.clone()
    on_peak[0, 0, 1, 2] -= 0.5
    off_peak[0, 0, 3, 0] += 0.5
    peak, background = (distillation_loss(s, teacher, targets, head, alpha=1.0, peak_weight=10.0)
                        for s in (on_peak, off_peak))
    assert peak == pytest.approx(11 * background)
    assert background == pytest.approx(0.25 / (16 + 10))  # a weighted mean: the weights sum to 15 + 11
    plain = distillation_loss(off_peak, teacher, targets, head, alpha=1.0, peak_weight=0.0)
    assert plain == pytest.approx(((off_peak - teacher) ** 2).mean())


def test_pruning_keeps_the_heatmap_conv_whole(trained, data):
    from edgecnn.compression.pruning import ChannelPruner

    task, model, head, _ = trained
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    example = torch.zeros(1, *data.input_shape)
    ChannelPruner(pruned, example, ratio=0.3, ignored=[modules[n] for n in task.kept_layers(model, head)]).step()
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    assert pruned.pred.out_channels == 4 and pruned(example).shape == model(example).shape == (1, 4, 16, 16)


def _run(path, x, mean, std, batch):
    from edgecnn.runtime.agent import normalize, open_runtime

    rt = open_runtime(str(path), threads=1)
    return np.concatenate([rt.run(normalize(x[i : i + batch], mean, std)) for i in range(0, len(x), batch)])


def _check_export(task, model, head, data, path, batch, n=60):
    test = data.test.head(n)
    raw = _run(path, test.x.numpy(), np.array(data.mean, np.float32), np.array(data.std, np.float32), batch)
    ref = raw_outputs(model, data, test)
    assert raw.shape == ref.shape == (n, 4, 16, 16)
    check = task.parity(raw, ref, test.y, head)
    assert check["agreement"] == 1.0 and check["mean_distance_px"] < 0.01, (path.suffix, check)
    assert abs(check["oks_ap_delta"]) < 1e-3 and check["max_abs_diff"] < 1e-3, (path.suffix, check)


def test_onnx_export_of_the_student_decodes_to_pytorchs_keypoints_and_int8_stays_close(trained, data, tmp_path):
    from edgecnn.compression.export import export_onnx
    from edgecnn.compression.quantize import quantize_onnx

    task, model, head, _ = trained
    export_onnx(model, data.input_shape, tmp_path / "student.onnx")
    _check_export(task, model, head, data, tmp_path / "student.onnx", 30)
    calib = data.normalize(data.calibration(64).x).numpy()
    quantize_onnx(tmp_path / "student.onnx", tmp_path / "student_int8.onnx", calib)
    mean, std = np.array(data.mean, np.float32), np.array(data.std, np.float32)
    raw = _run(tmp_path / "student_int8.onnx", data.test.x.numpy(), mean, std, 50)
    check = task.parity(raw, raw_outputs(model, data, data.test), data.test.y, head)
    assert check["agreement"] > 0.97 and check["mean_distance_px"] < 0.5 and abs(check["oks_ap_delta"]) < 0.03, check


@pytest.mark.slow
def test_tflite_export_of_the_student_decodes_to_pytorchs_keypoints(trained, data, tmp_path):
    from edgecnn.compression.export import export_tflite

    task, model, head, _ = trained
    export_tflite(model, data.input_shape, tmp_path / "student.tflite")
    _check_export(task, model, head, data, tmp_path / "student.tflite", 1, n=30)  # batch 1


@pytest.mark.slow
def test_onnx_and_tflite_exports_of_the_teacher_match_pytorch(data, tmp_path):
    from edgecnn.compression.export import export_onnx, export_tflite

    model = _build("pose_small", data, 1).eval()
    test = data.test.head(8)
    x, mean, std = test.x.numpy(), np.array(data.mean, np.float32), np.array(data.std, np.float32)
    ref = raw_outputs(model, data, test)
    export_onnx(model, data.input_shape, tmp_path / "teacher.onnx")
    export_tflite(model, data.input_shape, tmp_path / "teacher.tflite")
    for path, batch in ((tmp_path / "teacher.onnx", 8), (tmp_path / "teacher.tflite", 1)):
        raw = _run(path, x, mean, std, batch)
        assert raw.shape == ref.shape == (8, 4, 16, 16)
        np.testing.assert_allclose(raw, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
