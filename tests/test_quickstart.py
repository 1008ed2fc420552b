"""The quickstart end to end: what issue 2's acceptance checks ask of report.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecnn.runtime.host import runtime_logits

CONTRACT_FIELDS = {"name", "format", "precision", "path", "size_bytes", "params", "macs", "accuracy", "eval_samples",
                   "latency_ms", "peak_memory_mb", "runtime", "device", "threads", "parity", "task", "score", "metrics",
                   "providers"}


def _model(report: dict, name: str, fmt: str, precision: str) -> dict:
    hits = [m for m in report["models"] if (m["name"], m["format"], m["precision"]) == (name, fmt, precision)]
    assert hits, f"no {name} {fmt} {precision} in report"
    return hits[0]


def test_report_lists_every_model_with_measurements(quickstart_report):
    r = quickstart_report
    assert {"recipe", "environment", "models"} <= set(r)
    assert r["environment"]["torch"] and r["environment"]["onnxruntime"] and r["environment"]["cpu"]
    wanted = [("teacher", "pytorch", "fp32"), ("student", "pytorch", "fp32"), ("student-pruned", "pytorch", "fp32"),
              ("student-pruned", "onnx", "fp32"), ("student-pruned", "onnx", "int8"),
              ("student-pruned", "tflite", "fp32"), ("student-pruned", "tflite", "int8"),
              ("student-pruned", "openvino", "fp32"), ("student-pruned", "openvino", "int8")]
    for key in wanted:
        m = _model(r, *key)
        assert CONTRACT_FIELDS <= set(m)
        assert 0.5 < m["accuracy"] <= 1.0
        assert m["eval_samples"] == 1000
        lat = m["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert m["size_bytes"] > 0 and m["peak_memory_mb"] > 0
        assert m["runtime"].split()[0] in ("torch", "onnxruntime", "litert", "tflite-runtime", "openvino")
        assert m["task"] == "classification" and m["score"] == m["metrics"]["top1"] == m["accuracy"]
        lo, hi = m["metrics"]["top1_ci95"]
        assert lo < m["accuracy"] < hi and 0.01 < hi - lo < 0.1  # 95% Wilson interval on 1,000 images
        assert len(m["cpus"]) == 1  # one thread, on the CPU leased for this timing
        assert m["providers"] == {"pytorch": ["cpu"], "onnx": ["CPUExecutionProvider"], "tflite": ["XNNPACK"],
                                  "openvino": ["CPU"]}[m["format"]]


def test_int8_tflite_is_small_and_accurate(quickstart_report):
    teacher = _model(quickstart_report, "teacher", "pytorch", "fp32")
    int8 = _model(quickstart_report, "student-pruned", "tflite", "int8")
    weights_bytes = teacher["params"] * 4
    assert int8["size_bytes"] <= weights_bytes / 8
    assert int8["accuracy"] >= teacher["accuracy"] - 0.02


def test_exports_agree_with_pytorch(quickstart_report):
    r = quickstart_report
    pruned = _model(r, "student-pruned", "pytorch", "fp32")
    for fmt in ("onnx", "tflite", "openvino"):
        fp32 = _model(r, "student-pruned", fmt, "fp32")
        assert fp32["parity"]["reference"] == "student-pruned/pytorch"
        assert fp32["parity"]["top1_agreement"] >= 0.99
        int8 = _model(r, "student-pruned", fmt, "int8")
        # the 1-point budget is decided on validation; on the 1,000 test images one more point is sampling noise
        assert int8["accuracy"] >= pruned["accuracy"] - 0.02


def test_run_directory_layout(quickstart_run):
    for f in ("report.json", "report.md", "pareto.png"):
        assert (quickstart_run / f).is_file()
    for stage in ("teacher", "distill", "prune", "export", "quantize", "bench"):
        manifest = json.loads((quickstart_run / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["outputs"]
    assert not list(quickstart_run.glob(".*.tmp-*"))
    md = (quickstart_run / "report.md").read_text()
    assert "| student-pruned | tflite | int8 |" in md and "accuracy [95% CI]" in md
    int8 = [m for m in json.loads((quickstart_run / "report.json").read_text())["models"]
            if (m["name"], m["format"], m["precision"]) == ("student-pruned", "tflite", "int8")][0]
    lo, hi = int8["metrics"]["top1_ci95"]
    assert f"{int8['accuracy']:.4f} [{lo:.3f}, {hi:.3f}]" in md
    assert "made on the val split (400 images), never on the test split" in md


@pytest.mark.parametrize("rel", ["export/model.onnx", "quantize/model.int8.tflite", "quantize/model.int8.xml"])
def test_reported_accuracy_reproduces_in_the_runtime(quickstart_run, quickstart_report, rel):
    """The number in the report is what the runtime gives when asked again."""
    from edgecnn.data.datasets import load_data

    data = load_data("mnist5k")
    acc, logits = runtime_logits(quickstart_run / rel, data, data.test)
    reported = [m for m in quickstart_report["models"] if m["path"] == rel][0]
    assert acc == pytest.approx(reported["accuracy"], abs=1e-9)
    assert np.isfinite(logits).all()


def test_report_states_what_pruning_bought(quickstart_run, quickstart_report):
    p = quickstart_report["pruning"]
    assert p["macs_after"] < p["macs_before"] and p["params_after"] < p["params_before"]
    assert p["latency_while_pruning"]["p50_ms_before"] > 0 and p["latency_while_pruning"]["p50_ms_after"] > 0
    bench = p["latency_bench"]
    assert bench["format"] == "pytorch" and bench["speedup"] == bench["unpruned_p50_ms"] / bench["pruned_p50_ms"]
    assert f"({p['macs_reduction']:.2f}x fewer)" in (quickstart_run / "report.md").read_text()


def test_report_says_where_the_teacher_ran(quickstart_report):
    """The quickstart's LeNet teacher (one tensor out, no feature loss) teaches from OpenVINO on the CPU."""
    stages = quickstart_report["stages"]
    runs = [stages["distill"]["fit"]["teacher_runtime"]] + [s["teacher_runtime"] for s in stages["prune"]["steps"]]
    for run in runs:
        assert run["runtime"] == "openvino" and "outputs within" in run["reason"], run
