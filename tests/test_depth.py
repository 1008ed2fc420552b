"""Depth pruning: a student cut from the teacher's own blocks (models/blocks.py, compression/depth.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import SHARED_MODELS, needs_shared, run_cli, shared_teacher_options

from edgecnn.compression.depth import choose_blocks, cut_from_teacher, removable
from edgecnn.config.recipe import DistillConfig, recipe_from_dict
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import load_data
from edgecnn.models.blocks import RemovedBlock, removable_blocks, remove_blocks, removed_blocks
from edgecnn.models.files import ModelInfo, build_model, load_model_file, save_model
from edgecnn.tasks.registry import get_task

RESNET20 = ModelInfo("cifar_resnet20", {"width": 8}, 10, (3, 32, 32))


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return build_model(RESNET20).eval()


def test_removable_blocks_are_the_shape_keeping_residual_blocks():
    names = removable_blocks(_resnet20(), torch.zeros(1, 3, 32, 32))
    # each stage's first block changes width or resolution, except the first stage's (stride 1, 8 -> 8)
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    plain = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))
    assert removable_blocks(plain, torch.zeros(1, 3, 8, 8)) == []  # single layers are not blocks


def test_a_cut_model_saves_and_reloads_without_its_blocks(tmp_path):
    model = _resnet20()
    remove_blocks(model, ["layer1.1", "layer3.2"])
    assert isinstance(model.layer1[1], RemovedBlock) and removed_blocks(model) == ["layer1.1", "layer3.2"]
    assert "layer1.1.conv1.weight" not in model.state_dict() and "layer1.2.conv1.weight" in model.state_dict()
    save_model(model, RESNET20, tmp_path / "cut.pt")
    again, info = load_model_file(tmp_path / "cut.pt")
    assert info.spec == "cifar_resnet20" and removed_blocks(again) == ["layer1.1", "layer3.2"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_choose_blocks_removes_the_block_that_does_nothing(cifar_small):
    """A residual block whose branch is zeroed is an identity: removing it costs nothing, so it goes first."""
    data = load_data(f"imagefolder:{cifar_small}")
    teacher = _resnet20()
    with torch.no_grad():
        teacher.layer2[1].bn2.weight.zero_()
        teacher.layer2[1].bn2.bias.zero_()
        teacher.fc.weight.mul_(100)  # confident logits: a random network's near-uniform ones barely move
    task = get_task("classification")
    kd = DistillConfig(alpha=1.0)  # the soft loss alone: the full teacher scores 0, every removal >= 0
    names = removable_blocks(teacher, torch.zeros(1, 3, 32, 32))
    choice = choose_blocks(teacher, data, data.val, task, task.head_spec(teacher, data), len(names) - 1, kd=kd)
    assert choice.removed == ["layer2.1"] and choice.costs["layer2.1"] == pytest.approx(0.0, abs=1e-6)
    assert all(c > 1e-4 for n, c in choice.costs.items() if n != "layer2.1")
    assert choice.samples == len(data.val) and choice.baseline_loss == pytest.approx(0.0, abs=1e-6)

    few = choose_blocks(teacher, data, data.val, task, task.head_spec(teacher, data), 2, kd=kd)
    ranked = sorted(few.costs, key=lambda n: -few.costs[n])
    assert few.kept == sorted(ranked[:2], key=names.index) and len(few.removed) == len(names) - 2
    student = cut_from_teacher(teacher, few)
    assert removed_blocks(student) == few.removed and removed_blocks(teacher) == []  # the teacher stays whole
    kept = few.kept[0]
    assert torch.equal(student.get_submodule(kept).conv1.weight, teacher.get_submodule(kept).conv1.weight)
    assert student.training


def test_max_params_passes_over_blocks_that_do_not_fit(cifar_small):
    """A cap lets cheap blocks in where the costliest would overflow it: the budget the int8 file's size sets."""
    data = load_data(f"imagefolder:{cifar_small}")
    teacher = _resnet20()
    task = get_task("classification")
    head, kd = task.head_spec(teacher, data), DistillConfig(alpha=1.0)
    free = choose_blocks(teacher, data, data.val, task, head, 3, kd=kd)
    sizes = {n: sum(p.numel() for p in teacher.get_submodule(n).parameters()) for n in free.costs}
    base = sum(p.numel() for p in teacher.parameters()) - sum(sizes.values())
    assert free.params == base + sum(sizes[n] for n in free.kept) and "max_params" not in free.to_dict()
    cap = base + 2 * min(sizes.values()) + 1  # room for two of the smallest blocks only
    capped = choose_blocks(teacher, data, data.val, task, head, 3, kd=kd, max_params=cap)
    assert len(capped.kept) == 2 and capped.params <= cap
    assert all(sizes[n] == min(sizes.values()) for n in capped.kept)
    ranked = sorted(free.costs, key=lambda n: -free.costs[n])
    last = max(ranked.index(n) for n in capped.kept)
    assert capped.passed_over == [n for n in ranked[:last] if n not in capped.kept]  # every costlier block overflowed
    assert all(sizes[n] > min(sizes.values()) for n in capped.passed_over)
    record = capped.to_dict()
    assert record["max_params"] == cap and record["passed_over_for_params"] == capped.passed_over
    assert record["params"] == sum(p.numel() for p in cut_from_teacher(teacher, capped).parameters())


