"""The frozen teacher of a distillation in OpenVINO: an exact stand-in, taken by auto only where it is one."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecnn.compression import teacher_runtime
from edgecnn.compression.teacher_runtime import OpenVINOTeacher, teacher_for_training
from edgecnn.compression.train import fit
from edgecnn.config.recipe import DistillConfig
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model

CPU = torch.device("cpu")


def _resnet(depth: int, width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelInfo(f"cifar_resnet{depth}", {"width": width}, 10, (3, 32, 32))).eval()


class _Wrapped(nn.Module):
    """A small ResNet whose output passes through `head(logits, input)`."""

    def __init__(self, head):
        super().__init__()
        self.body, self.head = _resnet(8, 8), head

    def forward(self, x):
        return self.head(self.body(x), x)


def _two_outputs() -> nn.Module:
    """A detector-like teacher: its output is a tuple, not one tensor."""
    return _Wrapped(lambda y, x: (y, y.softmax(1))).eval()


def _batch_of_one_special() -> nn.Module:
    """A teacher with a Python branch on the batch size: a traced graph keeps the branch it saw."""
    return _Wrapped(lambda y, x: y if x.shape[0] > 1 else y * 0).eval()


def test_openvino_teacher_gives_the_teachers_logits_at_any_batch_size():
    teacher = _resnet(14)
    ov_teacher = OpenVINOTeacher(teacher, torch.randn(2, 3, 32, 32), "fp32", threads=1)
    for n in (1, 7, 64):
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            want = teacher(x)
        got = ov_teacher(x.contiguous(memory_format=torch.channels_last))  # the training loop's layout
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_auto_takes_openvino_only_where_it_stands_in_exactly():
    probe = torch.randn(2, 3, 32, 32)
    kw = {"probe": probe, "device": CPU, "precision": "fp32"}
    run = teacher_for_training(_resnet(8), "auto", feature_loss=False, **kw)
    assert run.runtime == "openvino" and "f32 on CPU, outputs within" in run.reason
    run = teacher_for_training(_resnet(8), "auto", feature_loss=True, **kw)
    assert run.runtime == "torch" and "feature loss" in run.reason
    run = teacher_for_training(_two_outputs(), "auto", feature_loss=False, **kw)
    assert run.runtime == "torch" and "tuple" in run.reason
    run = teacher_for_training(_resnet(8), "auto", feature_loss=False, **{**kw, "precision": "fp16"})
    assert run.runtime == "torch" and "fp16" in run.reason
    assert teacher_for_training(_resnet(8), "torch", feature_loss=False, **kw).runtime == "torch"


def test_bf16_training_gets_a_bf16_teacher_within_bf16_tolerance():
    """On AMX / AVX-512 BF16 CPUs training runs in bf16; elsewhere OpenVINO runs the hint in f32 or emulates it."""
    run = teacher_for_training(_resnet(8), "auto", probe=torch.randn(2, 3, 32, 32), device=CPU, precision="bf16",
                               feature_loss=False)
    assert run.runtime == "openvino" and "bf16 on CPU, outputs within" in run.reason


def test_an_explicit_openvino_that_cannot_run_says_why():
    kw = {"probe": torch.randn(2, 3, 32, 32), "device": CPU, "precision": "fp32"}
    with pytest.raises(UserError, match=r"teacher_runtime: openvino cannot run this teacher: .*feature loss"):
        teacher_for_training(_resnet(8), "openvino", feature_loss=True, **kw)
    with pytest.raises(UserError, match=r"returns tuple, not one tensor; set it to auto or torch"):
        teacher_for_training(_two_outputs(), "openvino", feature_loss=False, **kw)


def test_a_converted_teacher_that_computes_otherwise_is_not_used():
    kw = {"probe": torch.randn(2, 3, 32, 32), "device": CPU, "precision": "fp32", "feature_loss": False}
    run = teacher_for_training(_batch_of_one_special(), "auto", **kw)
    assert run.runtime == "torch" and "output differs from PyTorch's" in run.reason
    with pytest.raises(UserError, match="output differs from PyTorch's"):
        teacher_for_training(_batch_of_one_special(), "openvino", **kw)


def test_a_failed_conversion_falls_back_to_torch_under_auto(monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("Cannot convert operation aten::weird\nmore lines")

    monkeypatch.setattr(teacher_runtime, "OpenVINOTeacher", refuse)
    kw = {"probe": torch.randn(2, 3, 32, 32), "device": CPU, "precision": "fp32", "feature_loss": False}
    run = teacher_for_training(_resnet(8), "auto", **kw)
    assert run.runtime == "torch" and run.reason.endswith("(Cannot convert operation aten::weird)")
    with pytest.raises(UserError, match="aten::weird"):
        teacher_for_training(_resnet(8), "openvino", **kw)


def test_distilling_with_the_openvino_teacher_trains_like_the_torch_one(cifar_small):
    """Same seed, same batches: the two teacher runtimes give the same losses to float noise."""
    data = load_data(f"imagefolder:{cifar_small}")
    results = {}
    for runtime in ("torch", "openvino"):
        teacher, student = _resnet(14, seed=1), _resnet(8, 8, seed=2)
        t_before = teacher.conv1.weight.clone()
        kd = DistillConfig(epochs=2, batch_size=64, precision="fp32", teacher_runtime=runtime)
        results[runtime] = fit(student, data, kd, seed=0, augment=True, teacher=teacher, kd=kd)
        assert torch.equal(t_before, teacher.conv1.weight) and not teacher.training  # the teacher only teaches
    assert results["torch"].teacher_runtime["runtime"] == "torch"
    assert results["openvino"].teacher_runtime["runtime"] == "openvino"
    losses = {r: [h["loss"] for h in res.history] for r, res in results.items()}
    assert losses["openvino"] == pytest.approx(losses["torch"], rel=1e-3)
