"""Distillation losses (Hinton, attention transfer, FitNets hints) and the distill command on real CIFAR-10 images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_MODELS, needs_shared, run_cli, shared_teacher_options

from edgecnn.compression.train import FeatureTap, HintRegressors, attention_loss, fit
from edgecnn.config.recipe import DistillConfig
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model, load_model_file
from edgecnn.tasks.classification import kd_loss


def test_kd_loss_is_the_hinton_mix():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = F.cross_entropy(s, y)
    assert kd_loss(s, t, y, 4.0, 0.0) == pytest.approx(float(ce))
    assert kd_loss(s, s, y, 4.0, 0.7) == pytest.approx(0.3 * float(ce), abs=1e-6)  # equal logits: no soft loss
    soft = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    assert kd_loss(s, t, y, 2.0, 1.0) == pytest.approx(float(soft))


def _resnet(depth: int, width: int = 16):
    return build_model(ModelInfo(f"cifar_resnet{depth}", {"width": width}, 10, (3, 32, 32))).eval()


def test_feature_taps_find_the_three_stages():
    student, teacher = _resnet(8, 8), _resnet(20)
    s_tap, t_tap = FeatureTap(student), FeatureTap(teacher)
    x = torch.randn(2, 3, 32, 32)
    student(x), teacher(x)
    assert sorted(s_tap.outputs) == sorted(t_tap.outputs) == [8, 16, 32]
    assert [s_tap.outputs[r].shape[1] for r in (32, 16, 8)] == [8, 16, 32]
    assert attention_loss(t_tap.outputs, t_tap.outputs) == 0
    assert attention_loss(s_tap.outputs, t_tap.outputs) > 0
    hints = HintRegressors(s_tap.outputs, t_tap.outputs)
    assert hints.convs["8"].weight.shape == (64, 32, 1, 1)
    loss = hints(s_tap.outputs, t_tap.outputs)
    loss.backward()
    assert hints.convs["8"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("feature_loss", ["attention", "hints"])
def test_fit_with_feature_loss(cifar_small, feature_loss):
    data = load_data(f"imagefolder:{cifar_small}")
    teacher, student = _resnet(14), _resnet(8)
    before, t_before = student.conv1.weight.clone(), teacher.conv1.weight.clone()
    kd = DistillConfig(epochs=1, batch_size=64, feature_loss=feature_loss)
    res = fit(student, data, kd, seed=0, augment=True, teacher=teacher, kd=kd)
    assert res.history[0]["images"] == 320 and torch.isfinite(torch.tensor(res.history[0]["loss"]))
    assert not torch.equal(before, student.conv1.weight)
    assert torch.equal(t_before, teacher.conv1.weight) and not teacher.training  # the teacher only teaches


def test_feature_loss_needs_a_python_teacher(cifar_small):
    needs_shared(SHARED_MODELS / "resnet56_cifar10.torchscript.pt")
    from edgecnn.models.files import load_torchscript

    data = load_data(f"imagefolder:{cifar_small}")
    teacher = load_torchscript(SHARED_MODELS / "resnet56_cifar10.torchscript.pt")
    kd = DistillConfig(epochs=1, feature_loss="attention")
    with pytest.raises(UserError, match="TorchScript teacher"):
        fit(_resnet(8), data, kd, seed=0, augment=True, teacher=teacher, kd=kd)


def test_distill_command_with_the_shared_teacher(tmp_path, cifar_small):
    needs_shared(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")
    out = tmp_path / "student.pt"
    proc = run_cli(
        "distill", *shared_teacher_options(), "--student", "cifar_resnet8",
        "--student-kwargs", "{width: 8}", "--feature-loss", "hints", "--data", f"imagefolder:{cifar_small}",
        "--mean", "0.4914,0.4822,0.4465", "--std", "0.247,0.2435,0.2616", "--epochs", "1", "--batch-size", "64",
        "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout
    model, info = load_model_file(out)
    assert info.spec == "cifar_resnet8" and info.kwargs == {"width": 8} and info.mean == [0.4914, 0.4822, 0.4465]
    assert model.conv1.out_channels == 8


@pytest.mark.slow
def test_cifar10_resnet56_recipe_end_to_end(tmp_path, cifar_small):
    """The shipped recipe, shortened: shared teacher -> ResNet-20 -> pruned -> int8 ONNX/TFLite -> bench."""
    import json

    from conftest import REPO

    needs_shared(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")
    out = tmp_path / "run"
    proc = run_cli("compress", str(REPO / "recipes" / "cifar10_resnet56.yaml"), "--out", str(out),
                   "--set", f"data.spec=imagefolder:{cifar_small}", "--set", "distill.epochs=1",
                   "--set", "prune.epochs=1", "--set", "bench.min_seconds=0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    models = {(m["name"], m["format"], m["precision"]): m for m in report["models"]}
    teacher = models[("teacher", "pytorch", "fp32")]
    assert teacher["accuracy"] > 0.75 and teacher["params"] == 855_770 and teacher["eval_samples"] == 300
    assert any(k[1] == "tflite" and k[2] == "int8" for k in models)
