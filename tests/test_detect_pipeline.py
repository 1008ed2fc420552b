"""Detection through the pipeline's pieces: the recipe's task, the agent decoding on its own with the shared numpy
decoder (model and end-to-end latency), report and compare on the task's score, and malformed COCO / YOLO
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
from test_detect_data import scenes, write_coco, write_yolo  # noqa: F401 - `scenes` is a fixture

from edgecnn.analysis.compare import compare_runs
from edgecnn.analysis.report import write_report
from edgecnn.config.recipe import recipe_from_dict
from edgecnn.core.errors import UserError
from edgecnn.pipeline.context import Context
from edgecnn.pipeline.stages.teacher import TeacherStage
from edgecnn.runtime.host import AGENT_PATH, agent_scores, run_agent_local, runtime_outputs, write_eval_npz
from edgecnn.tasks.base import raw_outputs
from edgecnn.tasks.detection import decode as dd
from edgecnn.tasks.detection.data import load_detection_data


@pytest.fixture(scope="module")
def data():
    return load_detection_data("mnist-detect", 64, mnist_counts={"train": 64, "val": 16, "test": 24})


@pytest.fixture(scope="module")
def detector(data, tmp_path_factory):
    """det_tiny after a few steps on labels (confident enough to give boxes), exported to ONNX."""
    return briefly_trained("detection", "det_tiny", data, tmp_path_factory.mktemp("det"))


def test_recipe_task_defaults_to_classification_and_picks_the_detection_task(tmp_path):
    assert recipe_from_dict({}, tmp_path).task == "classification"
    with pytest.raises(UserError, match="task"):
        recipe_from_dict({"task": "pose"}, tmp_path)
    recipe = recipe_from_dict({"task": "detection", "data": {"spec": "mnist-detect", "image_size": [64, 48]}}, tmp_path)
    ctx = Context(recipe, tmp_path)
    assert ctx.task.name == "detection" and ctx.augment  # auto: the box-moving jitter
    with pytest.raises(UserError, match="letterboxes to a square"):
        _ = ctx.data
    stage = TeacherStage()  # a classification stage key is what it was before tasks: no `task` in it
    assert "task" not in stage.data_config(recipe_from_dict({}, tmp_path))
    assert stage.data_config(recipe)["task"] == "detection"


def test_agent_decodes_on_its_own_with_the_shared_decoder(data, detector, tmp_path):
    """The agent copied alone with decode.py (no edgecnn importable) decodes exactly as the host does."""
    task, model, head, path = detector
    npz = tmp_path / "eval.npz"
    write_eval_npz(data, data.test, npz, head)
    device = tmp_path / "device"
    device.mkdir()
    for f in (AGENT_PATH, task.decoder_file(), path, npz):
        shutil.copy(f, device / ("decode.py" if f == task.decoder_file() else f.name))
    proc = subprocess.run([sys.executable, "-I", "agent.py", "--model", "model.onnx", "--data", "eval.npz",
                           "--min-iters", "5", "--min-seconds", "0", "--warmup", "1", "--detections-out", "dets.npz",
                           "--detections-inline"], cwd=device, capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["task"] == "detection" and result["accuracy"] is None and result["eval_samples"] == len(data.test)
    assert result["e2e_latency_ms"]["p50"] >= result["latency_ms"]["min"] > 0  # decode + NMS come on top
    host = task.decode(runtime_outputs(path, data, data.test), head)  # the same file's outputs, decoded here
    with np.load(device / "dets.npz") as z:
        agent = task.agent_predictions(dict(z))
    assert len(agent) == len(host) and sum(len(d) for d in host) > 0
    for a, h in zip(agent, host, strict=True):
        assert len(a) == len(h) and np.array_equal(a.classes, h.classes)
        assert np.allclose(a.boxes, h.boxes, atol=1e-3) and np.allclose(a.scores, h.scores, atol=1e-4)
    inline = dd.from_arrays({k: np.asarray(v) for k, v in result["predictions"].items()})
    assert [len(d) for d in inline] == [len(d) for d in agent]


def test_local_agent_scores_detections_with_pycocotools(data, detector, tmp_path):
    task, model, head, path = detector
    npz, dets = tmp_path / "eval.npz", tmp_path / "dets.npz"
    write_eval_npz(data, data.test, npz, head)
    m = run_agent_local(path, npz, min_iters=5, min_seconds=0, warmup=1, decoder=task.decoder_file(),
                        predictions_out=dets)
    scores = agent_scores(task, dets, data.test, head)
    expect = task.evaluate(runtime_outputs(path, data, data.test), data.test.y, head)
    assert scores["task"] == "detection" and scores["score"] == scores["metrics"]["mAP"]
    assert scores["metrics"] == pytest.approx(expect, abs=1e-6) and m["peak_memory_mb"] > 0
    check = task.parity(runtime_outputs(path, data, data.test), raw_outputs(model, data, data.test), data.test.y, head)
    assert check["agreement"] >= 0.99 and abs(check["map_delta"]) < 1e-3


def _report(folder: Path, task: str, score: float, metrics: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    if metrics is None:
        metrics = {"top1": score} if task == "classification" else {"mAP": score, "mAP50": score + 0.1, "mAP75": score}
    model = {"name": "student", "format": "onnx", "precision": "fp32", "path": "export/model.onnx", "size_bytes": 9000,
             "params": 1, "macs": 1, "task": task, "score": score, "metrics": metrics, "eval_samples": 100,
             "latency_ms": {"p50": 1.0, "p90": 1.1}, "e2e_latency_ms": {"p50": 1.5}, "peak_memory_mb": 50.0,
             "runtime": "onnxruntime", "device": "local-cpu", "threads": 1}
    if task == "classification":
        model["accuracy"] = score
    report = {"schema": "edgecnn-report/1", "recipe": {"name": folder.name}, "data": {"spec": "x", "test": 100},
              "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "t", "onnxruntime": "o"},
              "stages": {}, "models": [model]}
    write_report(folder, report)
    return folder


def test_report_and_compare_use_the_tasks_score_and_refuse_mixed_tasks(tmp_path):
    a, b = _report(tmp_path / "a", "detection", 0.31), _report(tmp_path / "b", "detection", 0.42)
    md = (a / "report.md").read_text()
    assert "mAP (mAP50)" in md and "0.3100 (0.4100)" in md and "e2e p50 ms" in md and "pycocotools" in md
    result = compare_runs([a, b], None)
    assert [r["score"] for r in result["rows"]] == [0.31, 0.42] and all(r["accuracy"] is None for r in result["rows"])
    assert ["size" in r["front"] for r in result["rows"]] == [False, True]
    c = _report(tmp_path / "c", "classification", 0.9)
    with pytest.raises(UserError, match="different tasks") as e:
        compare_runs([a, c], None)
    assert "\n" not in str(e.value)


def _recipe(tmp_path: Path, spec: str) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad", "task": "detection", "data": {"spec": spec, "image_size": 48},
                                      "teacher": {"model": "det_tiny"}, "student": None, "distill": None}))
    return recipe


def test_malformed_coco_and_yolo_annotations_exit_2_with_one_error_line(tmp_path, scenes):  # noqa: F811
    coco = write_coco(tmp_path / "coco", scenes)
    ann = coco / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    doc["annotations"][1]["category_id"] = 99
    ann.write_text(json.dumps(doc))
    yolo = write_yolo(tmp_path / "yolo", scenes)
    (yolo / "labels" / "train" / "im004.txt").write_text("0 0.5 0.5 0.2 0.2\n3 1.4 0.5 0.2 0.2\n")
    for spec, names in ((f"coco:{coco}", ("instances_train.json", "category_id 99")),
                        (f"yolo:{yolo}", ("im004.txt", "line 2"))):
        folder = tmp_path / f"run-{spec[:4]}"
        folder.mkdir()
        proc = run_cli("compress", str(_recipe(folder, spec)), "--out", str(folder / "run"), timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
        assert all(n in lines[0] for n in names), lines[0]
        assert not (folder / "run" / "teacher").exists()


def test_the_prediction_convs_can_stay_float_in_int8_files(tmp_path, scenes):  # noqa: F811
    """Issue 14: the head's outputs may stay fp32 where int8 ruins them (`quantize.fallback` names the head convs).

    On a small COCO folder (10 train, 4 val, 4 test scenes): every file is scored with pycocotools on both
    splits, which on mnist-detect's 500 validation canvases took most of this test's time."""
    from edgecnn.pipeline.run_report import write_run_report
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.registry import default_stages

    head_convs = ["heads.0.pred", "heads.1.pred"]
    recipe = recipe_from_dict({
        "name": "det-float-head", "task": "detection",
        "data": {"spec": f"coco:{write_coco(tmp_path / 'coco', scenes)}", "image_size": 64, "calib_samples": 8},
        "teacher": {"model": "det_tiny"}, "student": None, "distill": None, "prune": None,
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "optimizer": "adamw", "weight_decay": 1e-4},
        "quantize": {"select": "fixed", "fallback": head_convs, "qat": {"enabled": False}, "on_fail": "warn"},
        "export": {"formats": ["onnx", "tflite"], "on_fail": "warn"},
        "bench": {"min_seconds": 0.05, "min_iters": 5, "warmup": 1},
    }, tmp_path)
    ctx = Context(recipe, tmp_path / "run")
    report = write_run_report(ctx, run_stages(default_stages(), ctx, resume=False))
    files = report["stages"]["quantize"]["files"]
    for fmt in ("onnx", "tflite"):
        assert files[fmt]["float_layers"] == head_convs, (fmt, files[fmt])
        assert 0.5 < files[fmt]["integer_mac_share"] < 1, (fmt, files[fmt])
        entry = next(m for m in report["models"] if m["format"] == fmt and m["precision"] == "int8")
        assert entry["task"] == "detection" and entry["float_layers"] == head_convs and entry["score"] is not None