def test_max_params_below_the_uncut_rest_is_an_error():
    model = _resnet20()
    names = removable_blocks(model, torch.zeros(1, 3, 32, 32))
    rest = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for n in names for p in model.get_submodule(n).parameters())
    assert removable(model, torch.zeros(1, 3, 32, 32), 1, max_params=rest) == names
    with pytest.raises(UserError, match=f"max_params: 1000 is less than the {rest} parameters .* use at least {rest}"):
        removable(model, torch.zeros(1, 3, 32, 32), 1, max_params=1000)


def test_keep_blocks_beyond_the_teacher_is_an_error():
    with pytest.raises(UserError, match="keep_blocks: 8 is more than the teacher's 7 removable blocks"):
        removable(_resnet20(), torch.zeros(1, 3, 32, 32), 8)
    lenet = build_model(ModelInfo("lenet", {}, 10, (1, 28, 28)))
    with pytest.raises(UserError, match="no removable blocks"):
        removable(lenet, torch.zeros(1, 1, 28, 28), 0)


def test_from_teacher_replaces_the_student_model():
    r = recipe_from_dict({"student": {"from_teacher": {"keep_blocks": 1}}}, base=SHARED_MODELS)
    assert r.student.model is None and r.student.from_teacher.keep_blocks == 1
    with pytest.raises(UserError, match="from_teacher builds the student from the teacher"):
        both = {"model": "cifar_resnet8", "from_teacher": {"keep_blocks": 1}}
        recipe_from_dict({"student": both}, base=SHARED_MODELS)


