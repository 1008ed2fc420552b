"""Bringing a trained CNN: the three ways to name a teacher, in a recipe and on the command line, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SHARED_MODELS, needs_shared, run_cli

from edgecnn.config.recipe import recipe_from_dict
from edgecnn.models.files import load_model_file
from edgecnn.pipeline.context import Context
from edgecnn.pipeline.runner import run_stages
from edgecnn.pipeline.stages.teacher import TeacherStage

PY_CLASS = f"{SHARED_MODELS / 'cifar_resnet.py'}:CifarResNet"
STATE_DICT = SHARED_MODELS / "resnet56_cifar10.state_dict.pt"
TORCHSCRIPT = SHARED_MODELS / "resnet56_cifar10.torchscript.pt"
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]



def _teacher_result(tmp_path: Path, data: Path, teacher: dict) -> dict:
    raw = {"name": "t", "data": {"spec": f"imagefolder:{data}", "mean": MEAN, "std": STD}, "teacher": teacher}
    ctx = Context(recipe_from_dict(raw, base=tmp_path), tmp_path / "run")
    run_stages([TeacherStage()], ctx, resume=False)
    return ctx.results["teacher"]


def test_class_file_with_state_dict(tmp_path, cifar_small):
    needs_shared(STATE_DICT)
    r = _teacher_result(tmp_path, cifar_small, {"model": PY_CLASS, "kwargs": {"depth": 56}, "weights": str(STATE_DICT)})
    assert r["trained"] is None  # loaded, not trained
    assert r["eval_samples"] == 300
    assert r["accuracy"] > 0.75  # measured on 300 real test images; the user claims 0.885 on all 10,000
    assert r["params"] == 855_770 and 120e6 < r["macs"] < 130e6
    model, info = load_model_file(tmp_path / "run" / "teacher" / r["model_file"])
    assert info.spec == PY_CLASS and info.kwargs == {"depth": 56}
    assert torch.equal(model.state_dict()["fc.weight"], torch.load(STATE_DICT, weights_only=True)["fc.weight"])


def test_torchscript_teacher_matches_the_class_file(tmp_path, cifar_small):
    needs_shared(TORCHSCRIPT, STATE_DICT)
    ts = _teacher_result(tmp_path / "a", cifar_small, {"model": str(TORCHSCRIPT)})
    py = _teacher_result(tmp_path / "b", cifar_small, {"model": PY_CLASS, "weights": str(STATE_DICT)})
    assert ts["torchscript"] == str(TORCHSCRIPT)
    assert ts["accuracy"] == pytest.approx(py["accuracy"], abs=0.01)
    assert ts["params"] == py["params"] and ts["macs"] > 0.95 * py["macs"]


def test_torchvision_name_with_state_dict(tmp_path, cifar_small):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    r = _teacher_result(tmp_path, cifar_small, {"model": "torchvision:resnet18", "weights": str(weights)})
    model, info = load_model_file(tmp_path / "run" / "teacher" / r["model_file"])
    assert info.spec == "torchvision:resnet18"
    assert torch.equal(model.state_dict()["conv1.weight"], torch.load(weights, weights_only=True)["conv1.weight"])
    assert 0 <= r["accuracy"] <= 1 and r["params"] == sum(p.numel() for p in model.parameters())


def test_edgecnn_model_file_as_teacher(tmp_path, cifar_small):
    out = tmp_path / "small.pt"
    proc = run_cli("train", "--model", "cifar_resnet8", "--kwargs", "{width: 8}", "--data",
                   f"imagefolder:{cifar_small}", "--epochs", "1", "--batch-size", "64", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _teacher_result(tmp_path, cifar_small, {"model": str(out)})
    assert r["model_file"] == "model.pt" and r["eval_samples"] == 300


def _one_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _distill(tmp_path: Path, data: Path, *teacher_args: str):
    return run_cli("distill", *teacher_args, "--student", "cifar_resnet8", "--data", f"imagefolder:{data}",
                   "--epochs", "1", "--out", str(tmp_path / "s.pt"))


def test_missing_class(tmp_path, cifar_small):
    needs_shared(STATE_DICT)
    proc = _distill(tmp_path, cifar_small, "--teacher", PY_CLASS.replace("CifarResNet", "ResNet56"),
                    "--teacher-weights", str(STATE_DICT))
    _one_error(proc, "cifar_resnet.py", "no class 'ResNet56'", "CifarResNet")


def test_state_dict_that_does_not_fit(tmp_path, cifar_small):
    needs_shared(STATE_DICT)
    proc = _distill(tmp_path, cifar_small, "--teacher", PY_CLASS, "--teacher-kwargs", "{depth: 20}",
                    "--teacher-weights", str(STATE_DICT))
    _one_error(proc, str(STATE_DICT), "does not fit")


def test_corrupt_files(tmp_path, cifar_small):
    needs_shared(TORCHSCRIPT)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(TORCHSCRIPT.read_bytes()[:100_000])  # a truncated download
    _one_error(_distill(tmp_path, cifar_small, "--teacher", str(broken)), str(broken))
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    _one_error(_distill(tmp_path, cifar_small, "--teacher", PY_CLASS, "--teacher-weights", str(garbage)), str(garbage))


def test_data_folder_without_images(tmp_path):
    needs_shared(TORCHSCRIPT)
    for split in ("train", "test"):
        (tmp_path / "empty" / split / "cat").mkdir(parents=True)
    _one_error(_distill(tmp_path, tmp_path / "empty", "--teacher", str(TORCHSCRIPT)), "no images")


def test_recipe_errors_exit_2(tmp_path, cifar_small):
    needs_shared(STATE_DICT)
    recipe = tmp_path / "r.yaml"
    teacher = f"{{model: '{PY_CLASS}x', weights: '{STATE_DICT}'}}"
    recipe.write_text(f"name: r\ndata: imagefolder:{cifar_small}\nteacher: {teacher}\n")
    proc = run_cli("compress", str(recipe), "--out", str(tmp_path / "out"))
    _one_error(proc, "no class 'CifarResNetx'")


def test_bench_takes_a_class_file_or_torchscript(cifar_small):
    needs_shared(STATE_DICT, TORCHSCRIPT)
    import json

    norm = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    common = ["--data", f"imagefolder:{cifar_small}", *norm, "--min-seconds", "0.1", "--json"]
    results = []
    for model in ([PY_CLASS, "--weights", str(STATE_DICT)], [str(TORCHSCRIPT)]):
        proc = run_cli("bench", *model, *common)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(json.loads(proc.stdout))
    py, ts = results
    assert py["eval_samples"] == ts["eval_samples"] == 300 and py["accuracy"] == pytest.approx(ts["accuracy"], abs=0.01)
    assert py["accuracy"] > 0.75 and py["size_bytes"] == STATE_DICT.stat().st_size and py["model"] == PY_CLASS


TINY_VGG = """
import torch.nn as nn


