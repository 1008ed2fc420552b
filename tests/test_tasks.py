"""The task interface: the registry, classification over mnist5k, and the detection task's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecnn.config.recipe import DistillConfig
from edgecnn.core.errors import UserError
from edgecnn.models.files import ModelInfo, build_model
from edgecnn.tasks.base import Task, raw_outputs
from edgecnn.tasks.registry import TASKS, get_task


def test_registry_names_every_task_and_refuses_others():
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.score_metric
    assert get_task().name == "classification"
    with pytest.raises(UserError, match="task 'pose' is unknown"):
        get_task("pose")


@pytest.fixture(scope="module")
def mnist():
    task = get_task("classification")
    return task, task.load_data("mnist5k", val_fraction=0.1)


def test_classification_task_over_mnist5k(mnist, one_thread):
    task, data = mnist
    torch.manual_seed(0)
    model = build_model(ModelInfo("lenet", {}, 10, data.input_shape))
    head = task.head_spec(model, data)
    assert head == {"kind": "logits", "num_classes": 10}
    x, y = next(task.batches(data, data.train, 64, shuffle=True, augment=True, generator=torch.Generator()))
    assert x.dtype == torch.uint8 and y.shape == (64,)
    out = model(data.normalize(x))
    assert torch.allclose(task.loss(out, y, head), F.cross_entropy(out, y))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in task.batches(data, data.train.head(1500), 50, shuffle=True, generator=torch.Generator().manual_seed(0)):
        opt.zero_grad()
        task.loss(model(data.normalize(x)), y, head).backward()
        opt.step()
    raw = raw_outputs(model, data, data.test)
    metrics = task.evaluate(raw, data.test.y, head)
    expect = float((raw.argmax(1) == data.test.y.numpy()).mean())
    assert metrics == {"top1": expect} and task.score(metrics) == expect > 0.7
    same = task.parity(raw, raw, data.test.y, head)
    assert same == {"agreement": 1.0, "top1_agreement": 1.0, "max_abs_diff": 0.0}
    noisy = raw + np.random.default_rng(0).normal(0, 2.0, raw.shape).astype(np.float32)
    check = task.parity(noisy, raw, data.test.y, head)
    assert check["agreement"] == float((noisy.argmax(1) == raw.argmax(1)).mean()) < 1.0
    assert task.kept_layers(model, head) == ["fc"]


def test_classification_distillation_is_hintons_loss_at_the_recipes_settings(mnist):
    """The task's distillation loss (what compression/train.py's fit calls) is Hinton's at distill.temperature
    and distill.alpha."""
    from edgecnn.tasks.classification import kd_loss

    task, _ = mnist
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(32, 10, generator=g), torch.randn(32, 10, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    kd = DistillConfig(temperature=3.0, alpha=0.6)
    head = {"kind": "logits", "num_classes": 10}
    assert torch.allclose(task.distill_loss(s, t, y, head, kd), kd_loss(s, t, y, 3.0, 0.6))


def test_classification_reads_images_at_their_own_size():
    with pytest.raises(UserError, match="data.image_size"):
        get_task("classification").load_data("mnist5k", image_size=64)


def test_detection_task_checks_the_model_against_the_data():
    task = get_task("detection")
    data = task.load_data("mnist-detect", image_size=64)
    with pytest.raises(UserError, match="no head_spec"):
        task.head_spec(build_model(ModelInfo("lenet", {}, 10, (1, 28, 28))), data)
    with pytest.raises(UserError, match="rebuild it for the data"):
        task.head_spec(build_model(ModelInfo("det_tiny", {}, 10, (1, 96, 96))), data)
    model = build_model(ModelInfo("det_tiny", {}, 10, data.input_shape))
    head = task.head_spec(model, data)
    assert head == {"kind": "center_size", "strides": [8, 16], "num_classes": 10, "input_size": [64, 64]}
    x, y = next(task.batches(data, data.train, 8, shuffle=True, augment=True, generator=torch.Generator()))
    assert x.shape == (8, 1, 64, 64) and y.shape[0] == 8 and y.shape[2] == 5
    with pytest.raises(UserError, match="one layout"):
        task.distill_loss(model(data.normalize(x)), torch.zeros(8, 10, 15), y, head, DistillConfig())
    with pytest.raises(UserError, match="not a head of"):
        task.loss(torch.zeros(8, 80), y, head)


def test_zoo_detectors_refuse_impossible_shapes():
    with pytest.raises(UserError, match="multiple of the largest stride"):
        build_model(ModelInfo("det_small", {}, 10, (1, 100, 100)))
    with pytest.raises(UserError, match="strides"):
        build_model(ModelInfo("det_small", {"strides": [8, 64]}, 10, (1, 128, 128)))
    three = build_model(ModelInfo("det_small", {"strides": [4, 8, 16]}, 3, (3, 64, 64)))
    assert three(torch.zeros(1, 3, 64, 64)).shape == (1, 16 * 16 + 8 * 8 + 4 * 4, 8)