def test_compress_cuts_the_shared_teacher_into_a_student(tmp_path, cifar_small):
    """The chain's student, shortened: the shared ResNet-56 cut to its stem, head and 3 blocks, distilled,
    pruned and exported."""
    needs_shared(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")
    recipe = tmp_path / "cut.yaml"
    recipe.write_text(json.dumps({
        "name": "cut",
        "data": {"spec": f"imagefolder:{cifar_small}", "mean": [0.4914, 0.4822, 0.4465],
                 "std": [0.247, 0.2435, 0.2616]},
        "teacher": {"model": f"{SHARED_MODELS / 'cifar_resnet.py'}:CifarResNet", "kwargs": {"depth": 56},
                    "weights": str(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")},
        "student": {"from_teacher": {"keep_blocks": 1}},
        "distill": {"epochs": 1, "batch_size": 64, "lr": 0.05},
        "prune": {"ratio": 0.25, "epochs": 0}, "quantize": None, "export": {"formats": ["onnx"]},
        "bench": {"min_seconds": 0.05},
    }))
    proc = run_cli("compress", str(recipe), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = " ".join(proc.stderr.split())  # status lines wrap at the console's width
    assert "the student is the teacher without 24 of its 25 removable blocks (kept: layer" in said
    record = json.loads((tmp_path / "run" / "report.json").read_text())["stages"]["distill"]
    cut = record["from_teacher"]
    assert cut["removable"] == 25 and len(cut["kept"]) == 1 and len(cut["removed"]) == 24
    assert cut["samples"] == 40 and set(cut["cost_when_removed_alone"]) == set(cut["kept"] + cut["removed"])
    student, info = load_model_file(tmp_path / "run" / "distill" / "model.pt")
    assert info.spec.endswith("cifar_resnet.py:CifarResNet") and removed_blocks(student) == cut["removed"]
    convs = sum(isinstance(m, nn.Conv2d) for m in student.modules())
    assert convs == 1 + 2 * 3 + 2  # stem, three blocks, two projection shortcuts: a ResNet-8
    pruned, _ = load_model_file(tmp_path / "run" / "prune" / "model.pt")  # channels pruned, blocks still removed
    assert removed_blocks(pruned) == cut["removed"] and pruned.conv1.out_channels < student.conv1.out_channels
    import onnx

    exported = onnx.load(str(tmp_path / "run" / "export" / "model.onnx"))
    assert sum(n.op_type == "Conv" for n in exported.graph.node) == convs


def test_from_teacher_with_too_many_blocks_fails_before_the_run(tmp_path, cifar_small):
    needs_shared(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")
    recipe = tmp_path / "cut.yaml"
    recipe.write_text(json.dumps({
        "data": f"imagefolder:{cifar_small}",
        "teacher": {"model": f"{SHARED_MODELS / 'cifar_resnet.py'}:CifarResNet", "kwargs": {"depth": 56},
                    "weights": str(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")},
        "student": {"from_teacher": {"keep_blocks": 30}},
    }))
    proc = run_cli("compress", str(recipe), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: student.from_teacher.keep_blocks: 30 is more than the teacher's 25 removable blocks; use at most 25"
    ]


def test_keep_blocks_and_a_student_architecture_exclude_each_other(tmp_path):
    proc = run_cli("distill", "--teacher", "x.py:Net", "--teacher-weights", "w.pt", "--student", "cifar_resnet8",
                   "--keep-blocks", "2", "--out", str(tmp_path / "s.pt"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --keep-blocks cuts the student from the teacher; drop --student and --student-kwargs"
    ]


def test_max_params_without_keep_blocks_is_an_error(tmp_path):
    proc = run_cli("distill", "--teacher", "x.py:Net", "--teacher-weights", "w.pt", "--max-params", "1000",
                   "--out", str(tmp_path / "s.pt"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --max-params caps a student cut from the teacher; add --keep-blocks N"
    ]


def test_distill_command_cuts_the_student_from_the_teacher(tmp_path, cifar_small):
    needs_shared(SHARED_MODELS / "resnet56_cifar10.state_dict.pt")
    out = tmp_path / "student.pt"
    proc = run_cli(
        "distill", *shared_teacher_options(), "--keep-blocks", "2", "--data", f"imagefolder:{cifar_small}",
        "--epochs", "1", "--batch-size", "64", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout
    student, info = load_model_file(out)
    assert info.kwargs == {"depth": 56} and len(removed_blocks(student)) == 23
    assert sum(p.numel() for p in student.parameters()) < 860_000 / 3


def test_runs_without_from_teacher_keep_their_distill_key():
    """Adding the field must not make every earlier run redo its distillation on --resume."""
    from edgecnn.pipeline.stages.distill import DistillStage

    plain = DistillStage().config(recipe_from_dict({"student": {"model": "cifar_resnet8"}}, base=SHARED_MODELS))
    assert plain["student"] == {"model": "cifar_resnet8", "kwargs": {}, "weights": None}
    cut = DistillStage().config(recipe_from_dict({"student": {"from_teacher": {"keep_blocks": 2}}}, base=SHARED_MODELS))
    assert cut["student"]["from_teacher"] == {"keep_blocks": 2, "samples": 1000}
    capped = DistillStage().config(recipe_from_dict({"student": {"from_teacher": {"keep_blocks": 2, "max_params": 9}}},
                                                    base=SHARED_MODELS))
    assert capped["student"]["from_teacher"] == {"keep_blocks": 2, "samples": 1000, "max_params": 9}
