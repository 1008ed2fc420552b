"""Keypoints through the pipeline's pieces: the recipe's task and sigmas, the agent decoding heatmaps on its own with
the shared numpy decoder (model and end-to-end latency), the host scoring its keypoints (OKS AP, PCK), a device's
inline predictions scored as a local run's, report and compare on the task's score, and malformed keypoint
annotations ending in one `error:` line through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import briefly_trained, run_cli
from test_detect_pipeline import _report
from test_keypoints_data import _mutate, _set_kp, scenes, write_coco_keypoints  # noqa: F401 - `scenes`: a fixture

from edgecnn.analysis.compare import compare_runs
from edgecnn.config.recipe import recipe_from_dict
from edgecnn.core.errors import UserError
from edgecnn.devices.deploy import Batch
from edgecnn.pipeline.context import Context
from edgecnn.pipeline.stages.distill import DistillStage
from edgecnn.pipeline.stages.prune import PruneStage
from edgecnn.pipeline.stages.teacher import TeacherStage
from edgecnn.runtime.host import AGENT_PATH, agent_scores, run_agent_local, runtime_outputs, write_eval_npz
from edgecnn.tasks.base import raw_outputs
from edgecnn.tasks.keypoints import decode as kpd
from edgecnn.tasks.keypoints.data import load_keypoints_data


@pytest.fixture(scope="module")
def data():
    return load_keypoints_data("mnist-keypoints", 48, mnist_counts={"train": 64, "val": 16, "test": 40})


@pytest.fixture(scope="module")
def pose(data, tmp_path_factory):
    """pose_mobile after a few steps on labels (peaks that move with the digits), exported to ONNX."""
    return briefly_trained("keypoints", "pose_mobile", data, tmp_path_factory.mktemp("pose"))


def test_recipe_picks_the_keypoints_task_its_sigmas_and_paths(tmp_path):
    recipe = recipe_from_dict({"task": "keypoints", "data": {"spec": "mnist-keypoints", "image_size": 48,
                                                             "sigmas": [0.1, 0.1, 0.2, 0.2]}}, tmp_path)
    ctx = Context(recipe, tmp_path)
    assert ctx.task.name == "keypoints" and ctx.augment  # auto: the keypoint-moving jitter
    assert TeacherStage().data_config(recipe)["sigmas"] == [0.1, 0.1, 0.2, 0.2]
    assert recipe_from_dict({"task": "keypoints", "data": "coco-keypoints:pose"}, tmp_path).data.spec == \
        f"coco-keypoints:{tmp_path / 'pose'}"
    assert recipe_from_dict({"task": "keypoints", "data": "mnist-keypoints"}, tmp_path).data.spec == "mnist-keypoints"
    for bad, match in (({"task": "keypoints", "data": {"sigmas": [0.1, -1]}}, "sigmas"),
                       ({"task": "keypoints", "data": {"sigmas": []}}, "sigmas"),
                       ({"data": {"sigmas": [0.1]}}, "only the keypoints task")):
        with pytest.raises(UserError, match=match):
            recipe_from_dict(bad, tmp_path)
    wrong = recipe_from_dict({"task": "keypoints", "data": {"spec": "mnist-keypoints", "sigmas": [0.1, 0.1]}},
                             tmp_path)
    with pytest.raises(UserError, match="data.sigmas: need 4 positive numbers"):
        _ = Context(wrong, tmp_path).data


def test_agent_decodes_heatmaps_on_its_own_with_the_shared_decoder(data, pose, tmp_path):
    """The agent copied alone with decode.py (no edgecnn importable) decodes exactly as the host does."""
    task, model, head, path = pose
    npz = tmp_path / "eval.npz"
    write_eval_npz(data, data.test, npz, head, task.name)
    device = tmp_path / "device"
    device.mkdir()
    for f in (AGENT_PATH, task.decoder_file(), path, npz):
        shutil.copy(f, device / ("decode.py" if f == task.decoder_file() else f.name))
    proc = subprocess.run([sys.executable, "-I", "agent.py", "--model", "model.onnx", "--data", "eval.npz",
                           "--min-iters", "5", "--min-seconds", "0", "--warmup", "1", "--predictions-out", "kp.npz",
                           "--predictions-inline"], cwd=device, capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["task"] == "keypoints" and result["accuracy"] is None and result["eval_samples"] == len(data.test)
    assert result["e2e_latency_ms"]["p50"] >= result["latency_ms"]["min"] > 0  # decoding comes on top
    host = task.decode(runtime_outputs(path, data, data.test), head)  # the same file's outputs, decoded here
    with np.load(device / "kp.npz") as z:
        agent = task.agent_predictions(dict(z))
    assert agent.shape == host.shape == (len(data.test), 4, 3)
    assert np.allclose(agent, host, atol=1e-2)  # onnxruntime's heatmaps vs PyTorch's, decoded one way
    inline = kpd.from_arrays({k: np.asarray(v) for k, v in result["predictions"].items()})
    assert np.allclose(inline, agent, atol=1e-3)


def test_host_scores_the_agents_keypoints_and_a_devices_inline_ones_alike(data, pose, tmp_path):
    task, model, head, path = pose
    npz, preds = tmp_path / "eval.npz", tmp_path / "kp.npz"
    write_eval_npz(data, data.test, npz, head, task.name)
    m = run_agent_local(path, npz, min_iters=5, min_seconds=0, warmup=1, decoder=task.decoder_file(),
                        predictions_out=preds)
    scores = agent_scores(task, preds, data.test, head)
    expect = task.evaluate(runtime_outputs(path, data, data.test), data.test.y, head)
    assert scores["task"] == "keypoints" and scores["score"] == scores["metrics"]["oks_ap"]
    assert set(scores["metrics"]) == {"oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20"}
    assert scores["metrics"] == pytest.approx(expect, abs=1e-6) and m["peak_memory_mb"] > 0
    check = task.parity(runtime_outputs(path, data, data.test), raw_outputs(model, data, data.test), data.test.y, head)
    assert check["agreement"] >= 0.99 and abs(check["oks_ap_delta"]) < 1e-3
    batch = Batch.read(npz)  # what deploy ships: the batch names its task
    assert batch.task.name == "keypoints" and batch.head == head
    with np.load(preds) as z:
        inline = {"predictions": {k: np.round(v, 3).tolist() for k, v in z.items()}}
    device = batch.scores(inline)
    assert device["task"] == "keypoints" and device["metrics"] == pytest.approx(scores["metrics"], abs=0.01)


def test_report_shows_the_keypoint_metrics_and_compare_refuses_mixed_tasks(tmp_path):
    metrics = {"oks_ap": 0.61, "oks_ap50": 0.9, "oks_ap75": 0.7, "pck10": 0.5, "pck20": 0.93}
    a = _report(tmp_path / "a", "keypoints", 0.61, metrics)
    b = _report(tmp_path / "b", "keypoints", 0.55, {**metrics, "oks_ap": 0.55})
    md = (a / "report.md").read_text()
    assert "OKS AP (PCK@0.2)" in md and "0.6100 (0.9300)" in md and "e2e p50 ms" in md and "pycocotools" in md
    assert "| model | format | precision | device | oks_ap | oks_ap50 | oks_ap75 | pck10 | pck20 |" in md
    result = compare_runs([a, b], None)
    assert [r["score"] for r in result["rows"]] == [0.61, 0.55]
    c = _report(tmp_path / "c", "detection", 0.4)
    with pytest.raises(UserError, match="different tasks") as e:
        compare_runs([a, c], None)
    assert "\n" not in str(e.value)


def test_malformed_keypoint_annotations_exit_2_with_one_error_line(tmp_path, scenes):  # noqa: F811
    root = write_coco_keypoints(tmp_path / "coco", scenes, splits=("train",))
    _mutate(root, "train", _set_kp(1, [10, 10, 2, 20, 20, 2, 500, 30, 2, 40, 40, 2]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad", "task": "keypoints",
                                      "data": {"spec": f"coco-keypoints:{root}", "image_size": 48},
                                      "teacher": {"model": "pose_mobile"}, "student": None, "distill": None}))
    proc = run_cli("compress", str(recipe), "--out", str(tmp_path / "run"), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "person_keypoints_train.json" in lines[0] and "keypoint 'left' at (500, 30)" in lines[0], lines[0]
    assert not (tmp_path / "run" / "teacher").exists()


def test_the_quickstart_recipe_is_valid(tmp_path):
    from conftest import REPO

    raw = yaml.safe_load((REPO / "recipes" / "keypoints_quickstart.yaml").read_text())
    recipe = recipe_from_dict(raw, Path(REPO / "recipes"))
    assert recipe.task == "keypoints" and recipe.student.model == "pose_mobile" and recipe.distill.alpha == 0.5


def test_a_keypoints_only_field_is_in_the_keys_of_keypoints_stages_only(tmp_path):
    """distill.peak_weight redoes keypoints distillation and pruning, never a classification stage (and the
    temperature, which heatmap distillation does not read, is out of keypoints stages' keys)."""
    def configs(task: str, weight: float) -> list:
        spec = "mnist-keypoints" if task == "keypoints" else "mnist5k"
        recipe = recipe_from_dict({"task": task, "data": spec, "student": {"model": "lenet"}, "prune": {},
                                   "distill": {"peak_weight": weight}}, tmp_path)
        return [stage.config(recipe) for stage in (DistillStage(), PruneStage())]

    assert configs("classification", 0.0) == configs("classification", 10.0)
    assert all("peak_weight" not in c["distill"] for c in configs("classification", 0.0))
    assert all("temperature" not in c["distill"] for c in configs("keypoints", 0.0))  # heatmaps have none
    assert all(a != b for a, b in zip(configs("keypoints", 0.0), configs("keypoints", 10.0), strict=True))
    no_distill = recipe_from_dict({"data": "mnist5k", "distill": None, "prune": {}}, tmp_path)
    assert PruneStage().config(no_distill)["distill"] is None