class TinyVGG(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
"""


def test_another_architecture_as_class_file_and_torchscript(tmp_path, cifar_small):
    """A VGG-style teacher edgecnn has never seen: class file + kwargs + state_dict, and its TorchScript, agree."""
    import importlib.util

    (tmp_path / "vgg.py").write_text(TINY_VGG)
    spec = importlib.util.spec_from_file_location("vgg_for_test", tmp_path / "vgg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.TinyVGG(width=12).eval()
    torch.save(net.state_dict(), tmp_path / "vgg.pt")
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(tmp_path / "vgg.ts"))
    py = _teacher_result(tmp_path / "a", cifar_small,
                         {"model": f"{tmp_path / 'vgg.py'}:TinyVGG", "kwargs": {"width": 12},
                          "weights": str(tmp_path / "vgg.pt")})
    ts = _teacher_result(tmp_path / "b", cifar_small, {"model": str(tmp_path / "vgg.ts")})
    assert py["params"] == ts["params"] == sum(p.numel() for p in net.parameters())
    assert py["accuracy"] == pytest.approx(ts["accuracy"], abs=1e-9) and py["eval_samples"] == 300
    model, _ = load_model_file(tmp_path / "a" / "run" / "teacher" / py["model_file"])
    assert torch.equal(model.state_dict()["classifier.weight"], net.state_dict()["classifier.weight"])
    # the same state_dict with the class's default width does not fit: one error line naming the file
    proc = _distill(tmp_path, cifar_small, "--teacher", f"{tmp_path / 'vgg.py'}:TinyVGG",
                    "--teacher-weights", str(tmp_path / "vgg.pt"))
    _one_error(proc, "vgg.pt", "does not fit", "(12, 3, 3, 3)")


def test_pickled_whole_model_is_refused_by_name(tmp_path, cifar_small):
    """weights_only=True: a checkpoint holding pickled Python objects is refused, naming what it pickles."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    proc = _distill(tmp_path, cifar_small, "--teacher", "torchvision:resnet18",
                    "--teacher-weights", str(tmp_path / "whole.pt"))
    _one_error(proc, "whole.pt", "pickles Python objects", "torch.nn.modules.linear.Linear", "state_dict")
