"""The keypoints quickstart end to end through the CLI (slow: a few minutes on 2 cores), and its deploy to rpi-emu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from test_rpi_emu import rpi_emu  # noqa: F401 - the fixture that builds the ARM64 userland (skips without qemu)

pytestmark = pytest.mark.slow

RECIPE = REPO / "recipes" / "keypoints_quickstart.yaml"
METRICS = {"oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20"}


@pytest.fixture(scope="module")
def keypoints_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keypoints") / "run"
    proc = run_cli("compress", str(RECIPE), "--out", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_model_is_scored_by_oks_ap_and_pck_and_timed_end_to_end(keypoints_run):
    report = json.loads((keypoints_run / "report.json").read_text())
    models = report["models"]
    names = {(m["name"], m["format"], m["precision"]) for m in models}
    assert {("teacher", "pytorch", "fp32"), ("student", "pytorch", "fp32"), ("student-pruned", "pytorch", "fp32"),
            ("student-pruned", "onnx", "fp32"), ("student-pruned", "onnx", "int8"),
            ("student-pruned", "tflite", "fp32"), ("student-pruned", "tflite", "int8")} <= names
    for m in models:
        assert m["task"] == "keypoints" and "accuracy" not in m
        assert set(m["metrics"]) == METRICS and m["score"] == m["metrics"]["oks_ap"]
        assert 0 <= m["metrics"]["oks_ap75"] <= m["metrics"]["oks_ap50"] <= 1
        assert m["metrics"]["pck10"] <= m["metrics"]["pck20"]
        assert m["e2e_latency_ms"]["p50"] > 0 and m["latency_ms"]["p50"] > 0 and m["peak_memory_mb"] > 0
    by = {(m["name"], m["format"], m["precision"]): m for m in models}
    teacher, pruned = by["teacher", "pytorch", "fp32"], by["student-pruned", "pytorch", "fp32"]
    assert teacher["metrics"]["pck20"] > 0.8 and teacher["score"] > 0.3, teacher["metrics"]  # it learnt the points
    assert pruned["macs"] < by["student", "pytorch", "fp32"]["macs"]
    for fmt in ("onnx", "tflite"):
        fp32, int8 = by["student-pruned", fmt, "fp32"], by["student-pruned", fmt, "int8"]
        assert fp32["parity"]["agreement"] >= 0.98 and abs(fp32["score"] - pruned["score"]) < 0.01
        assert int8["score"] >= pruned["score"] - 0.05, (fmt, int8["score"], pruned["score"])  # the recipe's budget
    assert report["stages"]["export"]["files"]["onnx"]["val_parity"]["agreement"] >= 0.98
    md = (keypoints_run / "report.md").read_text()
    assert "OKS AP (PCK@0.2)" in md and f"{teacher['score']:.4f} ({teacher['metrics']['pck20']:.4f})" in md
    assert "| oks_ap | oks_ap50 | oks_ap75 | pck10 | pck20 |" in md


def test_deploy_to_rpi_emu_matches_local_oks_ap(keypoints_run, rpi_emu):  # noqa: F811
    proc = run_cli("deploy", str(keypoints_run), "--device", "rpi-emu", "--json", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((keypoints_run / "report.json").read_text())
    local = {(m["name"], m["format"], m["precision"]): m for m in report["models"] if m["device"] == "local-cpu"}
    arm = [m for m in report["models"] if m["device"] == "rpi-emu" and m.get("score") is not None]
    assert arm and all(m["task"] == "keypoints" and set(m["metrics"]) == METRICS for m in arm)
    assert all(m["e2e_latency_ms"]["p50"] > 0 for m in arm)
    for m in arm:
        ref = local[m["name"], m["format"], m["precision"]]
        assert abs(m["score"] - ref["score"]) <= 0.01, (m["name"], m["format"], m["score"], ref["score"])
